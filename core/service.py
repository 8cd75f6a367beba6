"""Starting a run from a form or an API call: the pre-flight check once, then the job manager.

One Start press runs the config validation, the memory estimate and the duplicate-run check
once each: :func:`start` runs :func:`core.checks.run_checks` (validation, plugin adjustments,
data, one memory estimate shared by the memory and disk checks) and hands the adjusted config
to :meth:`core.jobs.JobManager.submit` with ``checked=True``, whose lock holds the one
duplicate check (tests/test_engine.py counts the calls).
"""

from __future__ import annotations

from dataclasses import dataclass

from core.checks import MemoryCheck, run_checks
from core.config import RunConfig
from core.errors import ConfigError
from core.jobs import JobManager


@dataclass
class Started:
    """A submitted run: its id, where it stands in the queue, and the memory estimate it passed."""

    run_id: str
    position: int            # runs ahead of it on this device (0: training now)
    behind: str | None       # the run training (or next) when it waits
    memory: MemoryCheck


def start(jobs: JobManager, config: RunConfig) -> Started:
    """Check ``config`` once and submit it.

    Raises:
        ConfigError: every problem with the config and its data (nothing is recorded).
        BusyError: the same configuration is already training or waiting, or the queue is full.
    """
    checked = run_checks(config)
    if checked.problems:
        raise ConfigError(f"{len(checked.problems)} problem(s) must be fixed before training",
                          "fix them in Configure/Dataset (Check configuration lists them too)",
                          problems=checked.problems)
    run_id = jobs.submit(checked.config, checked=True)
    # Asked after submitting, of the manager itself: two Starts at the same moment must not both
    # read "nothing is training" and both say "started".
    position, behind = jobs.ahead(run_id)
    return Started(run_id, position, behind, checked.memory)


def evaluate(jobs: JobManager, model_id: str, *, dataset: str | None = None, max_rows: int | None = None,
             max_new_tokens: int | None = None) -> str:
    """Queue a base-vs-tuned evaluation of a recorded model (issue 16) on the device's one queue:
    it waits for the run training, reports "progress" events, can be stopped
    (``jobs.stop(task_id)``, after the current batch: what was done is kept), and records its
    Evaluation. Returns the task id; follow it with ``jobs.events(task_id)``.

    Raises:
        NotFoundError: no such model. ModelForgeError: bounds out of range. BusyError: queue full.
    """
    from core.limits import int_in_range

    record = jobs.store.get_model(model_id)
    # Refused here, in the request, not minutes later in the queue.
    if max_rows is not None:
        max_rows = int_in_range(max_rows, "max_rows", 1, 100_000)
    if max_new_tokens is not None:
        max_new_tokens = int_in_range(max_new_tokens, "max_new_tokens", 1, 2048)

    def work(stop, events) -> dict:
        from core.compare_eval import evaluate_model

        def progress(done: int, total: int, message: str) -> None:
            events.emit("progress", step=done, total_steps=total, message=message)

        events.emit("progress", message="loading the model and its base")
        result = evaluate_model(record.path, dataset=dataset or None, max_rows=max_rows,
                                max_new_tokens=max_new_tokens, store=jobs.store, model_id=record.id,
                                progress=progress, stop_event=stop)
        return {"model_id": record.id, "summary": result.summary(), "limits": result.limits,
                "seconds": result.seconds, "stopped": result.stopped, "rows": result.rows}

    # Named by its run: a run queued behind it is told "an evaluation of run X is running".
    source = f"run {record.run_id}" if record.run_id else f"model {record.name}"
    return jobs.submit_task(work, f"an evaluation of {source} ({record.name}, "
                                  + (f"on {dataset})" if dataset else "on its held-out rows)"))
