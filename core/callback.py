"""The bridge from transformers' Trainer to ModelForge's events and records.

A ``TrainerCallback`` turns the trainer's logs into typed events (step, eval, checkpoint),
stores the metric curves, beats the run's heartbeat, and carries the user's stop request into
the trainer: ``should_training_stop`` plus ``should_save``, so stopping keeps a checkpoint.

In a multi-process run (core/distributed.py) every rank has one: only the main process (world
rank 0) emits events and writes metrics and heartbeats, and all ranks agree after each step on
whether to stop (the user's Stop reaches them as the run's stop file), so they stop together.
"""

from __future__ import annotations

import math
import os
import threading
import time

from transformers import TrainerCallback

from core.events import EventLog
from core.records import RecordStore

HEARTBEAT_EVERY_S = 5.0


def memory_in_use_mb() -> float:
    """The memory a step needed: on CUDA the allocator's peak since the previous report (what a run
    must stay under, and what the memory estimate predicts), else the process's resident memory."""
    import torch

    if torch.cuda.is_available():
        peak = torch.cuda.max_memory_allocated() / 2**20
        torch.cuda.reset_peak_memory_stats()
        return peak
    import psutil

    return psutil.Process(os.getpid()).memory_info().rss / 2**20


def _main(state) -> bool:
    """Whether this process reports: world rank 0 (the only one, outside multi-process runs)."""
    return getattr(state, "is_world_process_zero", True)


class EventCallback(TrainerCallback):
    def __init__(self, events: EventLog, store: RecordStore, run_id: str, stop_event: threading.Event):
        self.events = events
        self.store = store
        self.run_id = run_id
        self.stop_event = stop_event
        self.step = 0
        self.total = 0
        self.t0 = time.time()
        self.last_beat = 0.0
        self.last_tokens: tuple[float, float] | None = None  # (time, tokens seen)
        self.last_checkpoint: str | None = None
        self.nan_loss = False
        self.compile_s = 0.0  # expected torch.compile time before the first step (0: eager)
        self.steps_done = 0  # steps finished in this attempt (a compile failure before any: train eager)

    def on_train_begin(self, args, state, control, **kwargs):
        self.total = state.max_steps
        self.t0 = time.time()
        self.step = state.global_step
        if not _main(state):
            return
        self.store.heartbeat(self.run_id, step=state.global_step, total=state.max_steps)
        self.events.emit("log", step=state.global_step, total_steps=self.total,
                         message=f"training for {self.total} steps")
        if self.compile_s and state.global_step < self.total:
            # The first step holds the compile: say so, or a minute without a step looks like a hang.
            self.events.emit("log", step=state.global_step, total_steps=self.total,
                             message=f"compiling, ~{self.compile_s:.0f} s before the first step (torch.compile; "
                                     "the first batch of a new length compiles once more)",
                             compiling=round(self.compile_s))

    def on_step_end(self, args, state, control, **kwargs):
        self.step = state.global_step
        self.steps_done += 1
        now = time.time()
        if _main(state) and now - self.last_beat > HEARTBEAT_EVERY_S:
            self.last_beat = now
            self.store.heartbeat(self.run_id, step=state.global_step)
        if self._stop_requested(args):
            self.stop_event.set()  # the engine ends the run as cancelled, on every rank
            control.should_training_stop = True
            control.should_save = True  # graceful stop keeps a checkpoint to resume from
        return control

    def _stop_requested(self, args) -> bool:
        """This process's stop event or, in a launched worker, the run's stop file; OR-ed over all
        ranks (a no-op for one process), so that every rank stops after the same step."""
        from core.distributed import agree, stop_file_present

        return agree(self.stop_event.is_set() or stop_file_present(), getattr(args, "device", None))

    def on_train_end(self, args, state, control, **kwargs):
        self.step = state.global_step
        if _main(state):
            self.store.heartbeat(self.run_id, step=state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = dict(logs or {})
        step = state.global_step
        if any(k.startswith("eval_") for k in logs):
            return  # reported by on_evaluate
        if "loss" not in logs:
            return
        loss = float(logs["loss"])
        if math.isnan(loss) or math.isinf(loss):
            self.nan_loss = True  # on every rank: the logged loss is the mean over all of them
            control.should_training_stop = True
        if not _main(state):
            return control
        now = time.time()
        tokens = logs.get("num_tokens") or logs.get("num_input_tokens_seen")
        tps = None
        if tokens is not None:
            if self.last_tokens is not None and now > self.last_tokens[0]:
                tps = (float(tokens) - self.last_tokens[1]) / (now - self.last_tokens[0])
            self.last_tokens = (now, float(tokens))
        elapsed = now - self.t0
        done = max(step, 1)
        eta = elapsed / done * max(self.total - step, 0) if self.total else None
        values = {"loss": loss, "learning_rate": logs.get("learning_rate"), "grad_norm": logs.get("grad_norm"),
                  "tokens_per_second": tps, "memory_mb": memory_in_use_mb(), "epoch": logs.get("epoch")}
        values = {k: (float(v) if v is not None else None) for k, v in values.items()}
        self.store.add_metrics(self.run_id, step, {k: v for k, v in values.items() if v is not None})
        self.events.emit("step", step=step, total_steps=self.total, eta_s=eta, elapsed_s=elapsed, **values)
        return control

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        """Store and emit every quality metric of an evaluation (eval_loss, eval_rouge1, eval_f1,
        eval_rewards/accuracies, ...). Perplexity is added for a plain language-model evaluation
        (eval_loss alone), or taken from eval_perplexity when the strategy computed it; a
        preference or span loss has no perplexity worth showing."""
        from core.evaluation import perplexity, quality_metrics

        values = {k: v for k, v in quality_metrics(dict(metrics or {})).items() if k.startswith("eval_")}
        if not values or not _main(state):
            return
        if "eval_perplexity" in values:
            values["perplexity"] = values.pop("eval_perplexity")
        elif set(values) == {"eval_loss"}:
            values["perplexity"] = perplexity(values["eval_loss"])
        self.store.add_metrics(self.run_id, state.global_step, values)
        self.events.emit("eval", step=state.global_step, total_steps=self.total, **values)

    def on_save(self, args, state, control, **kwargs):
        path = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        self.last_checkpoint = path
        if _main(state):
            self.events.emit("checkpoint", step=state.global_step, total_steps=self.total, path=path)
