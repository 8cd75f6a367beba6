"""Child-process entry that runs llama.cpp's own converters (vendored in ``third_party/llama_cpp``).

    python -m core.export._llamacpp_main hf|lora|check|quantize ARGS...

Why a child process: the converters put their own folders on ``sys.path``, configure logging,
call ``sys.exit`` on errors and hold every tensor they touch; in a child none of that reaches the
app, a crash is an exit code, and the memory goes back to the system when it ends.

One ModelForge addition, and only one: llama.cpp identifies a BPE tokenizer's pre-tokenizer by
hashing the token ids of a fixed text, so a tokenizer trained from scratch (the bundled demo,
many small research models) is never in its table and is refused with "BPE pre-tokenizer was not
recognized". When, and only when, llama.cpp's own check refuses it AND the tokenizer.json says
its whole pre-tokenization is GPT-2's (no normalizer, a single ``ByteLevel`` pre-tokenizer with
GPT-2's regex and no prefix space, a byte-level BPE without byte fallback), we tell the converter
the name llama.cpp uses for exactly that regex: ``gpt-2``. Everything else (the hashes, the vocab,
the tensors, the quantisation) is llama.cpp's code, unchanged. The export's verification then
checks that llama.cpp tokenizes the model's prompts to the same ids as transformers does.

``check``: the pre-flight. Loads the model class for the architecture and writes the vocabulary
only (``--vocab-only``) to the given file: an unsupported architecture or tokenizer fails here in
seconds, before any merge, conversion or quantisation.
"""

from __future__ import annotations

import json
import logging
import os
import runpy
import sys
from pathlib import Path

GPT2_PRE = "gpt-2"  # llama.cpp's name for GPT-2's pre-tokenizer regex (llama-vocab.cpp)


def vendored_dir() -> Path:
    override = os.environ.get("MODELFORGE_LLAMA_CPP_DIR")
    if override:
        return Path(override)
    return Path(__file__).resolve().parents[2] / "third_party" / "llama_cpp"


def is_gpt2_byte_level(model_dir: Path) -> bool:
    """True when tokenizer.json's pre-tokenization is exactly GPT-2's byte-level split."""
    path = Path(model_dir) / "tokenizer.json"
    if not path.is_file():
        return False
    spec = json.loads(path.read_text(encoding="utf-8"))
    model, pre = spec.get("model") or {}, spec.get("pre_tokenizer") or {}
    return (spec.get("normalizer") is None
            and model.get("type") == "BPE" and not model.get("byte_fallback", False)
            and pre.get("type") == "ByteLevel" and pre.get("add_prefix_space") is False
            and pre.get("use_regex", True) is True
            and (spec.get("decoder") or {}).get("type") == "ByteLevel")


def _install_gpt2_rule() -> None:
    from conversion import base  # the vendored package (sys.path set by main)

    original = base.TextModel.get_vocab_base_pre

    def get_vocab_base_pre(self, tokenizer):
        try:
            return original(self, tokenizer)
        except NotImplementedError:
            if is_gpt2_byte_level(self.dir_model):
                logging.getLogger("modelforge").info(
                    "pre-tokenizer not in llama.cpp's table, but tokenizer.json is GPT-2's byte-level "
                    "split: converting with pre-tokenizer '%s'", GPT2_PRE)
                return GPT2_PRE
            raise

    base.TextModel.get_vocab_base_pre = get_vocab_base_pre


def quantize(src: str, dst: str, ftype: int, threads: int) -> int:
    """llama.cpp's quantiser through the binding of llama-cpp-python (its log goes to stderr)."""
    import ctypes

    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = threads
    return int(llama_cpp.llama_model_quantize(src.encode(), dst.encode(), ctypes.byref(params)))


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("hf", "lora", "check", "quantize"):
        print("usage: python -m core.export._llamacpp_main hf|lora|check|quantize ARGS...", file=sys.stderr)
        return 2
    tool, rest = argv[0], argv[1:]
    if tool == "quantize":  # quantize SRC DST FTYPE THREADS
        return quantize(rest[0], rest[1], int(rest[2]), int(rest[3]))
    root = vendored_dir()
    sys.path.insert(0, str(root))
    sys.path.insert(1, str(root / "gguf-py"))
    _install_gpt2_rule()
    if tool == "check":  # check MODEL_DIR OUT_FILE
        rest = [rest[0], "--vocab-only", "--outfile", rest[1]]
    script = root / ("convert_lora_to_gguf.py" if tool == "lora" else "convert_hf_to_gguf.py")
    sys.argv = [str(script), *rest]
    try:
        runpy.run_path(str(script), run_name="__main__")
    except SystemExit as exc:
        return int(exc.code or 0) if not isinstance(exc.code, str) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
