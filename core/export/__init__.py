"""Export a trained model to run where people run models: GGUF (llama.cpp, Ollama, LM Studio),
a merged transformers folder, or a LoRA GGUF over its base, each checked before it is handed over.

    export_model(store, "identity-demo", fmt="gguf", quantization="q4_k_m")

Steps, top to bottom (each export, whatever the format):
1. refuse what cannot work, before any work: unknown model, a task or architecture llama.cpp does
   not convert, a missing export extra, too little disk; then llama.cpp's converter itself is asked
   (vocabulary only, seconds) whether it accepts the architecture and the tokenizer;
2. merge the LoRA adapter into its base (peft), in float32;
3. convert with llama.cpp's ``convert_hf_to_gguf`` (``convert_lora_to_gguf`` for lora-gguf) and
   quantise with llama.cpp's quantiser (:mod:`core.export.llamacpp`);
4. write the Ollama Modelfile (:mod:`core.export.modelfile`);
5. verify: llama.cpp answers the model's prompts greedily, compared with transformers
   (:mod:`core.export.verify`); a disagreement is a warning in the result, never hidden.

Everything is written into a hidden staging folder beside the destination and renamed into place
at the end: a refused or failed export (unsupported model, missing extra, full disk, Ctrl-C)
leaves nothing half-written. The result folder holds ``export.json`` (what was made, how, and the
verification) next to the files.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from core.errors import ConfigError, ModelForgeError, NotAvailableError

FORMATS = ("gguf", "merged", "lora-gguf")
QUANTIZATIONS = ("f16", "q8_0", "q4_k_m")
MAX_VALIDATION_ROWS = 3  # validation rows verified per export, after the Playground's example prompts
# Why the chat template's {% generation %} markers are removed from exported tokenizers: they only
# tell trl which tokens to train on; llama.cpp's and Ollama's Jinja engines do not know the tag and
# refuse the whole template. The rendered text is the same without them.
_GENERATION_TAGS = re.compile(r"\{%-?\s*(end)?generation\s*-?%\}")

Progress = Callable[[float, str], None]


@dataclass
class ExportResult:
    path: str                 # the GGUF file (gguf), the adapter GGUF (lora-gguf) or the folder (merged)
    format: str
    quantization: str | None
    bytes: int                # every file the export made, together
    modelfile: str | None
    verification: dict
    folder: str
    files: list[str] = field(default_factory=list)
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)
    base_gguf: str | None = None  # lora-gguf: the base model's GGUF the adapter applies to

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class _Source:
    record: Any
    model_dir: Path
    base_path: str
    run_config: dict
    is_adapter: bool


def exports_root() -> Path:
    from core.paths import home

    return home() / "exports"


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "model"


def _free_bytes(path: Path) -> int:
    while not path.exists():
        path = path.parent
    return shutil.disk_usage(path).free


def _weights_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).glob("*") if p.suffix in (".safetensors", ".bin"))


def resolve_source(store, model_key: str) -> _Source:
    """The model record and what the export needs from it.

    Raises:
        NotFoundError: no such model. ModelForgeError: not a causal language model, files missing.
    """
    from core.inference import read_card
    from core.models import resolve_model_path

    rec = store.get_model(model_key)
    model_dir = Path(rec.path)
    if not model_dir.is_dir():
        raise ModelForgeError(f"the files of model {rec.name} are missing ({model_dir})",
                              "the folder was moved or deleted; train it again")
    card = read_card(model_dir)
    task = card.get("task") or rec.task
    is_adapter = (model_dir / "adapter_config.json").is_file()
    if task != "text-generation":
        raise ModelForgeError(f"{rec.name} is a {task} model: GGUF and Ollama run causal language models "
                              "(text generation) only", "export a text-generation model")
    if is_adapter:
        adapter = json.loads((model_dir / "adapter_config.json").read_text(encoding="utf-8"))
        if (adapter.get("task_type") or "CAUSAL_LM") != "CAUSAL_LM":
            raise ModelForgeError(f"{rec.name} is a {adapter.get('task_type')} adapter, not a causal language model",
                                  "export a text-generation model")
        base = card.get("base_model") or rec.base_model or adapter.get("base_model_name_or_path", "")
        base_path = _local_folder(resolve_model_path(base, task=task))
    else:
        base_path = str(model_dir)
    run_config: dict = {}
    try:
        run_config = dict(store.get_run(rec.run_id).config or {})
    except ModelForgeError:
        run_config = dict(card.get("config") or {})
    return _Source(rec, model_dir, base_path, run_config, is_adapter)


def _local_folder(name_or_path: str) -> str:
    """A folder on disk for a base model: itself, or a hub id's cached snapshot (the converter
    reads files, not hub ids)."""
    if Path(name_or_path).is_dir():
        return name_or_path
    from huggingface_hub import snapshot_download

    return snapshot_download(name_or_path, local_files_only=True)


def _architecture(base_path: str) -> str:
    cfg = Path(base_path) / "config.json"
    if not cfg.is_file():
        from transformers import AutoConfig

        archs = getattr(AutoConfig.from_pretrained(base_path), "architectures", None) or []
    else:
        archs = json.loads(cfg.read_text(encoding="utf-8")).get("architectures") or []
    return archs[0] if archs else ""


def preflight(src: _Source, fmt: str, quantization: str, out_parent: Path) -> None:
    """Everything that can be refused without doing any work.

    Raises:
        ConfigError: bad format or quantisation. NotAvailableError: the export extra is missing.
        ModelForgeError: unsupported architecture, no adapter for lora-gguf, too little disk.
    """
    from core.export import llamacpp

    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format '{fmt}'", f"choose one of {', '.join(FORMATS)}")
    if quantization not in QUANTIZATIONS:
        raise ConfigError(f"unknown quantization '{quantization}'", f"choose one of {', '.join(QUANTIZATIONS)}")
    if fmt == "lora-gguf" and not src.is_adapter:
        raise ModelForgeError(f"{src.record.name} is not a LoRA adapter, so there is no LoRA to export",
                              "use --format gguf")
    llamacpp.require(gguf=fmt != "merged")
    arch = _architecture(src.base_path)
    if fmt != "merged" and arch not in llamacpp.supported_architectures():
        raise ModelForgeError(f"llama.cpp cannot convert the architecture '{arch or 'unknown'}' of {src.record.name}",
                              "GGUF export works for the architectures llama.cpp supports (Llama, Qwen2/3, "
                              "Mistral, Gemma, Phi-3, GPT-2, ...); --format merged works for any")
    base_bytes = _weights_bytes(Path(src.base_path)) if Path(src.base_path).is_dir() else 0
    dtype = "float32"
    cfg = Path(src.base_path) / "config.json"
    if cfg.is_file():
        c = json.loads(cfg.read_text(encoding="utf-8"))
        dtype = str(c.get("dtype") or c.get("torch_dtype") or "float32")
    params = base_bytes / (4 if "32" in dtype else 2)
    need = {"gguf": params * 8, "merged": params * 4, "lora-gguf": params * 4}[fmt] + 64 * 2**20
    free = _free_bytes(out_parent)
    if free < need:
        raise ModelForgeError(f"not enough disk space for this export: about {need / 2**20:.0f} MiB needed, "
                              f"{free / 2**20:.0f} MiB free under {out_parent}",
                              "free some space or choose another --output folder")


def _stage_tokenizer(model_dir: Path, dest: Path, strip: bool = True) -> Any:
    """The trained tokenizer, saved for the converter, without trl's {% generation %} markers
    (``strip``; a merged transformers folder keeps them: it may be trained further)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    if strip and getattr(tok, "chat_template", None):
        tok.chat_template = _GENERATION_TAGS.sub("", tok.chat_template)
    tok.save_pretrained(str(dest))
    return tok


def _merge(src: _Source, dest: Path) -> None:
    """Adapter merged into its base (peft), saved as safetensors in float32."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(src.base_path, dtype=torch.float32, use_safetensors=True)
    if src.is_adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(src.model_dir)).merge_and_unload()
    model.save_pretrained(str(dest), safe_serialization=True)
    del model


def _link_base(base_path: str, dest: Path) -> None:
    """The base model's files in ``dest`` (links where possible: no copy of the weights)."""
    for p in Path(base_path).iterdir():
        if p.is_file() and (p.suffix in (".safetensors", ".bin") or p.name in (
                "config.json", "generation_config.json", "model.safetensors.index.json")):
            target = dest / p.name
            try:
                target.symlink_to(p.resolve())
            except OSError:
                shutil.copy2(p, target)


def _validation_rows(run_config: dict) -> tuple[list[dict], str]:
    """Up to a few rows of the run's validation split (the same split training used)."""
    if not run_config.get("dataset") or float(run_config.get("validation_split", -1)) == 0:
        return [], "the run held out no validation data"
    try:
        from core.checks import validate_file
        from core.data import split_train_eval

        report = validate_file(run_config["dataset"], task=run_config.get("task", "text-generation"),
                               strategy=run_config.get("strategy", "sft"),
                               dataset_format=run_config.get("dataset_format", "auto"),
                               column_map=run_config.get("column_map") or {},
                               template_vars=run_config.get("template_vars") or {},
                               system_prompt=run_config.get("system_prompt", ""))
        examples = report.examples
        if run_config.get("max_samples"):
            examples = examples[: int(run_config["max_samples"])]
        _, evaluation = split_train_eval(examples, float(run_config.get("validation_split", -1)),
                                         int(run_config.get("seed", 42)))
        return [r for r in evaluation if isinstance(r, dict) and r.get("messages")], ""
    except Exception as exc:  # noqa: BLE001 - the example prompts are still verified
        return [], f"validation rows unavailable: {str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__}"


def _dir_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def _destination(src: _Source, fmt: str, quantization: str, output_dir: str | Path | None) -> Path:
    root = Path(output_dir).expanduser() if output_dir else exports_root() / src.record.id
    name = f"{_safe(src.record.name)}-{fmt}" + ("" if fmt == "merged" else f"-{quantization}")
    final = root / name
    if final.exists() and not (final / "export.json").is_file():
        raise ModelForgeError(f"{final} exists and was not made by a ModelForge export: not overwriting it",
                              "choose another --output folder")
    return final


def export_model(store, model_key: str, fmt: str = "gguf", quantization: str = "f16",
                 output_dir: str | Path | None = None, *, progress: Progress | None = None, verify: bool = True,
                 max_rows: int = MAX_VALIDATION_ROWS) -> ExportResult:
    """Export model ``model_key`` (record id or name); see the module docstring for the steps.

    Args:
        fmt: "gguf" (merged model in one GGUF), "merged" (a transformers folder) or "lora-gguf"
            (the base model's GGUF plus the adapter as a LoRA GGUF; Ollama's ADAPTER).
        quantization: f16 (exact), q8_0 (half the size, ~lossless) or q4_k_m (a quarter, some drift).
            For lora-gguf it applies to the base; the adapter stays f16. Ignored for merged.
        output_dir: the folder to write into (default: the data folder's exports/<model id>/).

    Raises:
        ConfigError, NotFoundError, NotAvailableError, ModelForgeError: refused, with why; nothing written.
    """
    from core.export import llamacpp

    say = progress or (lambda f, m: None)
    t0 = time.time()
    quantization = (quantization or "f16").lower()
    fmt = (fmt or "gguf").lower()
    src = resolve_source(store, model_key)
    if fmt == "merged":
        quantization = "f16" if quantization not in QUANTIZATIONS else quantization
    final = _destination(src, fmt, quantization, output_dir)
    preflight(src, fmt, quantization, final.parent)
    stage = final.parent / f".{final.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    new_root = not final.parent.exists()
    stage.mkdir(parents=True)
    try:
        result = _export_into(src, fmt, quantization, stage, say, verify, max_rows, llamacpp)
        say(0.98, "finishing")
        (stage / "export.json").write_text(json.dumps({
            "model_id": src.record.id, "name": src.record.name, "base_model": src.record.base_model,
            "format": fmt, "quantization": None if fmt == "merged" else quantization,
            "llama_cpp_python": llamacpp.LLAMA_CPP_PYTHON_VERSION, "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                                              time.gmtime()),
            "seconds": round(time.time() - t0, 2), "files": result["files"], "verification": result["verification"],
            "modelfile_report": result.get("modelfile_report"),
        }, indent=2), encoding="utf-8")
        if final.exists():
            shutil.rmtree(final)
        stage.replace(final)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        if new_root:  # the folder this export created, unless another export has files there now
            try:
                final.parent.rmdir()
            except OSError:
                pass
        raise
    files = [str(final / f) for f in result["files"]]
    primary = final if fmt == "merged" else final / result["primary"]
    warnings = list(result["verification"].get("warnings", []))
    mf_report = result.get("modelfile_report") or {}
    if mf_report and not mf_report.get("template_ok"):
        warnings.append("Modelfile TEMPLATE: " + "; ".join(mf_report.get("template_problems", []))[:300])
    say(1.0, "done")
    return ExportResult(
        path=str(primary), format=fmt, quantization=None if fmt == "merged" else quantization,
        bytes=_dir_bytes(final) - (final / "export.json").stat().st_size,
        modelfile=str(final / "Modelfile") if (final / "Modelfile").is_file() else None,
        verification=result["verification"], folder=str(final), files=files,
        seconds=round(time.time() - t0, 2), warnings=warnings,
        base_gguf=str(final / result["base"]) if result.get("base") else None,
    )


def _export_into(src: _Source, fmt: str, quantization: str, stage: Path, say: Progress, verify: bool,
                 max_rows: int, llamacpp) -> dict:
    from core.export import modelfile, verify as verification

    name = _safe(src.record.name)
    work = stage / "hf"
    work.mkdir()
    say(0.02, "checking the tokenizer and architecture with llama.cpp's converter")
    tokenizer = _stage_tokenizer(src.model_dir, work, strip=fmt != "merged")
    if fmt == "merged":
        say(0.1, "merging the adapter into its base")
        _merge(src, work)
        for p in work.iterdir():  # the folder itself is the product: model, tokenizer, card
            p.rename(stage / p.name)
        work.rmdir()
        if (src.model_dir / "modelforge.json").is_file():
            shutil.copy2(src.model_dir / "modelforge.json", stage / "modelforge.json")
        result = {"files": sorted(p.name for p in stage.iterdir()), "primary": ""}
        result["verification"] = (_verify_merged(src, stage, max_rows, say) if verify
                                  else {"skipped": True, "warnings": []})
        return result

    shutil.copy2(Path(src.base_path) / "config.json", work / "config.json") \
        if (Path(src.base_path) / "config.json").is_file() else None
    llamacpp.check_convertible(work, stage)
    files: list[str] = []
    notes = ""
    if fmt == "gguf":
        say(0.1, "merging the adapter into its base")
        _merge(src, work)
        gguf_name, lora_name = f"{name}-{quantization}.gguf", None
    else:
        say(0.1, "preparing the base model")
        (work / "config.json").unlink()
        _link_base(src.base_path, work)
        gguf_name, lora_name = f"{name}-base-{quantization}.gguf", f"{name}-lora-f16.gguf"
    say(0.3, "converting with llama.cpp (convert_hf_to_gguf)")
    f16 = stage / (gguf_name if quantization == "f16" else f"{name}-work-f16.gguf")
    llamacpp.convert_hf(work, f16, "f16")
    if quantization != "f16":
        say(0.5, f"quantising to {quantization} with llama.cpp's quantiser")
        notes = llamacpp.quantize(f16, stage / gguf_name, quantization)
        f16.unlink()
    files.append(gguf_name)
    if lora_name:
        say(0.6, "converting the adapter with llama.cpp (convert_lora_to_gguf)")
        llamacpp.convert_lora(src.model_dir, work, stage / lora_name, "f16")
        files.append(lora_name)
    shutil.rmtree(work)
    say(0.65, "writing the Ollama Modelfile")
    eos = verification._eos_ids(tokenizer, _generation_config(src.base_path))
    text, mf_report = modelfile.build_modelfile(gguf_name, tokenizer, eos_ids=eos,
                                                system_prompt=src.run_config.get("system_prompt", "") or "",
                                                adapter_name=lora_name)
    (stage / "Modelfile").write_text(text, encoding="utf-8")
    files.append("Modelfile")
    result = {"files": files, "primary": lora_name or gguf_name, "base": gguf_name if lora_name else None,
              "modelfile_report": mf_report}
    if verify:
        say(0.7, "verifying: llama.cpp and transformers answer the same prompts")
        result["verification"] = _verify_gguf(src, stage / gguf_name, stage / lora_name if lora_name else None,
                                              quantization, max_rows, eos)
    else:
        result["verification"] = {"skipped": True, "warnings": []}
    if notes:
        result["verification"]["quantizer_notes"] = notes
    return result


def _generation_config(base_path: str):
    try:
        from transformers import GenerationConfig

        return GenerationConfig.from_pretrained(base_path)
    except Exception:  # noqa: BLE001 - no generation config: the tokenizer's EOS is used
        return None


def _reference(src: _Source, max_rows: int):
    from core.export import verify as verification
    from core.inference import load_model

    rows, note = _validation_rows(src.run_config)
    convs = verification.conversations(src.run_config.get("system_prompt", "") or "", rows, max_rows)
    lm = load_model(str(src.model_dir))
    ref = verification.transformers_answers(lm.model, lm.tokenizer, convs)
    del lm
    return convs, ref, note


def _verify_gguf(src: _Source, gguf: Path, lora: Path | None, quantization: str, max_rows: int,
                 eos: list[int]) -> dict:
    from core.export import verify as verification

    convs, ref, note = _reference(src, max_rows)
    got = verification.llama_answers(gguf, ref, eos, lora=lora)
    out = verification.compare(convs, ref, got, quantization)
    out["runtime"] = "llama_cpp " + ("(base GGUF + LoRA GGUF)" if lora else "(GGUF)")
    if note:
        out["note"] = note
    return out


def _verify_merged(src: _Source, folder: Path, max_rows: int, say: Progress) -> dict:
    """The merged folder, loaded by transformers, against the adapter on its base: same text."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from core.export import verify as verification

    say(0.7, "verifying: the merged model and the adapter answer the same prompts")
    convs, ref, note = _reference(src, max_rows)
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32, use_safetensors=True).eval()
    got = verification.transformers_answers(model, AutoTokenizer.from_pretrained(str(folder)), convs)
    out = verification.compare(convs, ref, got, "merged")
    out["runtime"] = "transformers (merged folder)"
    if note:
        out["note"] = note
    return out
