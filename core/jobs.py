"""The job manager: owns the accelerator, runs one training at a time in a worker thread.

Other work on the device (a Models-tab evaluation: two models generating) is a *task* in the same
queue (:meth:`JobManager.submit_task`): it waits for the run training, shows progress as events
and stops the same way, but has no run record, so :attr:`current` and :meth:`waiting` list runs only.

The app builds exactly one (app/services.py) and every browser talks to it, so two browsers
pressing Train get one run and one queued, with a clear message. Pages never hold models;
they ask the manager for the events of a run since an index, which also works after a reload
or from a second browser (the events file is replayed when the run is not in memory).
"""

from __future__ import annotations

import logging
import os
import queue
import sys
import threading
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from core.checks import adjusted, check_config
from core.config import RunConfig
from core.engine import run_training
from core.run import RunResult, create_run, last_checkpoint, resumable  # noqa: F401 (last_checkpoint: re-exported)
from core.errors import BusyError, ModelForgeError, NotFoundError
from core.events import TERMINAL, Event, EventLog, read_events

if TYPE_CHECKING:  # SQLAlchemy loads with the record store, not at start-up (issue 18)
    from core.records import RecordStore

log = logging.getLogger("modelforge.jobs")


# Finished runs whose events stay in memory (older ones are replayed from their events.jsonl):
# an app that trains for weeks must not keep every event of every run.
KEEP_FINISHED_LOGS = 16


def trainer_nice() -> int:
    """How much lower the trainer thread's CPU priority is than the app's (``MODELFORGE_TRAINER_NICE``,
    default 10; 0 keeps it equal)."""
    raw = os.environ.get("MODELFORGE_TRAINER_NICE", "10")
    try:
        return max(0, min(19, int(raw)))
    except ValueError:
        log.warning("MODELFORGE_TRAINER_NICE=%r is not a whole number from 0 to 19: using 10", raw)
        return 10


def lower_thread_priority(nice: int) -> bool:
    """Lower the calling thread's CPU priority by ``nice`` (Linux, where niceness is per thread).

    Why: on a CPU-only machine the trainer keeps every core busy, and the web server's threads
    would wait behind it for each request. Threads the trainer starts afterwards (torch's OpenMP
    workers, accelerate's processes) inherit the niceness, so training still gets every idle
    cycle while a click or a status poll is served first. Elsewhere it does nothing (on macOS a
    thread id is not a process id). Returns whether the priority was changed.
    """
    if nice <= 0 or not sys.platform.startswith("linux"):
        return False
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + nice))
        return True
    except OSError:  # a sandbox may forbid it: train at the normal priority
        return False


def _same_run(a: dict, b: dict) -> bool:
    """Two configs that would train the same thing (the name does not count)."""
    return {k: v for k, v in a.items() if k != "name"} == {k: v for k, v in b.items() if k != "name"}


# A task's work: called with (stop event, event log) on the worker; returns the data of its
# "finished" event. It emits "progress" events itself.
TaskWork = Callable[[threading.Event, EventLog], dict]


@dataclass
class _Job:
    config: RunConfig | None
    run_id: str
    run_dir: Path | None
    resume_from: str | None = None
    work: TaskWork | None = None  # a task (not a training run): what to do
    # Set by the worker once the job is over *and* the device slot is free again (after its last
    # event): what :meth:`JobManager.wait` waits for, so a caller that waits and then submits is
    # never told the device is busy with the job it waited for.
    done: threading.Event = field(default_factory=threading.Event)


class JobManager:
    """Args:
        store: the record store.
        max_queue: how many runs may wait behind the running one (0: refuse when busy).
    """

    def __init__(self, store: RecordStore, max_queue: int = 4):
        self.store = store
        self.max_queue = max_queue
        self._queue: "queue.Queue[_Job]" = queue.Queue()
        self._logs: dict[str, EventLog] = {}
        self._stops: dict[str, threading.Event] = {}
        self._results: dict[str, RunResult] = {}
        self._current: str | None = None
        self._waiting: list[str] = []
        self._configs: dict[str, dict] = {}  # run id -> config, while queued or running
        self._finished: list[str] = []       # run ids whose events are still in memory, oldest first
        self._tasks: set[str] = set()         # ids of tasks queued or running (not runs)
        self._done: dict[str, threading.Event] = {}  # job id -> its _Job.done (the latest enqueue)
        self._what: dict[str, str] = {}       # task id -> what it is ("an evaluation of run X"), for messages
        self._lock = threading.Lock()
        self._worker: threading.Thread | None = None

    # -- submitting ---------------------------------------------------------------------------------
    def submit(self, config: RunConfig, checked: bool = False) -> str:
        """Validate, record and enqueue a run; return its id.

        Args:
            config: the run config.
            checked: the caller ran the pre-flight check on it and passes the adjusted config
                (:func:`core.service.start`): it is not validated again.

        Raises:
            ConfigError: the config is invalid (nothing is recorded).
            BusyError: a run is training and the queue is full, or the same configuration is
                already training or waiting (two browsers pressing Start at once, a double click).
                This is the one duplicate-run check.
        """
        if not checked:
            config = adjusted(check_config(config))
        with self._lock:  # check and enqueue as one step: concurrent submits cannot both pass
            if self._current and len(self._waiting) >= self.max_queue:
                raise BusyError(
                    f"{self._holding(self._current)} and {len(self._waiting)} more are waiting",
                    "wait for it to finish or stop it; one run trains at a time per device")
            wanted = config.to_dict()
            for rid, active in self._configs.items():
                if _same_run(active, wanted):
                    state = "training" if rid == self._current else "waiting to train"
                    raise BusyError(f"this configuration is already {state} as run {rid}",
                                    "watch it in the Train tab, or stop it first")
            config, run_id, run_dir = create_run(config, self.store)
            self._configs[run_id] = wanted
            self._enqueue(_Job(config, run_id, run_dir))
        return run_id

    def resume(self, run_id: str) -> str:
        """Continue a cancelled/interrupted/failed run from its last checkpoint.

        Raises:
            NotFoundError: no such run. ModelForgeError: nothing to resume from.
        """
        config, run_dir, ckpt = resumable(self.store, run_id)
        with self._lock:
            if self._current and len(self._waiting) >= self.max_queue:
                raise BusyError(self._holding(self._current), "wait for it to finish or stop it")
            self.store.update_run(run_id, status="queued", error=None, finished_at=None)
            self._configs[run_id] = config.to_dict()
            self._enqueue(_Job(config, run_id, run_dir, resume_from=ckpt))
        return run_id

    def train_more(self, run_id: str, steps: int = 0, epochs: float = 0.0) -> str:
        """Queue the continuation of a completed run (issue 16, core.train_more); its new run id.

        Raises:
            ModelForgeError: not completed, no checkpoint, nothing more asked; BusyError: queue full.
        """
        from core.train_more import prepare_more

        with self._lock:
            if self._current and len(self._waiting) >= self.max_queue:
                raise BusyError(self._holding(self._current), "wait for it to finish or stop it")
            config, new_id, run_dir, ckpt = prepare_more(self.store, run_id, steps=steps, epochs=epochs)
            self._configs[new_id] = config.to_dict()
            self._enqueue(_Job(config, new_id, run_dir, resume_from=ckpt))
        return new_id

    def submit_task(self, work: TaskWork, what: str) -> str:
        """Queue other work on the device (an evaluation) behind the runs already queued; its id.
        Follow it with :meth:`events` ("queued", "progress", then "finished"/"failed"/"cancelled"),
        stop it with :meth:`stop`. ``what`` names it in messages ("an evaluation of run X"): a run
        queued behind it is told that, not a task id (:meth:`holding`).

        Raises:
            BusyError: a run is training and the queue is full.
        """
        from core.records import new_id

        with self._lock:
            if self._current and len(self._waiting) >= self.max_queue:
                raise BusyError(f"{self._holding(self._current)} and {len(self._waiting)} more jobs are waiting",
                                "wait for them to finish, or stop one")
            task_id = new_id("task")
            self._tasks.add(task_id)
            self._what[task_id] = what
            self._enqueue(_Job(None, task_id, None, work=work))
            self._logs[task_id].emit("log", message=what)
        return task_id

    def _run_task(self, job: _Job, stop: threading.Event) -> None:
        """Run a task; every end is an event (it never raises)."""
        events = self._logs[job.run_id]
        try:
            data = job.work(stop, events) or {}
        except ModelForgeError as exc:
            events.emit("failed", message=exc.message, hint=exc.hint, problems=[p.to_dict() for p in exc.problems])
            return
        except Exception as exc:  # noqa: BLE001 - a task's fault ends the task, not the worker
            log.error("task %s failed:\n%s", job.run_id, traceback.format_exc())
            events.emit("failed", message=f"{type(exc).__name__}: {str(exc)[:300]}", hint="see the log")
            return
        events.emit("cancelled" if stop.is_set() and data.get("stopped", True) else "finished", **data)

    def _enqueue(self, job: _Job) -> None:
        events = EventLog(job.run_id)
        self._logs[job.run_id] = events
        if job.run_id in self._finished:  # resumed: in memory again until it ends
            self._finished.remove(job.run_id)
        self._stops[job.run_id] = threading.Event()
        self._done[job.run_id] = job.done
        position = len(self._waiting) + (1 if self._current else 0)
        events.emit("queued", message=("starting" if position == 0 else
                                       f"waiting: {position} run(s) ahead on this device"))
        self._waiting.append(job.run_id)
        self._queue.put(job)
        if self._worker is None or not self._worker.is_alive():
            self._worker = threading.Thread(target=self._work, name="modelforge-trainer", daemon=True)
            self._worker.start()

    def _work(self) -> None:
        lower_thread_priority(trainer_nice())
        while True:
            try:
                job = self._queue.get(timeout=1.0)
            except queue.Empty:
                with self._lock:
                    if self._queue.empty():
                        self._worker = None
                        return
                continue
            with self._lock:
                self._waiting.remove(job.run_id)
                stop = self._stops.setdefault(job.run_id, threading.Event())
                if stop.is_set():  # stopped while waiting
                    try:
                        if job.work is None:
                            self.store.finish_run(job.run_id, "cancelled", error="stopped before it started")
                    except Exception:  # noqa: BLE001 - the worker must survive a database hiccup
                        log.error("could not record the cancel of %s:\n%s", job.run_id, traceback.format_exc())
                    self._logs[job.run_id].emit("cancelled", message="stopped before it started")
                    self._retire(job.run_id)
                    job.done.set()
                    continue
                self._current = job.run_id
            try:
                if job.work is not None:
                    self._run_task(job, stop)
                    continue
                result = run_training(job.config, self.store, self._logs[job.run_id], job.run_id,
                                      job.run_dir, stop_event=stop, resume_from=job.resume_from, long_lived=True)
                self._results[job.run_id] = result
            except Exception:  # noqa: BLE001 - run_training never raises; belt and braces
                log.error("worker fault:\n%s", traceback.format_exc())
            finally:
                with self._lock:
                    self._current = None
                    if job.run_id not in self._waiting:  # not resumed again in the meantime
                        self._retire(job.run_id)
                    job.done.set()  # last: the slot is free before a waiter hears the job is over

    def _retire(self, run_id: str) -> None:
        """A run ended: forget its config and stop flag; keep its events for the last few runs."""
        self._configs.pop(run_id, None)
        self._stops.pop(run_id, None)
        self._tasks.discard(run_id)
        self._finished.append(run_id)
        while len(self._finished) > KEEP_FINISHED_LOGS:
            old = self._finished.pop(0)
            self._logs.pop(old, None)
            self._results.pop(old, None)
            self._done.pop(old, None)
            self._what.pop(old, None)

    # -- controlling --------------------------------------------------------------------------------
    def stop(self, run_id: str) -> bool:
        """Ask a run to stop (graceful: it saves a checkpoint). False if it is not active."""
        ev = self._stops.get(run_id)
        if ev is None or run_id not in (self._current, *self._waiting):
            return False
        ev.set()
        return True

    # -- observing ----------------------------------------------------------------------------------
    @property
    def current(self) -> str | None:
        """The run training now (None while the device is idle or runs a task)."""
        current = self._current
        return None if current in self._tasks else current

    @property
    def busy(self) -> str | None:
        """What holds the device now: a run or a task id (None: idle)."""
        return self._current

    def holding(self, job_id: str | None = None) -> str:
        """What holds (or will hold) the device, as a sentence for a busy message: "run X is
        training", or for a task "an evaluation of run X is running (12/48 done)" with its last
        progress. ``job_id``: default the job on the device now."""
        with self._lock:
            return self._holding(job_id or self._current)

    def _holding(self, job_id: str | None) -> str:
        if job_id is None:
            return "nothing is running on this device"
        now = job_id == self._current
        name = self._what.get(job_id, f"task {job_id}") if job_id.startswith("task-") else f"run {job_id}"
        if not now and job_id not in self._waiting:  # asked a moment after it ended
            return f"{name} has just ended"
        if not job_id.startswith("task-"):
            return f"{name} is training" if now else f"{name} is about to train"
        text = f"{name} is {'running' if now else 'about to start'}"
        log_ = self._logs.get(job_id)
        last = next((e for e in reversed(log_.since(0)) if e.type == "progress"), None) if log_ else None
        if last is not None and last.total_steps:
            text += f" ({last.step}/{last.total_steps} done)"
        elif last is not None and last.data.get("message"):
            text += f" ({last.data['message']})"
        return text

    def waiting(self) -> list[str]:
        """The runs waiting (not the tasks)."""
        return [j for j in self._waiting if j not in self._tasks]

    def ahead(self, run_id: str) -> tuple[int, str | None]:
        """(how many runs train before ``run_id`` on this device, the one training or next to).

        ``(0, None)``: it is training, about to start, or not active. Read under the manager's
        lock, so that right after :meth:`submit` it tells a queued run from a started one even
        when another start happened at the same moment.
        """
        with self._lock:
            if run_id not in self._waiting:
                return 0, None
            ahead = self._waiting.index(run_id) + (1 if self._current else 0)
            first = self._current or self._waiting[0]
            return ahead, (first if ahead else None)

    def events(self, run_id: str, since: int = 0) -> list[Event]:
        """Events of a run from index ``since``; replays the file for runs not in memory."""
        if run_id in self._logs:
            return self._logs[run_id].since(since)
        try:
            run = self.store.get_run(run_id)
        except NotFoundError:
            return []
        return read_events(Path(run.output_dir) / "events.jsonl")[since:]

    def wait(self, run_id: str, timeout: float = 600.0) -> str:
        """Block until the run (or task) is over and the device slot it held is free again; return
        its status (for tests and scripts). A task's status is "completed", "cancelled" or "failed".

        Raises:
            TimeoutError: it did not end within ``timeout`` seconds.
        """
        import time

        deadline = time.time() + timeout
        done = self._done.get(run_id)
        if done is not None:  # queued or run by this manager: the worker says when it is over
            while True:
                if not done.wait(max(0.0, deadline - time.time())):
                    raise TimeoutError(f"run {run_id} did not finish within {timeout} s")
                again = self._done.get(run_id)
                if again is None or again is done:
                    break
                done = again  # resumed while it ended: wait for that attempt too
            if run_id.startswith("task-"):  # a task has no record: its last event says
                ended = [e.type for e in self._logs[run_id].events if e.type in TERMINAL]
                return {"finished": "completed"}.get(ended[-1], ended[-1])
            return self.store.get_run(run_id).status
        # Not in memory (recorded by an earlier process, or long finished): the record says.
        while time.time() < deadline:
            status = self.store.get_run(run_id).status
            if status not in ("queued", "running"):
                return status
            time.sleep(0.5)
        raise TimeoutError(f"run {run_id} did not finish within {timeout} s")
