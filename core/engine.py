"""One training run, top to bottom: validate, load, prepare data, train, save, evaluate, record.

Used by the CLI (in the main thread) and by the job manager (in its worker thread) alike.
Whatever happens, the run ends in exactly one terminal state (completed, failed, cancelled),
the events file says so, and only a completed run gets a model record.
"""

from __future__ import annotations

import gc
import json
import logging
import shutil
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.config import RunConfig, check_config, save_yaml
from core.errors import DataError, ModelForgeError, TrainingError
from core.events import EventLog
from core.paths import runs_dir
from core.records import ModelRecord, RecordStore, new_id

log = logging.getLogger("modelforge.engine")

MODEL_CARD = "modelforge.json"


@dataclass
class TrainContext:
    """Everything a strategy needs; built by the engine, read by the strategy."""

    config: RunConfig
    run_id: str
    run_dir: Path
    model: Any
    tokenizer: Any
    train_rows: list[dict]
    eval_rows: list[dict]
    callbacks: list[Any]
    device: str
    dtype: str
    stop_event: threading.Event
    resume_from: str | None = None
    trainer: Any = None
    extra: dict = field(default_factory=dict)

    @property
    def checkpoint_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    @property
    def model_dir(self) -> Path:
        return self.run_dir / "model"

    def stopped(self) -> bool:
        return self.stop_event.is_set()


@dataclass
class RunResult:
    run_id: str
    status: str
    output_dir: str
    model_id: str | None = None
    metrics: dict = field(default_factory=dict)
    error: str | None = None
    hint: str | None = None
    fault: bool = False  # True: a bug or an environment fault, not the user's input

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def default_run_name(config: RunConfig) -> str:
    base = Path(config.dataset).stem if config.dataset else "run"
    safe = "".join(ch if ch.isalnum() or ch in "._-" else "-" for ch in base)[:40].strip("-.") or "run"
    return f"{safe}-{config.strategy}"


def prepare_run(config: RunConfig, store: RecordStore, run_id: str | None = None) -> tuple[RunConfig, str, Path]:
    """Validate the config and create the run record and folder (status: queued).

    Raises:
        ConfigError: every problem with the config at once.
    """
    check_config(config)
    if not config.name:
        config = config.replace(name=default_run_name(config))
    run_id = run_id or new_id("run")
    run_dir = Path(config.output_dir).expanduser() / run_id if config.output_dir else runs_dir() / run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    save_yaml(config, run_dir / "config.yaml")
    store.create_run(config.name, config.to_dict(), output_dir=str(run_dir), run_id=run_id)
    return config, run_id, run_dir


def preflight(config: RunConfig) -> list:
    """Every problem with the config and its data file, before anything is recorded or loaded.

    Checks the config fields, whether the provider can train it here (available, and able to do
    this task/strategy/quantisation), and reads the whole dataset (no tokenizer: lengths are
    checked again once the model's tokenizer is loaded). Returns error-severity Problems.
    """
    from core.config import validate_config
    from core.data import validate_file
    from core.providers.registry import preflight_problems

    problems = [p for p in validate_config(config) if p.severity == "error"]
    problems += [p for p in preflight_problems(config) if p.severity == "error"]
    if problems or not config.dataset:
        return problems
    report = validate_file(
        config.dataset, task=config.task, strategy=config.strategy,
        dataset_format=config.dataset_format, column_map=config.column_map,
        template_vars=config.template_vars, system_prompt=config.system_prompt, max_length=config.max_length,
    )
    problems = list(report.errors) + ([] if report.ok or report.errors else list(report.problems))
    return problems + memory_problems(config) + disk_problems(config)


def memory_problems(config: RunConfig) -> list:
    """Refuse a run that the estimate says cannot fit in the free (GPU or CPU) memory, with fixes.

    Unknown models (a hub id outside the catalogue, not cached) are not refused: no estimate.
    """
    from core.errors import ModelForgeError, Problem
    from core.hardware import probe
    from core.memory import estimate_for_run, fits, model_config_for

    model_config = model_config_for(config.model, task=config.task)
    if model_config is None:
        return []
    try:
        report = probe()
        result = fits(estimate_for_run(config, model_config, report), report)
    except ModelForgeError:
        return []
    if result.ok:
        return []
    return [Problem(f"this run needs about {result.needed_gib:.1f} GiB but only {result.available_gib:.1f} GiB "
                    f"is free on the {result.device}", "; or ".join(result.fixes[:4]) or "choose a smaller model",
                    field="model")]


# Besides weights and optimizer state, each checkpoint (and the final model) holds the tokenizer
# files and small ones (trainer state, scheduler, RNG state, training args, README: ~20 KB
# measured on the demo); the run folder holds events, train.log and config.yaml. Measured, not a
# fixed 64 MiB that refused every run on a small disk.
CHECKPOINT_SMALL_FILES_BYTES = 256 * 2**10
DISK_SLACK_BYTES = 2 * 2**20             # events.jsonl, train.log, config.yaml of one run
HUB_TOKENIZER_BYTES = 16 * 2**20         # a hub model's tokenizer files, unknown offline (Llama 3: ~9 MB)
_TOKENIZER_FILES = ("tokenizer*", "vocab*", "merges.txt", "*.model", "special_tokens_map.json",
                    "added_tokens.json", "chat_template.jinja")


def tokenizer_bytes(model: str) -> int:
    """Size of the tokenizer files every checkpoint copies: measured for a local folder or the demo."""
    from core.demo_model import DEMO_ALIASES, DEMO_NAME
    from core.paths import cache_dir

    name = (model or "").strip()
    if name.lower() == DEMO_NAME or name.lower() in DEMO_ALIASES:
        folders = [p for p in cache_dir().glob("demo*") if p.is_dir()]
        if not folders:
            return 2**20  # not built yet: the demo tokenizers are a few hundred KB
    else:
        folder = Path(name).expanduser()
        if not folder.is_dir():
            return HUB_TOKENIZER_BYTES
        folders = [folder]
    try:
        return max(sum(f.stat().st_size for pattern in _TOKENIZER_FILES for f in d.glob(pattern) if f.is_file())
                   for d in folders)
    except OSError:
        return HUB_TOKENIZER_BYTES


def checkpoint_bytes(config: RunConfig) -> int | None:
    """Disk a run will fill: its checkpoints plus the final adapter, or None when the model is unknown.

    Each checkpoint holds the trainable weights (fp32, 4 bytes each) and AdamW's two fp32
    moments (8 bytes each); ``save_total_limit + 1`` exist at once, because the trainer writes a
    new checkpoint before it deletes the oldest. The trainable parameters come from the memory
    estimate (the LoRA adapter, and any task head trained fully). rlhf trains two models.
    """
    from core.errors import ModelForgeError
    from core.memory import estimate_for_run, model_config_for

    model_config = model_config_for(config.model, task=config.task)
    if model_config is None:
        return None
    try:
        trainable = estimate_for_run(config, model_config).trainable_params
    except ModelForgeError:
        return None
    files = tokenizer_bytes(config.model) + CHECKPOINT_SMALL_FILES_BYTES
    per_checkpoint = trainable * (4 + 8) + files
    total = (config.save_total_limit + 1) * per_checkpoint + trainable * 4 + files
    if config.strategy == "rlhf":
        total *= 2
    return int(total) + DISK_SLACK_BYTES


def run_parent_dir(config: RunConfig) -> Path:
    """The folder a run's folder is created in (``output_dir``, or MODELFORGE_HOME/runs)."""
    return Path(config.output_dir).expanduser() if config.output_dir else runs_dir()


def disk_problems(config: RunConfig) -> list:
    """Refuse a run whose checkpoints and model cannot fit on the disk of its run folder."""
    from core.errors import Problem

    needed = checkpoint_bytes(config)
    if needed is None:
        return []
    where = run_parent_dir(config)
    probe_at = where
    while not probe_at.exists() and probe_at.parent != probe_at:
        probe_at = probe_at.parent  # output_dir may not exist yet: measure the disk it will be on
    try:
        free = shutil.disk_usage(probe_at).free
    except OSError:
        return []
    if needed <= free:
        return []
    return [Problem(f"this run writes about {_size(needed)} of checkpoints and model, but only "
                    f"{_size(free)} is free on the disk of {where}",
                    f"free disk space, lower save_total_limit (now {config.save_total_limit}), or set "
                    "output_dir (or MODELFORGE_HOME) to a larger disk", field="output_dir")]


def _size(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MB"


def checkpoint_complete(path: str | Path) -> bool:
    """A checkpoint folder the trainer finished writing (``trainer_state.json`` is written last)."""
    return (Path(path) / "trainer_state.json").is_file()


def _remove_incomplete_checkpoints(run_dir: Path) -> list[str]:
    """Delete checkpoint folders a failed save left half-written (they cannot be resumed from)."""
    removed = []
    for p in (run_dir / "checkpoints").glob("checkpoint-*"):
        if p.is_dir() and not checkpoint_complete(p):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p.name)
    return removed


def load_data(config: RunConfig, tokenizer: Any, data_kinds: tuple[str, ...]) -> tuple[list, list, Any]:
    """Validate and split the dataset.

    Raises:
        DataError: listing every problem (file, line, field, fix).
    """
    from core.data import split_train_eval, validate_file

    report = validate_file(
        config.dataset, task=config.task, strategy=config.strategy,
        dataset_format=config.dataset_format, column_map=config.column_map,
        template_vars=config.template_vars, system_prompt=config.system_prompt,
        tokenizer=tokenizer, max_length=config.max_length,
    )
    if not report.ok:
        raise DataError(f"{config.dataset} cannot be used for {config.strategy}/{config.task}.",
                        "fix the rows listed, or choose a strategy that fits the data",
                        problems=report.errors or report.problems)
    examples = report.examples
    if config.max_samples:
        examples = examples[: config.max_samples]
    train, evaluation = split_train_eval(examples, config.validation_split, config.seed)
    return train, evaluation, report


def _device() -> str:
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def _train_dtype(config: RunConfig, device: str) -> str:
    """Mixed-precision mode for the trainer ('bf16', 'fp16' or 'fp32'): the config's precision,
    with "auto" resolved by :func:`core.hardware.auto_precision`, the one rule that the provider
    loads the weights with (:func:`core.providers.huggingface.pick_dtype`) and that the hardware
    report and the memory estimate show."""
    if config.precision != "auto":
        return config.precision
    if device == "cpu":
        from core.hardware import auto_precision

        return auto_precision("cpu")
    from core.providers.huggingface import pick_dtype

    return pick_dtype("auto")  # asks torch whether the GPU has native bf16


def _attach_log_file(run_dir: Path) -> logging.Handler:
    from core.faults import QuietFileHandler

    handler = QuietFileHandler(run_dir / "train.log", encoding="utf-8")  # a full disk: no "Logging error" spam
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for name in ("modelforge", "transformers", "trl", "peft"):
        logging.getLogger(name).addHandler(handler)
    logging.getLogger("modelforge").setLevel(logging.INFO)
    return handler


def _detach_log_file(handler: logging.Handler) -> None:
    for name in ("modelforge", "transformers", "trl", "peft"):
        logging.getLogger(name).removeHandler(handler)
    handler.close()


def run_training(
    config: RunConfig,
    store: RecordStore,
    events: EventLog,
    run_id: str,
    run_dir: Path,
    stop_event: threading.Event | None = None,
    resume_from: str | None = None,
    long_lived: bool = False,
) -> RunResult:
    """Train one prepared run to its end. Never raises: the result says how it ended.

    ``long_lived``: the caller is a process that goes on after the run (the app's job manager),
    so a provider that patches libraries process-wide (unsloth) trains in a child process.
    """
    from core import distributed
    from core.providers import registry as providers
    from core.strategies import registry as strategies

    if distributed.wants_launch(config) or (long_lived and distributed.wants_own_process(config)):
        # num_processes > 1: accelerate runs this function once per device; a patching provider
        # in the app: one plain child process runs it.
        return distributed.run_distributed(config, store, events, run_id, run_dir, stop_event, resume_from)
    stop_event = stop_event or threading.Event()
    events.attach_file(run_dir / "events.jsonl")
    handler = _attach_log_file(run_dir)
    started = time.time()
    store.mark_running(run_id, resumed=resume_from is not None)
    events.emit("started", name=config.name, config=config.to_dict())
    ctx: TrainContext | None = None
    try:
        # The provider first: its back-end may have to be imported before transformers, peft and
        # trl (unsloth patches them at import), and the strategy checks below can import trl.
        provider = providers.get(config.provider)
        _prepare_provider(provider)
        _quiet_progress_bars()
        from core.callback import EventCallback

        strategy = strategies.get(config.strategy)
        ok, why = strategy.available()
        if not ok:
            from core.errors import NotAvailableError

            raise NotAvailableError(f"strategy '{config.strategy}' is not available: {why}",
                                    "see `modelforge info` for what works here")
        if hasattr(strategy, "adjust_config"):
            config = strategy.adjust_config(config)
        events.emit("log", message=f"loading model '{config.model}' with {provider.name}")
        model, tokenizer = _load_model(provider, config)
        events.emit("log", message=f"validating {config.dataset}")
        train_rows, eval_rows, report = load_data(config, tokenizer, strategy.data_kinds)
        events.emit("log", message=f"{len(train_rows)} training rows, {len(eval_rows)} evaluation rows "
                                   f"(format: {report.format})")
        device = _device()
        ctx = TrainContext(config=config, run_id=run_id, run_dir=run_dir, model=model, tokenizer=tokenizer,
                           train_rows=train_rows, eval_rows=eval_rows, callbacks=[], device=device,
                           dtype=_train_dtype(config, device), stop_event=stop_event, resume_from=resume_from)
        callback = EventCallback(events, store, run_id, stop_event)
        ctx.callbacks.append(callback)
        ctx.callbacks.append(_nan_guard())
        # The adapter's random initial weights come from the seed, not from whatever ran before in
        # this process: a run is reproducible, and every process of a multi-process run starts alike.
        from transformers import set_seed

        set_seed(config.seed)
        metrics = strategy.train(ctx)
        if callback.nan_loss:
            raise TrainingError("the loss became NaN (not a number): training diverged",
                                "lower learning_rate (e.g. by 10x) or use precision fp32")
        if stop_event.is_set():
            store.finish_run(run_id, "cancelled", error="stopped by the user; resume to continue")
            events.emit("cancelled", step=callback.step, total_steps=callback.total,
                        message="stopped; a checkpoint was saved", checkpoint=callback.last_checkpoint)
            return RunResult(run_id, "cancelled", str(run_dir))
        metrics = {k: v for k, v in metrics.items() if v is not None}
        metrics["train_runtime_s"] = round(time.time() - started, 2)
        store.add_metrics(run_id, callback.step, {f"final_{k}": v for k, v in metrics.items()})
        # In a multi-process run only rank 0 writes the model card and record (the others return).
        model_id = _write_model(config, ctx, store, run_id, metrics) if distributed.is_main_process() else None
        events.emit("finished", step=callback.step, total_steps=callback.total, metrics=metrics,
                    model_id=model_id, model_dir=str(ctx.model_dir))
        return RunResult(run_id, "completed", str(run_dir), model_id=model_id, metrics=metrics)
    except ModelForgeError as exc:
        log.error("run %s failed: %s", run_id, exc)
        return _fail(store, events, run_id, run_dir, str(exc.message), exc.hint, exc, fault=False)
    except Exception as exc:  # noqa: BLE001 - turn every fault into a failed run, with the traceback logged
        log.error("run %s crashed:\n%s", run_id, traceback.format_exc())
        message, hint = _explain(exc)
        if _disk_full(exc, run_dir):
            from core.faults import disk_full_message

            # First free what the failed save left, so that the failure itself can be recorded.
            message, hint = disk_full_message(run_dir, _remove_incomplete_checkpoints(run_dir))
        return _fail(store, events, run_id, run_dir, message, hint, exc,
                     fault=not (_environment_fault(exc) or _disk_full(exc, run_dir)))
    finally:
        _detach_log_file(handler)
        ctx = None  # the model, optimizer and trainer go now, not at the next run: after an
        _release_memory()  # out-of-memory failure the app must be able to train again


def _prepare_provider(provider: Any) -> None:
    """Call the provider's optional ``prepare()`` hook (see core/providers/registry.py): unsloth
    imports itself there, before anything in this process imports transformers, peft or trl
    (else it warns that some of its patches are lost). Only the chosen provider, and only once
    ``providers.get`` found it available: unsloth is never imported otherwise. In the app, the
    first run of the process may be the only one that comes before transformers."""
    prepare = getattr(provider, "prepare", None)
    if prepare is not None:
        prepare()


def _load_model(provider: Any, config: RunConfig) -> tuple[Any, Any]:
    """The provider's model and tokenizer; any failure to load becomes a ModelLoadError.

    Providers translate the errors they expect (missing folder, offline hub); a corrupt
    weights file or a config that transformers rejects surfaces as whatever the library raised.
    """
    from core.errors import ModelForgeError, ModelLoadError

    try:
        return provider.load(config, for_training=True)
    except ModelForgeError:
        raise
    except Exception as exc:  # noqa: BLE001 - MemoryError and disk errors keep their own explanation
        if isinstance(exc, MemoryError) or _is_oom(exc) or _disk_full(exc):
            raise
        log.error("loading %s failed:\n%s", config.model, traceback.format_exc())
        text = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
        raise ModelLoadError(f"could not load model '{config.model}': {type(exc).__name__}: {text}",
                             "the model's files may be incomplete or corrupt: download or build it again, "
                             "or choose another model") from None


def _nan_guard() -> Any:
    """A callback that lets a NaN loss reach the logs, where EventCallback fails the run.

    transformers' default ``logging_nan_inf_filter=True`` replaces a NaN/inf step loss with the
    running mean before logging it: a diverged run would log finite (even zero) losses and
    complete with a broken model. Turning the filter off here keeps the check in one place for
    every strategy, whatever trainer config it builds.
    """
    from transformers import TrainerCallback

    class NanGuard(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            args.logging_nan_inf_filter = False

    return NanGuard()


def _release_memory() -> None:
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # noqa: BLE001 - best effort
        pass


def _quiet_progress_bars() -> None:
    """datasets' and transformers' own bars would garble the CLI's line and --json's stdout."""
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_warning()


def _is_oom(exc: BaseException) -> bool:
    """Out of memory on any device: torch.OutOfMemoryError (CUDA), MemoryError (CPU), MPS/XPU text."""
    try:
        import torch

        if isinstance(exc, getattr(torch, "OutOfMemoryError", ())):
            return True
    except ImportError:  # pragma: no cover
        pass
    return isinstance(exc, MemoryError) or "out of memory" in str(exc).lower()


def _disk_full(exc: BaseException, where: Path | None = None) -> bool:
    """No space left (ENOSPC, EDQUOT, torch's writer failing on a full disk): see core.faults."""
    from core.faults import disk_full

    return disk_full(exc, where)


def _environment_fault(exc: BaseException) -> bool:
    """Failures of the machine, not bugs: out of memory, disk full."""
    return _is_oom(exc) or _disk_full(exc)


def _explain(exc: Exception) -> tuple[str, str]:
    """A user-facing message (what happened) and hint (what to change) for an exception from training."""
    text = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
    if _is_oom(exc):
        return (f"out of memory while training ({text})",
                "lower batch_size (raise gradient_accumulation_steps to keep the effective batch), "
                "shorten max_length, turn on gradient_checkpointing, or use quantization 4bit; "
                "the Hardware tab estimates what fits")
    if _disk_full(exc):
        where = getattr(exc, "filename", None)
        return ("the disk is full" + (f" (writing {where})" if where else ""),
                "free disk space, lower save_total_limit, or set output_dir (or MODELFORGE_HOME) to a "
                "larger disk; then resume the run")
    return (f"{type(exc).__name__}: {text}", "see train.log in the run folder for the details")


def _fail(store, events, run_id, run_dir, message, hint, exc, fault: bool) -> RunResult:
    try:
        store.finish_run(run_id, "failed", error=f"{message} (fix: {hint})" if hint else message)
    except Exception:  # noqa: BLE001 - the events file still says what happened
        log.error("could not record failure of %s:\n%s", run_id, traceback.format_exc())
    problems = [p.to_dict() for p in getattr(exc, "problems", [])]
    try:
        events.emit("failed", message=message, hint=hint, problems=problems)
    except OSError:  # the disk is full: the record (and the caller) still say how the run ended
        log.error("could not write the failure of %s to its events file", run_id)
    return RunResult(run_id, "failed", str(run_dir), error=message, hint=hint, fault=fault)


def _write_model(config: RunConfig, ctx: TrainContext, store: RecordStore, run_id: str, metrics: dict) -> str:
    """Write the model card beside the adapter, then the record and run status in one transaction."""
    model_dir = ctx.model_dir
    model_id = new_id("model")
    card = {
        "model_id": model_id,
        "run_id": run_id,
        "name": config.name,
        "base_model": config.model,
        "task": config.task,
        "strategy": config.strategy,
        "provider": config.provider,
        "metrics": metrics,
        "config": config.to_dict(),
    }
    (model_dir / MODEL_CARD).write_text(json.dumps(card, indent=2, default=str), encoding="utf-8")
    save_yaml(config, model_dir / "run_config.yaml")
    size = sum(f.stat().st_size for f in model_dir.rglob("*") if f.is_file())
    record = ModelRecord(id=model_id, name=config.name, base_model=config.model, task=config.task,
                         strategy=config.strategy, provider=config.provider, path=str(model_dir),
                         run_id=run_id, metrics=metrics, size_bytes=size)
    store.finish_run(run_id, "completed", model=record)
    return model_id

