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
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core import distributed
from core.checks import adjusted, check_config, preflight, validate_data  # noqa: F401 (preflight: re-exported)
from core.config import RunConfig, save_yaml
from core.errors import DataError, ModelForgeError, NotAvailableError, TrainingError
from core.events import EventLog
from core.models import device as _device
from core.models import train_dtype
from core.registry import PROVIDERS, STRATEGIES
from core.run import MODEL_CARD, RunResult, TrainContext, checkpoint_complete, create_run  # noqa: F401

if TYPE_CHECKING:  # SQLAlchemy loads with the record store, not with this module (issue 18: start-up)
    from core.records import RecordStore

log = logging.getLogger("modelforge.engine")



def prepare_run(config: RunConfig, store: RecordStore, run_id: str | None = None) -> tuple[RunConfig, str, Path]:
    """Validate the config, apply its plugins' adjustments, and create the run record and folder
    (status: queued), for scripts and tests. The CLI and the app check a run with the full
    pre-flight (:func:`core.checks.run_checks`) and then record it (:func:`core.run.create_run`).

    Raises:
        ConfigError: every problem with the config at once.
    """
    check_config(config)
    return create_run(adjusted(config), store, run_id)


def _remove_incomplete_checkpoints(run_dir: Path) -> list[str]:
    """Delete checkpoint folders a failed save left half-written (they cannot be resumed from)."""
    removed = []
    for p in (run_dir / "checkpoints").glob("checkpoint-*"):
        if p.is_dir() and not checkpoint_complete(p):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p.name)
    return removed


def load_data(config: RunConfig, tokenizer: Any) -> tuple[list, list, Any]:
    """Validate and split the dataset (with the model's tokenizer: lengths are checked too).

    Raises:
        DataError: listing every problem (file, line, field, fix).
    """
    from core.data import split_train_eval

    report = validate_data(config, tokenizer)
    if not report.ok:
        raise DataError(f"{config.dataset} cannot be used for {config.strategy}/{config.task}.",
                        "fix the rows listed, or choose a strategy that fits the data",
                        problems=report.errors or report.problems)
    examples = report.examples
    if config.max_samples:
        examples = examples[: config.max_samples]
    train, evaluation = split_train_eval(examples, config.validation_split, config.seed)  # the held-out rule
    return train, evaluation, report


# The name an older test and benchmark import (the rule itself lives in core.models).
_train_dtype = train_dtype


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
        # setup -> train -> finish, with cleanup below whatever happens (torchtune's recipe shape).
        ctx, strategy, callback = _setup(config, store, events, run_id, run_dir, stop_event, resume_from)
        try:
            metrics = strategy.train(ctx)
        except Exception as exc:  # noqa: BLE001 - only a compile failure is handled here
            why = _compile_failed_first(ctx, callback, exc)
            if not why:
                raise
            # torch.compile could not compile the first step (a broken C++ compiler, an op
            # inductor cannot lower): nothing was trained yet, so train the same run eager,
            # from a freshly loaded model (the failed one may hold half-applied wrappers).
            log.warning("run %s: torch.compile failed, training eager:\n%s", run_id, traceback.format_exc())
            events.emit("log", message=f"torch.compile failed before the first step ({why}): training without "
                                       "it (eager), from the start", compile_failed=why)
            ctx = None
            _release_memory()
            ctx, strategy, callback = _setup(config, store, events, run_id, run_dir, stop_event, resume_from,
                                             eager_because=f"compile failed: {why}")
            metrics = strategy.train(ctx)
        return _finish(ctx, store, events, callback, metrics, started)
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


def _setup(config: RunConfig, store: RecordStore, events: EventLog, run_id: str, run_dir: Path,
           stop_event: threading.Event, resume_from: str | None,
           eager_because: str = "") -> tuple[TrainContext, Any, Any]:
    """Everything before training: the provider (prepared first), the strategy, the model, the data,
    the callbacks and the seed. Returns (context, strategy, the EventCallback). ``eager_because``:
    train without torch.compile whatever the config says, for this reason (its compile failed).

    Raises:
        ModelForgeError: a plugin that is not available, a model that does not load, bad data.
    """
    # The provider first: its back-end may have to be imported before transformers, peft and
    # trl (unsloth patches them at import), and the strategy checks below can import trl.
    provider = PROVIDERS.require(config.provider)
    # unsloth imports itself here, before anything in this process imports transformers, peft
    # or trl (else it warns that some of its patches are lost); only the chosen provider, and
    # only once it is known to be available. In the app, the first run may be the only one
    # that comes before transformers.
    provider.prepare()
    _quiet_progress_bars()
    # Here, not at the top: core.callback imports transformers (seconds), which the app's
    # start-up and the CLI's --help must not wait for.
    from core.callback import EventCallback

    strategy = STRATEGIES.get(config.strategy)
    ok, why = strategy.available()
    if not ok:
        raise NotAvailableError(f"strategy '{config.strategy}' is not available: {why}",
                                "see `modelforge info` for what works here")
    # The checks applied the adjustments before the run was recorded; again here (they are
    # idempotent) for runs recorded before that, resumed now.
    config = adjusted(config)
    events.emit("log", message=f"loading model '{config.model}' with {provider.name}")
    model, tokenizer = _load_model(provider, config)
    events.emit("log", message=f"validating {config.dataset}")
    train_rows, eval_rows, report = load_data(config, tokenizer)
    from core.data import held_out

    choice = held_out(len(train_rows) + len(eval_rows), config.validation_split)
    # Said once, in words: how many rows were held out and why (the auto rule or the number given).
    events.emit("log", message=f"{choice.text}; {len(train_rows)} training rows (format: {report.format})",
                validation=choice.text)
    if config.early_stopping_patience and not eval_rows:
        events.emit("log", message="early stopping is off: no validation rows to watch")
    device = _device()
    ctx = TrainContext(config=config, run_id=run_id, run_dir=run_dir, model=model, tokenizer=tokenizer,
                       train_rows=train_rows, eval_rows=eval_rows, callbacks=[], device=device,
                       dtype=train_dtype(config, device), stop_event=stop_event, resume_from=resume_from,
                       adapter_applied=provider.applies_adapter)
    callback = EventCallback(events, store, run_id, stop_event)
    plan = _compile_plan(ctx, eager_because)
    ctx.compile_model = plan.enabled
    callback.compile_s = plan.compile_s
    events.emit("log", message=_precision_line(ctx))
    events.emit("log", message=f"torch.compile {plan.reason}")
    ctx.callbacks.append(callback)
    ctx.callbacks.append(_nan_guard())
    from core.trackers import callbacks as extra_callbacks  # issue 16: early stopping, trackers

    ctx.callbacks += extra_callbacks(config, run_dir, bool(eval_rows))
    # The adapter's random initial weights come from the seed, not from whatever ran before in
    # this process: a run is reproducible, and every process of a multi-process run starts alike.
    from transformers import set_seed

    set_seed(config.seed)
    return ctx, strategy, callback


def _train_tokens(config: RunConfig, rows: list[dict]) -> float:
    """Tokens the run will train on, roughly: rows (or max_steps x examples per step) x epochs x
    their length, taken as ~4 characters per token and capped at max_length. Only for the
    compile decision, whose break-even has a 2x margin."""
    if not rows:
        return 0.0
    sample = rows[:200]
    per_row = sum(min(config.max_length, len(json.dumps(r, ensure_ascii=False)) / 4) for r in sample) / len(sample)
    if config.max_steps > 0:
        examples = config.max_steps * config.batch_size * config.gradient_accumulation_steps
    else:
        examples = len(rows) * config.num_epochs
    return examples * per_row


def _compile_failed_first(ctx: TrainContext, callback: Any, exc: BaseException) -> str:
    """Why torch.compile failed, when ``exc`` is a compile failure of a compiled run before it
    finished a step in this attempt (so training eager from the same start loses nothing); ""
    otherwise (the error is the run's, or steps were trained: then the run fails, saying so)."""
    from core.speed import compile_failure

    if not ctx.compile_model:
        return ""
    why = compile_failure(exc)
    if why and callback.steps_done:
        # A recompile later in the run (a new batch shape) failed: the run fails with a clear line;
        # resuming with compile off continues from the last checkpoint.
        from core.errors import TrainingError

        raise TrainingError(f"torch.compile failed at step {callback.step} ({why})",
                            "resume it with compile off from its last checkpoint (modelforge train --resume "
                            "RUN_ID --compile off), or, with no checkpoint yet, start it again with compile: off") from exc
    return why


def _precision_line(ctx: TrainContext) -> str:
    """One line for the events: the precision, the device and torch's thread count, and on a CPU
    with precision auto why (the sentence `modelforge hardware` shows)."""
    import torch

    threads = torch.get_num_threads()
    line = f"training on {ctx.device} in {ctx.dtype}, {threads} torch thread{'s' if threads != 1 else ''}"
    if ctx.device == "cpu" and ctx.config.precision == "auto":
        from core.hardware import cpu_precision_reason

        line += f" (precision auto: {cpu_precision_reason(threads=threads, quantization=ctx.config.quantization)[1]})"
    return line


def _compile_plan(ctx: TrainContext, eager_because: str = ""):
    """compile: auto|on|off for this run (core.speed), from the loaded model's size and the data."""
    import torch

    from core.speed import CompilePlan, compile_plan

    if eager_because:
        return CompilePlan(False, f"off ({eager_because})")

    model_config = getattr(ctx.model, "config", None)
    return compile_plan(ctx.config, device=ctx.device, params=sum(p.numel() for p in ctx.model.parameters()),
                        num_layers=int(getattr(model_config, "num_hidden_layers", 0) or 0),
                        train_tokens=_train_tokens(ctx.config, ctx.train_rows), threads=torch.get_num_threads(),
                        dtype=ctx.dtype)


def _finish(ctx: TrainContext, store: RecordStore, events: EventLog, callback: Any, metrics: dict,
            started: float) -> RunResult:
    """After training: a diverged run fails, a stopped one is cancelled (its checkpoint kept), a
    finished one gets its final metrics, its model card and its record (rank 0 only)."""
    config, run_id, run_dir = ctx.config, ctx.run_id, ctx.run_dir
    if callback.nan_loss:
        raise TrainingError("the loss became NaN (not a number): training diverged",
                            "lower learning_rate (e.g. by 10x) or use precision fp32")
    if ctx.stop_event.is_set():
        store.finish_run(run_id, "cancelled", error="stopped by the user; resume to continue")
        events.emit("cancelled", step=callback.step, total_steps=callback.total,
                    message="stopped; a checkpoint was saved", checkpoint=callback.last_checkpoint)
        return RunResult(run_id, "cancelled", str(run_dir))
    metrics = {k: v for k, v in metrics.items() if v is not None}
    metrics["train_runtime_s"] = round(time.time() - started, 2)
    store.add_metrics(run_id, callback.step, {f"final_{k}": v for k, v in metrics.items()})
    # In a multi-process run only rank 0 writes the model card and record (the others return).
    model_id = _write_model(config, ctx, store, run_id, metrics) if distributed.is_main_process() else None
    from core.compare_eval import after_run  # issue 16: base vs tuned on the held-out rows
    from core.train_more import mark_model

    mark_model(run_dir)  # a continuation ("train more"): its card names the run it continues
    evaluation = after_run(ctx, store, events, model_id) if model_id else None
    events.emit("finished", step=callback.step, total_steps=callback.total, metrics=metrics,
                model_id=model_id, model_dir=str(ctx.model_dir), evaluation=evaluation)
    return RunResult(run_id, "completed", str(run_dir), model_id=model_id, metrics=metrics)


def _load_model(provider: Any, config: RunConfig) -> tuple[Any, Any]:
    """The provider's model and tokenizer; any failure to load becomes a ModelLoadError.

    Providers translate the errors they expect (missing folder, offline hub); a corrupt
    weights file or a config that transformers rejects surfaces as whatever the library raised.
    """
    from core.errors import ModelForgeError, ModelLoadError

    from core.data.templates import apply as apply_template

    try:
        model, tokenizer = provider.load(config, for_training=True)
        # the chosen chat template is set on the tokenizer, which is saved with the model
        return model, apply_template(tokenizer, config.chat_template)
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
    from core.records import ModelRecord, new_id

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

