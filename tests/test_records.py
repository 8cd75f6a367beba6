"""Records through SQLModel: transactions, no model for failed runs, crash recovery."""

from __future__ import annotations

import subprocess
import sys

from core.records import SCHEMA_VERSION, ModelRecord, RecordStore, utcnow


def _model(run_id: str) -> ModelRecord:
    return ModelRecord(id=f"model-{run_id}", name="m", base_model="demo", task="text-generation",
                       strategy="sft", provider="huggingface", path="/tmp/x", run_id=run_id, metrics={"eval_loss": 1.5})


def test_completed_run_gets_its_model_in_the_same_transaction(store):
    run = store.create_run("r", {"model": "demo"})
    store.finish_run(run.id, "completed", model=_model(run.id))
    assert store.get_run(run.id).model_id == f"model-{run.id}"
    assert [m.metrics for m in store.list_models()] == [{"eval_loss": 1.5}]


def test_failed_run_never_leaves_a_model_record(store):
    run = store.create_run("r", {})
    store.finish_run(run.id, "failed", error="boom", model=_model(run.id))
    assert store.list_models() == []
    assert store.get_run(run.id).status == "failed"


def test_metric_curves_are_kept(store):
    run = store.create_run("r", {})
    for step, loss in [(1, 3.0), (2, 2.5), (3, 2.0)]:
        store.add_metrics(run.id, step, {"loss": loss, "nan": float("nan")})
    pts = store.metrics(run.id)
    assert [(p.step, p.value) for p in pts if p.name == "loss"] == [(1, 3.0), (2, 2.5), (3, 2.0)]
    assert not any(p.name == "nan" for p in pts)


def test_a_run_whose_process_died_is_marked_interrupted(tmp_path):
    url = f"sqlite:///{tmp_path / 'r.db'}"
    store = RecordStore(url)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    run = store.create_run("r", {})
    store.update_run(run.id, status="running", pid=int(dead.stdout), heartbeat_at=utcnow())
    again = RecordStore(url)  # the next process to open the records
    got = again.get_run(run.id)
    assert got.status == "interrupted" and "resume" in got.error


def test_a_live_run_is_left_alone(tmp_path):
    url = f"sqlite:///{tmp_path / 'r.db'}"
    store = RecordStore(url)
    run = store.create_run("r", {})
    store.update_run(run.id, status="running")  # our own pid: alive
    assert RecordStore(url).get_run(run.id).status == "running"


def test_sqlite_uses_wal_and_schema_version(store):
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    assert store.schema_version() == SCHEMA_VERSION


def test_get_model_by_name_and_delete(store):
    run = store.create_run("r", {})
    store.finish_run(run.id, "completed", model=_model(run.id))
    assert store.get_model("m").id == f"model-{run.id}"
    store.delete_model(f"model-{run.id}")
    assert store.list_models() == []
