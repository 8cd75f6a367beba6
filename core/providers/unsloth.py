"""The Unsloth provider: faster LoRA/QLoRA on NVIDIA GPUs (``pip install -e '.[unsloth]'``).

unsloth is imported lazily, and never just to *ask* whether it works: importing it patches
transformers, peft and trl for the whole process (and, on a machine without its CUDA stack, can
fail half-way). :func:`status` answers from cheap facts first (installed? an NVIDIA GPU of compute
capability 7.0+ and a CUDA build of torch?) and only then tries ``import unsloth`` in a child
process, remembering the answer (in memory, and in ``cache/unsloth-import.json`` keyed by the
versions involved, since the import takes 10-20 s). The reason it gives is the one the CLI
(``modelforge info``), the Hardware tab (through :mod:`core.hardware`) and a refused run all show.

On a machine without a GPU unsloth 2026.10 falls back to plain transformers + PEFT on the CPU
("no GPU found, training on CPU"): none of its kernels, so only useful to test this provider's
wiring. It is therefore unavailable there, saying so, unless
``MODELFORGE_UNSLOTH_CPU=1`` asks for that fallback (CI does: ``.ci/unsloth.sh``).

What it trains: causal LMs for text generation, through the strategies in
:data:`STRATEGIES`. The LoRA adapters (and gradient checkpointing) are unsloth's own, applied
at load time; the provider declares ``applies_adapter`` so strategies do not wrap it again.
The saved adapter is a plain PEFT adapter: it reloads with the huggingface provider.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys
from typing import Any

from core.errors import ModelLoadError, NotAvailableError, Problem

CPU_ENV = "MODELFORGE_UNSLOTH_CPU"       # "1": use unsloth's CPU fallback (for tests) when no GPU
# Strategies whose models unsloth loads: SFT/QLoRA and the preference trainers (trl's DPO, ORPO,
# KTO take the PeftModel as is). Not rlhf: its reward model is a sequence classifier, and its
# GRPO generation is patched by unsloth only with vLLM.
STRATEGIES = ("sft", "qlora", "dpo", "orpo", "kto")
TASKS = ("text-generation",)
MIN_COMPUTE_CAPABILITY = (7, 0)          # unsloth's Triton kernels: Volta (V100) or newer
IMPORT_TIMEOUT_S = 300
INSTALL_HINT = "pip install -e '.[unsloth]' on a machine with an NVIDIA GPU"
# Distributions whose versions decide whether ``import unsloth`` works (the cache key).
_IMPORT_DEPS = ("unsloth", "unsloth_zoo", "torch", "torchvision", "transformers", "trl", "peft",
                "xformers", "triton", "bitsandbytes", "torchao")

_import_cache: dict[str, tuple[bool, str]] = {}


def _installed() -> bool:
    return importlib.util.find_spec("unsloth") is not None


def _versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for dist in _IMPORT_DEPS:
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = None
    return out


def _cpu_opt_in() -> bool:
    return os.environ.get(CPU_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def _gpu_problem(gpus: list | None, gpu_reason: str = "") -> str:
    """Why this machine has no GPU unsloth can use ("" when it has one)."""
    from core import hardware

    if gpus is None:
        report = hardware.HardwareReport()
        try:
            hardware.probe_nvidia(report)
        except Exception as exc:  # noqa: BLE001 - a broken NVML is just "no GPU found"
            report.gpu_reason = f"NVML failed: {exc}"
        gpus, gpu_reason = report.gpus, report.gpu_reason
    if not gpus:
        why = f" ({gpu_reason})" if gpu_reason else ""
        return f"no supported GPU: unsloth needs an NVIDIA GPU and none was found{why}"
    best = max(gpus, key=lambda g: tuple(g.compute_capability))
    if tuple(best.compute_capability) < MIN_COMPUTE_CAPABILITY:
        cc = ".".join(str(x) for x in best.compute_capability)
        return (f"no supported GPU: {best.name} has compute capability {cc}; unsloth needs "
                f"{MIN_COMPUTE_CAPABILITY[0]}.{MIN_COMPUTE_CAPABILITY[1]} or newer")
    if importlib.util.find_spec("torch") is not None and not hardware._torch_cuda_build():
        return ("no supported GPU for this torch: it is a CPU-only build; install the CUDA build of "
                "torch (see the README's GPUs section)")
    return ""


def _error_line(stderr: str) -> str:
    """The exception line of a traceback printed by a failed import (else its last line)."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    for line in reversed(lines):
        head = line.split(":", 1)[0]
        if head.endswith(("Error", "Exception", "NotImplementedError")) and " " not in head:
            return line[:300]
    return (lines[-1][:300] if lines else "no error message")


def _cache_file():
    from core.paths import cache_dir

    return cache_dir() / "unsloth-import.json"


def _import_check() -> tuple[bool, str]:
    """Does ``import unsloth`` work here? Tried in a child process, remembered per version set."""
    if "unsloth" in sys.modules:
        return True, ""
    key = json.dumps({"python": sys.executable, "versions": _versions(), "cpu": _cpu_opt_in(),
                      "disable_cpu_fallback": os.environ.get("UNSLOTH_DISABLE_CPU_FALLBACK", "")},
                     sort_keys=True)
    if key in _import_cache:
        return _import_cache[key]
    try:
        cached = json.loads(_cache_file().read_text(encoding="utf-8"))
        if cached.get("key") == key:
            result = (bool(cached["ok"]), str(cached["reason"]))
            _import_cache[key] = result
            return result
    except (OSError, ValueError, KeyError, TypeError):
        pass
    try:
        out = subprocess.run([sys.executable, "-c", "import unsloth"], capture_output=True, text=True,
                             timeout=IMPORT_TIMEOUT_S, env={**os.environ, "PYTHONWARNINGS": "ignore"})
        ok = out.returncode == 0
        reason = "" if ok else f"installed but failed to import: {_error_line(out.stderr)}"
    except subprocess.TimeoutExpired:
        ok, reason = False, f"installed but `import unsloth` did not finish in {IMPORT_TIMEOUT_S} s"
    except OSError as exc:
        return False, f"installed but could not be checked: {exc}"
    _import_cache[key] = (ok, reason)
    try:
        path = _cache_file()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"key": key, "ok": ok, "reason": reason}), encoding="utf-8")
    except OSError:
        pass  # a read-only home only costs the next process the same check
    return ok, reason


def status(gpus: list | None = None, gpu_reason: str = "") -> tuple[bool, str]:
    """(usable here?, why not): the one answer every caller shows.

    Args:
        gpus: the NVIDIA GPUs already found (``HardwareReport.gpus``); None: ask NVML here.
        gpu_reason: with ``gpus``, why none was found (``HardwareReport.gpu_reason``).

    Returns:
        (True, "") or (False, a reason: not installed / no supported GPU / the import error).
    """
    if not _installed():
        return False, f"not installed ({INSTALL_HINT})"
    gpu = _gpu_problem(gpus, gpu_reason)
    if gpu and not _cpu_opt_in():
        return False, (f"{gpu}; set {CPU_ENV}=1 to use its slow CPU fallback "
                       "(for testing: on a CPU it is plain transformers + peft underneath)")
    return _import_check()


def config_problems(config) -> list[Problem]:
    """What this provider cannot do for ``config`` (empty when it can)."""
    problems = []
    if config.task not in TASKS:
        problems.append(Problem(f"provider 'unsloth' cannot train task '{config.task}'",
                                "use provider huggingface for it", field="provider"))
    if config.strategy not in STRATEGIES:
        problems.append(Problem(f"provider 'unsloth' cannot train strategy '{config.strategy}'",
                                f"use provider huggingface, or one of: {', '.join(STRATEGIES)}",
                                field="provider"))
    if config.quantization == "8bit":
        problems.append(Problem("provider 'unsloth' does not load 8-bit bases",
                                "use quantization 4bit (QLoRA) or none", field="quantization"))
    return problems


def _lora_targets(model, targets: str) -> list[str] | str:
    """LoRA target names for unsloth: "all-linear" becomes every linear layer in the blocks."""
    import torch

    if targets.strip() != "all-linear":
        return [t.strip() for t in targets.split(",") if t.strip()]
    names = {name.rsplit(".", 1)[-1] for name, module in model.named_modules()
             if isinstance(module, torch.nn.Linear) or type(module).__name__ in ("Linear4bit", "Linear8bitLt")}
    names.discard("lm_head")
    return sorted(names) or "all-linear"


class UnslothProvider:
    name = "unsloth"
    # Measured on an H200 (docs/benchmarks.md, "GPU check"): 1.95x huggingface's tokens/s at 0.73x
    # its memory with 4 x 2,048-token batches and gradient checkpointing; 0.97x (LoRA) and 1.33x
    # (QLoRA) at 4 x 512 tokens without it, still at ~0.73x the memory.
    description = "Unsloth's kernels for NVIDIA GPUs: up to ~2x faster on long sequences, ~0.7x the memory"
    tasks = TASKS
    own_process = True      # importing unsloth patches transformers/peft/trl for the whole process
    multi_process = False   # unsloth trains on one GPU only
    applies_adapter = True  # its own LoRA (and gradient checkpointing), applied in load()

    def available(self) -> tuple[bool, str]:
        return status()

    def backend_status(self, report) -> tuple[bool, str]:
        # The hardware report's "unsloth" line: the same answer as available(), from the GPUs the
        # report already found (so the Hardware tab, `modelforge info` and a refused run agree).
        return status(gpus=report.gpus, gpu_reason=report.gpu_reason)

    def config_problems(self, config) -> list[Problem]:
        return config_problems(config)

    def adjust_config(self, config):
        return config

    def prepare(self) -> None:
        """Import unsloth now. The engine calls this before anything imports transformers, peft or
        trl: unsloth patches them at import and warns that some optimisations are lost when it
        comes second.

        Raises:
            NotAvailableError: the import failed (e.g. NotImplementedError without a GPU).
        """
        try:
            import unsloth  # noqa: F401
        except Exception as exc:  # noqa: BLE001 - the same answer load() gives
            raise NotAvailableError(f"provider 'unsloth' is not available here: installed but failed to "
                                    f"import: {type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:200]}",
                                    "use provider huggingface (see `modelforge info`)") from None

    def load(self, config, *, for_training: bool = True) -> tuple[Any, Any]:
        """Load (model, tokenizer) with FastLanguageModel; for training, with unsloth's LoRA.

        Raises:
            NotAvailableError: the task, strategy or quantisation is not one unsloth does.
            ModelLoadError: the model cannot be found or loaded.
        """
        problems = config_problems(config)
        if problems:
            raise NotAvailableError("; ".join(p.message for p in problems), problems[0].hint,
                                    problems=problems)
        try:
            from unsloth import FastLanguageModel  # noqa: I001 - patches transformers: comes first
        except Exception as exc:  # noqa: BLE001 - e.g. NotImplementedError without a GPU
            raise NotAvailableError(f"provider 'unsloth' is not available here: installed but failed to "
                                    f"import: {type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:200]}",
                                    "use provider huggingface (see `modelforge info`)") from None
        import torch

        from core.models import pick_dtype, prepare_tokenizer, resolve_model_path

        path = resolve_model_path(config.model, trust_remote_code=config.trust_remote_code, task=config.task)
        four_bit = config.quantization == "4bit" or config.strategy == "qlora"
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[pick_dtype(config.precision)]
        if four_bit and not torch.cuda.is_available():
            dtype = torch.float32  # bitsandbytes' CPU kernels compute in fp32 (as the engine trains)
        ckpt = "unsloth" if config.gradient_checkpointing else False
        try:
            model, tokenizer = FastLanguageModel.from_pretrained(
                model_name=path, max_seq_length=config.max_length, dtype=dtype,
                load_in_4bit=four_bit, load_in_8bit=False, load_in_16bit=not four_bit, full_finetuning=False,
                trust_remote_code=config.trust_remote_code, use_gradient_checkpointing=ckpt)
        except Exception as exc:  # noqa: BLE001
            raise ModelLoadError(f"unsloth could not load '{config.model}': "
                                 f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}",
                                 "check the model (unsloth loads Llama, Mistral, Qwen, Gemma, Phi...), "
                                 "or use provider huggingface") from None
        if for_training:
            model = FastLanguageModel.get_peft_model(
                model, r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                target_modules=_lora_targets(model, config.lora_target_modules), bias="none",
                use_gradient_checkpointing=ckpt, random_state=config.seed,
                max_seq_length=config.max_length)
        else:
            FastLanguageModel.for_inference(model)
        model._modelforge_provider = self.name
        return model, prepare_tokenizer(tokenizer)

