"""llama.cpp's tools, as ModelForge uses them: which are installed, which architectures they
convert, and running the converters and the quantiser in child processes.

Where the tools come from (the ``export`` extra, see README):
- the runtime and the quantiser: ``llama-cpp-python==0.3.36`` (built from its source
  distribution, which vendors llama.cpp; the binding exposes ``llama_model_quantize``);
- the converters ``convert_hf_to_gguf.py`` / ``convert_lora_to_gguf.py`` with their
  ``conversion/`` package and their ``gguf-py``: vendored in ``third_party/llama_cpp`` from the
  llama.cpp inside that same source distribution (commit in third_party/llama_cpp/README.md).
  Why vendored and not the PyPI ``gguf``: the installed package does not ship the converters,
  and PyPI's newest ``gguf`` (0.19.0) is older than the ``gguf-py`` these converters are written
  against (it lacks constants they use). Converter, gguf writer and runtime from one llama.cpp
  snapshot cannot disagree about the file format; bumping llama-cpp-python means re-vendoring
  (third_party/llama_cpp/README.md says how).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from core.errors import ModelForgeError, NotAvailableError
from core.paths import REPO_ROOT

LLAMA_CPP_PYTHON_VERSION = "0.3.36"
EXTRA_HINT = "install the export extra: pip install -e '.[export]' (builds llama.cpp, ~6 min on 2 cores)"

# llama.cpp's file types for the quantiser (llama.h: LLAMA_FTYPE_*).
QUANT_FTYPES = {"q8_0": 7, "q4_k_m": 15}


def vendored_dir() -> Path:
    override = os.environ.get("MODELFORGE_LLAMA_CPP_DIR")
    return Path(override) if override else REPO_ROOT / "third_party" / "llama_cpp"


def missing_requirements(gguf: bool = True) -> list[str]:
    """What the export extra lacks here (empty: everything is installed)."""
    import importlib.util

    missing = []
    if not (vendored_dir() / "convert_hf_to_gguf.py").is_file():
        missing.append(f"llama.cpp's converter (expected in {vendored_dir()})")
    if gguf:
        if importlib.util.find_spec("llama_cpp") is None:
            missing.append(f"llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION}")
        if importlib.util.find_spec("sentencepiece") is None:
            missing.append("sentencepiece (the converter imports it for Llama-family models)")
    return missing


def require(gguf: bool = True) -> None:
    """Raises:
        NotAvailableError: the export extra is not installed (says what is missing and how to get it).
    """
    missing = missing_requirements(gguf)
    if missing:
        raise NotAvailableError("GGUF export needs the export extra; missing: " + ", ".join(missing), EXTRA_HINT)


def supported_architectures() -> set[str]:
    """Text-model architectures (config.json ``architectures``) llama.cpp's converter knows."""
    text = (vendored_dir() / "conversion" / "__init__.py").read_text(encoding="utf-8")
    block = text.split("TEXT_MODEL_MAP", 1)[1].split("}", 1)[0]
    return set(re.findall(r'"(\w+)"\s*:', block))


def _child(args: list[str], timeout: float | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env["HF_HUB_OFFLINE"] = env.get("HF_HUB_OFFLINE", "1")  # everything is local by now
    return subprocess.run([sys.executable, "-m", "core.export._llamacpp_main", *args], env=env,
                          capture_output=True, text=True, timeout=timeout, cwd=str(REPO_ROOT))


def _why(proc: subprocess.CompletedProcess) -> str:
    """The converter's own reason, from its log: the last error-ish line."""
    lines = [ln.strip() for ln in (proc.stderr or "").splitlines() if ln.strip()]
    for ln in reversed(lines):
        if any(k in ln for k in ("Error", "error", "not supported", "not recognized", "NotImplemented")):
            return ln[-400:]
    return (lines[-1] if lines else f"exit code {proc.returncode}")[-400:]


def check_convertible(model_dir: Path, scratch: Path) -> None:
    """Pre-flight: llama.cpp's converter accepts this architecture and tokenizer (vocab only: seconds).

    Raises:
        ModelForgeError: it does not, with the converter's reason.
    """
    out = scratch / "vocab-check.gguf"
    proc = _child(["check", str(model_dir), str(out)])
    out.unlink(missing_ok=True)
    if proc.returncode != 0:
        why = _why(proc)
        hint = ("llama.cpp's converter does not know this tokenizer's pre-tokenizer; a model from its list "
                "(e.g. Llama 3, Qwen 2.5, SmolLM, GPT-2) or a GPT-2-style byte-level BPE converts"
                if "pre-tokenizer" in why else "see llama.cpp's list of supported models")
        raise ModelForgeError(f"this model cannot be converted to GGUF: {why}", hint)


def convert_hf(model_dir: Path, out_file: Path, outtype: str = "f16") -> None:
    """Raises: ModelForgeError with the converter's reason."""
    proc = _child(["hf", str(model_dir), "--outfile", str(out_file), "--outtype", outtype])
    if proc.returncode != 0 or not out_file.is_file():
        raise ModelForgeError(f"llama.cpp's converter failed: {_why(proc)}", "see the message above")


def convert_lora(adapter_dir: Path, base_dir: Path, out_file: Path, outtype: str = "f16") -> None:
    """Raises: ModelForgeError with the converter's reason."""
    proc = _child(["lora", str(adapter_dir), "--base", str(base_dir), "--outfile", str(out_file),
                   "--outtype", outtype])
    if proc.returncode != 0 or not out_file.is_file():
        raise ModelForgeError(f"llama.cpp's LoRA converter failed: {_why(proc)}", "see the message above")


def quantize(src: Path, dst: Path, quantization: str, threads: int | None = None) -> str:
    """Quantise a GGUF with llama.cpp's quantiser; returns its log's fallback notes (if any).

    Raises: ModelForgeError when the quantiser fails.
    """
    proc = _child(["quantize", str(src), str(dst), str(QUANT_FTYPES[quantization]),
                   str(threads or max(1, min(4, os.cpu_count() or 1)))])
    if proc.returncode != 0 or not dst.is_file():
        raise ModelForgeError(f"llama.cpp's quantiser failed: {_why(proc)}", "see the message above")
    notes = sorted({m.group(0) for m in re.finditer(r"using fallback quantization \w+", proc.stderr or "")})
    return "; ".join(notes)
