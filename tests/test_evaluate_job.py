"""Issue 16: the Models tab's "Evaluate" is a job of the job manager, like training: it waits while a
run trains on the device, reports progress, can be stopped (queued or midway), and records its
result; the Train tab never mistakes it for a run."""

from __future__ import annotations

import pytest

from components.common import AppContext
from components.evaluation_panel import follow, stop_evaluation
from core.config import RunConfig
from core.jobs import JobManager
from core.service import evaluate


def _config(data, **kw) -> RunConfig:
    base = dict(model="demo", dataset=str(data), max_steps=2, batch_size=2, max_length=64, logging_steps=1,
                save_steps=100, validation_split=0.25, learning_rate=1e-3, compare_after_training=False)
    return RunConfig(**{**base, **kw})


@pytest.fixture()
def trained(store, small_alpaca):
    """(job manager, model id) of a short completed run, with its 12 held-out rows."""
    jobs = JobManager(store)
    run_id = jobs.submit(_config(small_alpaca, name="to-evaluate"))
    assert jobs.wait(run_id, timeout=600) == "completed"
    return jobs, store.get_run(run_id).model_id


def test_an_evaluation_waits_for_the_training_run_then_records_its_result(trained, small_alpaca, store):
    jobs, model_id = trained
    busy = jobs.submit(_config(small_alpaca, max_steps=6, name="busy"))
    task = evaluate(jobs, model_id, max_rows=4)
    assert busy in jobs.waiting() or jobs.current == busy
    assert task not in jobs.waiting() and jobs.current != task  # the Train tab sees runs only
    said = list(follow(AppContext(store=store, jobs=jobs), task, poll_s=0.05))
    kinds = [k for k, _ in said]
    assert kinds[-1] == "finished", said
    assert any("run(s) ahead on this device" in text for k, text in said if k == "status"), said
    assert any("evaluating base and tuned" in text for k, text in said if k == "status"), said
    assert jobs.wait(busy, timeout=600) == "completed"
    # one thing on the device at a time: the evaluation's work began after the run ended
    run_end = [e.time for e in jobs.events(busy) if e.type == "finished"][0]
    eval_start = [e.time for e in jobs.events(task) if e.type == "progress"][0]
    assert eval_start >= run_end
    data = said[-1][1]
    assert data["rows"] == 4 and data["model_id"] == model_id and "tuned" in data["summary"]
    recorded = store.evaluations(model_id=model_id)
    assert len(recorded) == 1 and recorded[0].rows == 4
    assert jobs.wait(task, timeout=5) == "completed"


def test_an_evaluation_stopped_while_queued_or_midway_ends_cancelled(trained, small_alpaca, store):
    jobs, model_id = trained
    ctx = AppContext(store=store, jobs=jobs)
    busy = jobs.submit(_config(small_alpaca, max_steps=4, name="busy2"))
    queued = evaluate(jobs, model_id)
    assert jobs.stop(queued)
    assert list(follow(ctx, queued, poll_s=0.05))[-1] == ("cancelled", {"message": "stopped before it started"})
    assert jobs.wait(busy, timeout=600) == "completed"
    assert store.evaluations(model_id=model_id) == []

    # midway: 48 rows are 6 batches of each model; stop at the first progress report
    task = evaluate(jobs, model_id, dataset=str(small_alpaca), max_rows=48)
    for kind, data in follow(ctx, task, poll_s=0.02):
        if kind == "status" and "evaluating" in data:
            jobs.stop(task)
        last = (kind, data)
    assert last[0] == "cancelled" and last[1]["stopped"] is True and last[1]["rows"] < 48, last


def test_bad_bounds_and_unknown_models_are_refused_before_queueing(trained):
    from core.errors import ConfigError, NotFoundError

    jobs, model_id = trained
    with pytest.raises(ConfigError, match="max_rows"):
        evaluate(jobs, model_id, max_rows=0)
    with pytest.raises(NotFoundError):
        evaluate(jobs, "model-nope")
    assert not str(jobs.busy).startswith("task-") and not jobs.waiting()  # nothing was queued


def test_a_run_queued_behind_an_evaluation_is_told_what_holds_the_device(trained, small_alpaca, store, monkeypatch):
    """Not "Run task-... is training": the evaluation, the run whose model it evaluates, and how far it got."""
    import threading

    import core.compare_eval as compare_eval
    from components.train_tab import start_training
    from core.errors import BusyError

    jobs, model_id = trained
    run_of_model = store.get_model(model_id).run_id
    held, release = threading.Event(), threading.Event()
    tick = compare_eval._tick

    def tick_then_hold(progress, done, total, what):  # the real evaluation, held at its first batch
        tick(progress, done, total, what)
        if not held.is_set():
            held.set()
            release.wait(120)

    monkeypatch.setattr(compare_eval, "_tick", tick_then_hold)
    task = evaluate(jobs, model_id)
    try:
        assert held.wait(300)
        assert jobs.busy == task
        said = start_training(AppContext(store=store, jobs=jobs), _config(small_alpaca, name="behind-eval"))
        assert said["queued"], said
        message = said["message"]
        assert message.startswith(f"An evaluation of run {run_of_model} (to-evaluate, on its held-out rows) "
                                  "is running ("), message
        assert "/12 done)" in message and "task-" not in message and "Yours (" in message, message
        # and its status counts the evaluation ahead of it
        from components.train_tab import run_view

        assert run_view(AppContext(store=store, jobs=jobs), said["run_id"]).queue_position == 1
        # Resume says the same (a stopped run with a checkpoint; stopped again before it would train)
        from pathlib import Path

        from components.train_tab import resume_training
        from core.run import create_run

        _, stopped, run_dir = create_run(_config(small_alpaca, name="to-resume"), store)
        (Path(run_dir) / "checkpoints" / "checkpoint-1").mkdir(parents=True)
        (Path(run_dir) / "checkpoints" / "checkpoint-1" / "trainer_state.json").write_text("{}")
        store.finish_run(stopped, "cancelled", error="stopped by the user")
        resumed = resume_training(AppContext(store=store, jobs=jobs), stopped)
        assert resumed["queued"] and f"an evaluation of run {run_of_model}" in resumed["message"], resumed
        assert jobs.stop(stopped)
        # the refusal of a full queue says the same
        jobs.max_queue = 1
        with pytest.raises(BusyError, match=f"an evaluation of run {run_of_model} .* is running"):
            evaluate(jobs, model_id)
    finally:
        release.set()
    assert jobs.wait(task, timeout=600) == "completed"
    assert jobs.wait(said["run_id"], timeout=600) == "completed"


def test_stop_without_an_evaluation_of_this_page_says_so_and_stops_nothing(store):
    """The panel's Stop gets this page's task id (None: it started none); it never reaches another."""
    import threading

    jobs = JobManager(store)
    ctx = AppContext(store=store, jobs=jobs)
    go = threading.Event()
    others = jobs.submit_task(lambda stop, events: {"stopped": stop.is_set()} if go.wait(60) else {}, "another page's")
    assert stop_evaluation(ctx, None) == "No evaluation was started from this page: nothing to stop."
    go.set()
    assert jobs.wait(others, timeout=60) == "completed"  # untouched by that Stop
    assert "already ended" in stop_evaluation(ctx, others)
    mine = jobs.submit_task(lambda stop, events: {"stopped": stop.wait(60)}, "this page's")
    assert stop_evaluation(ctx, mine).startswith("Stopping the evaluation")
    assert jobs.wait(mine, timeout=60) == "cancelled"
