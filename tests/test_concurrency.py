"""Concurrency: one device, many browsers and clients, one SQLite file.

- Two starts at the same moment (threads calling the Train tab's start handler, and two
  gradio_client clients calling ``/start_training``) give one run and one clear refusal or
  queue place, never two runs training.
- 20 gradio_client clients polling ``/training_status`` while a run trains all get answers.
- Threads deleting and listing models (the Models tab's handlers, and a second store on the
  same file, as a CLI process would hold) leave the records consistent: SQLite's
  ``integrity_check`` is ok, each model is deleted exactly once, files and records agree.
"""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

import pytest

from components.common import AppContext
from core.config import RunConfig
from core.errors import BusyError, ModelForgeError, NotFoundError
from core.jobs import JobManager
from core.paths import EXAMPLES, home
from core.records import ModelRecord, RecordStore, new_id
from tests.helpers import served_app


def _config(**kw) -> RunConfig:
    base = dict(model="demo", dataset=str(EXAMPLES / "identity.json"), max_steps=3, batch_size=2, max_length=64,
                logging_steps=1, save_steps=100, validation_split=0.0, learning_rate=1e-3)
    base.update(kw)
    return RunConfig(**base)


def _together(n: int, fn) -> list:
    """Run fn(i) in n threads released at the same instant; return each result or exception."""
    barrier = threading.Barrier(n)
    results: list = [None] * n

    def worker(i):
        barrier.wait()
        try:
            results[i] = fn(i)
        except Exception as exc:  # noqa: BLE001 - collected for the assertions
            results[i] = exc

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return results


@pytest.fixture()
def ctx(tmp_path):
    store = RecordStore(f"sqlite:///{tmp_path / 'c.db'}")
    return AppContext(store=store, jobs=JobManager(store))


def _drain(ctx, run_ids) -> None:
    for rid in run_ids:
        ctx.jobs.stop(rid)
    for rid in run_ids:
        ctx.jobs.wait(rid, timeout=120)


# -- two starts at once --------------------------------------------------------------------------------
def test_two_identical_starts_at_once_give_one_run_and_one_refusal(ctx, demo_model):
    from components.train_tab import start_training

    results = _together(2, lambda i: start_training(ctx, _config(name="same")))
    started = [r for r in results if isinstance(r, dict)]
    refused = [r for r in results if isinstance(r, BusyError)]
    assert len(started) == 1 and len(refused) == 1, results
    assert "already" in str(refused[0]) and started[0]["run_id"] in str(refused[0])
    assert [r.id for r in ctx.store.list_runs()] == [started[0]["run_id"]]
    _drain(ctx, [started[0]["run_id"]])


def test_two_different_starts_at_once_give_one_run_and_one_queued(ctx, demo_model):
    from components.train_tab import start_training

    results = _together(2, lambda i: start_training(ctx, _config(name=f"run{i}", seed=i, max_steps=30)))
    assert all(isinstance(r, dict) for r in results), results
    ids = [r["run_id"] for r in results]
    assert len(set(ids)) == 2
    # The device trains one of them; the other waits behind it with a message that says so.
    deadline = time.time() + 60
    while ctx.jobs.current is None and time.time() < deadline:
        time.sleep(0.05)
    current = ctx.jobs.current
    assert current in ids and ctx.jobs.waiting() == [i for i in ids if i != current]
    waiting = next(i for i in ids if i != current)
    assert "waiting: 1 run(s) ahead" in ctx.jobs.events(waiting)[0].data["message"]
    assert [r for r in results if r["queued"]], (
        "both starts were told 'started' although one of them waits in the queue", results)
    _drain(ctx, ids)
    assert sorted(ctx.store.get_run(i).status for i in ids) == ["cancelled", "cancelled"]


def test_the_job_manager_never_trains_two_runs_at_once(ctx, demo_model, monkeypatch):
    """Five submits at once: at every moment at most one run_training is active."""
    import core.jobs as jobs_mod

    active, peak, lock = [0], [0], threading.Lock()
    real = jobs_mod.run_training

    def counting(*args, **kwargs):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        try:
            return real(*args, **kwargs)
        finally:
            with lock:
                active[0] -= 1

    monkeypatch.setattr(jobs_mod, "run_training", counting)
    ids = _together(5, lambda i: ctx.jobs.submit(_config(name=f"r{i}", seed=i, max_steps=2)))
    assert all(isinstance(i, str) for i in ids), ids
    for rid in ids:
        assert ctx.jobs.wait(rid, timeout=180) == "completed"
    assert peak[0] == 1
    assert ctx.store.consistency_problems() == []


def test_a_resume_in_the_instant_a_run_ends_is_not_lost(ctx, monkeypatch):
    """A client resumes a run between its 'cancelled' record and the worker's bookkeeping."""
    import core.jobs as jobs_mod
    from core.engine import RunResult

    calls = []

    def fake_training(config, store, events, run_id, run_dir, stop_event=None, resume_from=None, **kwargs):
        calls.append(resume_from)
        store.mark_running(run_id, resumed=resume_from is not None)
        if len(calls) == 1:
            ckpt = Path(run_dir) / "checkpoints" / "checkpoint-1"
            ckpt.mkdir(parents=True)
            (ckpt / "trainer_state.json").write_text("{}")
            store.finish_run(run_id, "cancelled", error="stopped by the user")
            events.emit("cancelled", message="stopped")
            ctx.jobs.resume(run_id)  # the other browser was quick
            return RunResult(run_id, "cancelled", str(run_dir))
        store.finish_run(run_id, "completed")
        events.emit("finished")
        return RunResult(run_id, "completed", str(run_dir))

    monkeypatch.setattr(jobs_mod, "run_training", fake_training)
    run_id = ctx.jobs.submit(_config(name="quick-resume"))
    deadline = time.time() + 30
    while ctx.store.get_run(run_id).status != "completed" and time.time() < deadline:
        time.sleep(0.05)
    assert ctx.store.get_run(run_id).status == "completed" and ctx.store.get_run(run_id).attempts == 2
    assert calls[0] is None and calls[1].endswith("checkpoint-1")


def test_wait_returns_only_once_the_device_slot_is_free(store):
    """wait() then submit must never hear "busy" from the job it waited for. The worker is held
    between the task's last event and freeing the slot (the window the old wait() returned in):
    wait() must still be blocked there, and return once the slot is free."""
    from core.events import TERMINAL

    jobs = JobManager(store, max_queue=0)  # 0: a submit while anything holds the device is refused
    held, release = threading.Event(), threading.Event()

    def work(stop, events):  # a real, short task; its last event holds the worker
        emit = events.emit

        def emit_then_hold(kind, **data):
            emit(kind, **data)
            if kind in TERMINAL:
                held.set()
                release.wait(60)

        events.emit = emit_then_hold
        return {"rows": 0}

    task = jobs.submit_task(work, "a short task")
    waited: list = []
    waiter = threading.Thread(target=lambda: waited.append((jobs.wait(task, timeout=60), jobs.busy)))
    waiter.start()
    assert held.wait(60)
    # Not a timing check of the fix: the old wait() returned here within milliseconds; the fixed
    # one blocks until the slot is free, however long this join waits.
    waiter.join(2)
    assert waiter.is_alive() and waited == [], f"wait() returned while the task still held the device: {waited}"
    release.set()
    waiter.join(60)
    assert waited == [("completed", None)]
    # and waiting then submitting straight away finds the device free, every time
    for i in range(5):
        nxt = jobs.submit_task(lambda stop, events: {"i": i}, f"task {i}")
        assert jobs.wait(nxt, timeout=60) == "completed" and jobs.busy is None
    assert jobs.holding(nxt) == "task 4 has just ended"  # a busy message asked a moment too late


# -- the running app -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def app(tmp_path_factory, demo_model):
    with served_app(tmp_path_factory.mktemp("concapi") / "records.db") as (running, services):
        yield running.url, services


def test_two_clients_start_at_once_through_the_api(app):
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    url, services = app
    clients = [Client(url, verbose=False) for _ in range(2)]
    try:
        cfg = {"max_steps": 3, "batch_size": 2, "max_length": 64, "save_steps": 100, "name": "api-twice"}
        results = _together(2, lambda i: clients[i].predict(config=cfg, api_name="/start_training"))
        started = [r for r in results if isinstance(r, dict)]
        refused = [r for r in results if isinstance(r, AppError)]
        assert len(started) == 1 and len(refused) == 1, results
        assert "already" in str(refused[0])
        run_id = started[0]["run_id"]
        assert services.jobs.wait(run_id, timeout=120) == "completed"
        assert [r["id"] for r in clients[0].predict(api_name="/list_runs")] == [run_id]
    finally:
        for c in clients:
            c.close()


def test_twenty_clients_poll_status_during_a_run(app):
    from gradio_client import Client

    url, services = app
    clients = [Client(url, verbose=False) for _ in range(20)]
    try:
        started = clients[0].predict(config={"max_steps": 400, "batch_size": 2, "max_length": 64, "save_steps": 1000,
                                             "logging_steps": 1, "name": "polled"}, api_name="/start_training")
        run_id = started["run_id"]
        answers: list[list[dict]] = [[] for _ in clients]
        errors: list[str] = []
        t0 = time.time()
        trained = threading.Event()  # polling goes on for 8 s, and until the run has made a step

        def poll(i):
            while (time.time() < t0 + 8 or not trained.is_set()) and time.time() < t0 + 120:
                try:
                    answer = clients[i].predict(run_id=run_id, api_name="/training_status")
                    answers[i].append(answer)
                    if answer["step"] > 0:
                        trained.set()
                except Exception as exc:  # noqa: BLE001
                    errors.append(f"client {i}: {type(exc).__name__}: {exc}")
                time.sleep(0.05)

        _together(20, poll)
        assert errors == []
        assert all(len(a) >= 2 for a in answers), [len(a) for a in answers]
        for a in answers:
            assert all(s["run_id"] == run_id and s["status"] in ("queued", "running") for s in a)
            steps = [s["step"] for s in a]
            assert steps == sorted(steps)  # progress never goes backwards for a reader
        assert max(a[-1]["step"] for a in answers) > 0  # it really trained while being polled
        total = sum(len(a) for a in answers)
        print(f"\n20 clients: {total} status answers in {time.time() - t0:.0f} s, 0 errors")
        clients[0].predict(run_id=run_id, api_name="/stop_training")
        assert services.jobs.wait(run_id, timeout=120) == "cancelled"
    finally:
        for c in clients:
            c.close()


# -- concurrent deletes and lists ---------------------------------------------------------------------------
def _make_models(store: RecordStore, n: int) -> list[tuple[str, Path]]:
    made = []
    for i in range(n):
        run = store.create_run(f"m{i}", {"i": i}, output_dir=str(home() / "runs" / f"conc-{i}"))
        folder = home() / "runs" / f"conc-{i}" / "model"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "adapter_model.safetensors").write_bytes(b"x" * 1000)
        model_id = new_id("model") + f"-{i}"
        store.add_metrics(run.id, 1, {"loss": 1.0 + i})
        store.finish_run(run.id, "completed", model=ModelRecord(
            id=model_id, name=f"m{i}", base_model="demo", task="text-generation", strategy="sft",
            provider="huggingface", path=str(folder), run_id=run.id))
        made.append((model_id, folder))
    return made


def test_concurrent_deletes_and_lists_keep_the_records_consistent(tmp_path):
    from components.models_tab import delete_model, list_models

    url = f"sqlite:///{tmp_path / 'shared.db'}"
    app_store, cli_store = RecordStore(url), RecordStore(url)  # the app and a CLI process, one file
    ctx = AppContext(store=app_store, jobs=JobManager(app_store))
    made = _make_models(app_store, 40)
    ids = [m for m, _ in made]
    deleted: list[str] = []
    errors: list[str] = []
    lock = threading.Lock()

    def browser(i):
        rnd = random.Random(i)
        for _ in range(15):
            model_id = rnd.choice(ids)
            try:
                delete_model(ctx, model_id, confirm=True)
                with lock:
                    deleted.append(model_id)
            except NotFoundError:
                pass  # someone else deleted it first: told so, nothing else happens
            except ModelForgeError as exc:
                errors.append(f"delete: {exc}")
            except Exception as exc:  # noqa: BLE001
                errors.append(f"delete: {type(exc).__name__}: {exc}")
            try:
                listed = list_models(ctx)
                assert all(m["run_id"] for m in listed)
                cli_store.list_runs()
            except Exception as exc:  # noqa: BLE001
                errors.append(f"list: {type(exc).__name__}: {exc}")

    def trainer(i):
        """Meanwhile a run trains: heartbeats, metric points, then it ends."""
        run = cli_store.create_run(f"live{i}", {})
        cli_store.mark_running(run.id)
        for step in range(40):
            try:
                cli_store.heartbeat(run.id, step=step)
                cli_store.add_metrics(run.id, step, {"loss": 2.0})
            except Exception as exc:  # noqa: BLE001
                errors.append(f"train: {type(exc).__name__}: {exc}")
        cli_store.finish_run(run.id, "cancelled")

    results = _together(10, lambda i: browser(i) if i < 8 else trainer(i))
    assert not [r for r in results if isinstance(r, Exception)], results
    assert errors == []
    assert len(deleted) == len(set(deleted)), "a model was deleted twice"
    remaining = {m.id for m in cli_store.list_models()}
    assert remaining == set(ids) - set(deleted)
    for model_id, folder in made:
        assert folder.exists() == (model_id in remaining), model_id  # files and records agree
    with app_store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA integrity_check").scalar() == "ok"
    assert app_store.consistency_problems() == []
    runs = cli_store.list_runs()
    assert len(runs) == 40 + 2
    assert sum(1 for r in runs if r.model_id) == len(remaining)
    assert len([p for p in cli_store.metrics(runs[0].id)]) in (1, 40)  # every point of a run kept


@pytest.mark.skipif(not __import__("sys").platform.startswith("linux"), reason="per-thread niceness is Linux's")
def test_the_trainer_thread_runs_at_a_lower_cpu_priority_than_the_app(ctx, monkeypatch):
    """While a run trains on the CPU the web server's threads must be served first: the trainer
    thread (and the OpenMP workers it starts) runs niced; the app's own threads keep theirs."""
    import os

    import core.jobs as jobs_mod

    seen = {}

    def fake_training(config, store, events, run_id, run_dir, **kwargs):
        tid = threading.get_native_id()
        seen["trainer"] = os.getpriority(os.PRIO_PROCESS, tid)
        store.finish_run(run_id, "completed")
        events.emit("finished", status="completed")

    monkeypatch.setattr(jobs_mod, "run_training", fake_training)
    monkeypatch.setenv("MODELFORGE_TRAINER_NICE", "7")
    before = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    rid = ctx.jobs.submit(_config(name="niced", max_steps=1))
    ctx.jobs.wait(rid, timeout=60)
    assert seen["trainer"] == min(19, before + 7)
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == before  # only that thread
    assert jobs_mod.lower_thread_priority(0) is False
    monkeypatch.setenv("MODELFORGE_TRAINER_NICE", "high")  # a typo: the default, and a warning in the log
    assert jobs_mod.trainer_nice() == 10
