"""Records in PostgreSQL: the same RecordStore, schema and guarantees as on SQLite.

Runs against a real server named by MODELFORGE_TEST_POSTGRES_URL (CI starts one with
``eval "$(.ci/postgres.sh start)"``); each test gets a fresh database whose default time zone is
not UTC, so a datetime stored in the wrong zone shows. Without the variable the tests skip and
say why; with MODELFORGE_REQUIRE_POSTGRES=1 (CI) a missing server is a failure instead.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from datetime import timedelta
from pathlib import Path

import pytest

from core.records import ModelRecord, RecordStore, SCHEMA_VERSION, postgres_engine_args, utcnow

ROOT = Path(__file__).resolve().parents[1]
URL_ENV = "MODELFORGE_TEST_POSTGRES_URL"


def test_postgresql_urls_get_the_installed_driver_and_utc_sessions():
    url, kwargs = postgres_engine_args("postgresql://u:p@db.example:5432/mf")
    assert url == "postgresql+psycopg://u:p@db.example:5432/mf"
    assert kwargs["pool_pre_ping"] and kwargs["connect_args"] == {"options": "-c timezone=UTC"}
    assert postgres_engine_args("postgres://u@h/mf")[0] == "postgresql+psycopg://u@h/mf"
    assert postgres_engine_args("postgresql+psycopg2://u@h/mf")[0] == "postgresql+psycopg2://u@h/mf"
    assert "connect_args" not in postgres_engine_args("postgresql+pg8000://u@h/mf")[1]  # no libpq options


@pytest.fixture(scope="module")
def server_url() -> str:
    url = os.environ.get(URL_ENV)
    why = None
    if not url:
        why = (f"no PostgreSQL server: set {URL_ENV} to run these tests "
               '(eval "$(.ci/postgres.sh start)" starts one on loopback)')
    else:
        try:
            import psycopg  # noqa: F401
        except ImportError:
            why = "psycopg is not installed (pip install -e .)"
    if why:
        if os.environ.get("MODELFORGE_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"MODELFORGE_REQUIRE_POSTGRES=1 but {why}")
        pytest.skip(why)
    return url


@pytest.fixture()
def pg_url(server_url) -> str:
    """A fresh, empty database on the server (dropped afterwards), default time zone not UTC."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    admin = create_engine(server_url, isolation_level="AUTOCOMMIT")
    name = f"mf_{uuid.uuid4().hex[:12]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
        conn.execute(text(f"ALTER DATABASE \"{name}\" SET timezone TO 'America/New_York'"))
    try:
        yield make_url(server_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _model(run_id: str, model_id: str | None = None) -> ModelRecord:
    return ModelRecord(id=model_id or f"model-{run_id}", name="m", base_model="demo", task="text-generation",
                       strategy="sft", provider="huggingface", path="/tmp/x", run_id=run_id,
                       metrics={"eval_loss": 1.5, "nested": {"ok": True}})


def test_records_round_trip(pg_url):
    store = RecordStore(pg_url)
    assert store.engine.dialect.name == "postgresql" and store.schema_version() == SCHEMA_VERSION
    config = {"model": "demo", "template_vars": {"name": "Ada ✓"}, "lora_r": 8}
    run = store.create_run("first", config, output_dir="/runs/a")
    assert store.get_run(run.id).config == config
    store.update_run(run.id, total_steps=10, error="x")
    store.heartbeat(run.id, step=3)
    got = store.get_run(run.id)
    assert (got.total_steps, got.last_step, got.error, got.status) == (10, 3, "x", "queued")
    store.mark_running(run.id)
    assert store.get_run(run.id).status == "running"
    second = store.create_run("second", {})
    assert {r.id for r in store.list_runs()} == {run.id, second.id}

    store.finish_run(run.id, "completed", model=_model(run.id))
    model = store.get_model("m")  # by name
    assert model.id == f"model-{run.id}" and model.metrics["nested"] == {"ok": True}
    assert store.get_run(run.id).model_id == model.id
    store.delete_model(model.id)
    assert store.list_models() == [] and store.get_run(run.id).model_id is None
    assert store.consistency_problems() == []
    assert RecordStore(pg_url).migrated == []  # a second open finds the schema current


def test_datetimes_are_utc_whatever_the_servers_zone(pg_url):
    store = RecordStore(pg_url)
    before = utcnow()
    run = store.create_run("r", {})
    got = store.get_run(run.id)
    assert got.heartbeat_at.utcoffset() == timedelta(0)
    assert abs(got.heartbeat_at - before) < timedelta(seconds=30)
    assert abs(got.created_at - before) < timedelta(seconds=30)


def test_finish_run_writes_run_and_model_in_one_transaction(pg_url):
    store = RecordStore(pg_url)
    a, b, c = (store.create_run(n, {}) for n in "abc")
    store.finish_run(a.id, "completed", model=_model(a.id, "model-shared"))
    store.finish_run(b.id, "failed", error="boom", model=_model(b.id))
    assert [m.id for m in store.list_models()] == ["model-shared"]
    assert store.get_run(b.id).status == "failed" and store.get_run(b.id).model_id is None
    # The model insert fails (its id is taken): the run's status change is rolled back with it.
    with pytest.raises(Exception):
        store.finish_run(c.id, "completed", model=_model(c.id, "model-shared"))
    assert store.get_run(c.id).status == "queued" and store.get_run(c.id).model_id is None
    assert store.consistency_problems() == []


def test_metric_curves(pg_url):
    store = RecordStore(pg_url)
    run = store.create_run("r", {})
    for step, loss in [(2, 2.5), (1, 3.0), (3, 2.0)]:
        store.add_metrics(run.id, step, {"loss": loss, "nan": float("nan"), "lr": 1e-4})
    points = store.metrics(run.id)
    assert [(p.step, p.value) for p in points if p.name == "loss"] == [(1, 3.0), (2, 2.5), (3, 2.0)]
    assert not any(p.name == "nan" for p in points) and len(points) == 6


def test_dead_and_silent_runs_are_recovered(pg_url):
    store = RecordStore(pg_url)
    dead = store.create_run("dead", {})
    store.update_run(dead.id, status="running", pid=2**22 + 12345)  # no such process
    silent = store.create_run("silent", {})
    store.update_run(silent.id, status="running", heartbeat_at=utcnow() - timedelta(minutes=10))
    alive = store.create_run("alive", {})
    store.mark_running(alive.id)
    elsewhere = store.create_run("elsewhere", {})
    store.update_run(elsewhere.id, status="running", host="another-host", pid=2**22 + 12345)
    assert set(store.recover_stale_runs()) == {dead.id, silent.id}
    statuses = {r.name: r.status for r in store.list_runs()}
    assert statuses == {"dead": "interrupted", "silent": "interrupted", "alive": "running", "elsewhere": "running"}


WRITER = r"""
import json, os, sys, time
from core.records import ModelRecord, RecordStore
url, tag, go, shared, n = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
while not os.path.exists(go):
    time.sleep(0.01)
store = RecordStore(url)  # both open an empty database at once: one creates the schema
ids = []
for i in range(n):
    run = store.create_run(f"{tag}-{i}", {"writer": tag, "i": i})
    store.mark_running(run.id)
    for step in range(1, 6):
        store.add_metrics(run.id, step, {"loss": 3.0 - step / 10, "learning_rate": 1e-4})
        store.heartbeat(run.id, step=step)
        store.heartbeat(shared, step=step)            # both writers beat the same run
        store.add_metrics(shared, step, {f"{tag}_seen": float(i)})
    if i % 2 == 0:
        store.finish_run(run.id, "completed", model=ModelRecord(
            id=f"model-{run.id}", name=f"{tag}-{i}", base_model="demo", task="text-generation",
            strategy="sft", provider="huggingface", path="/tmp/x", run_id=run.id, metrics={"i": i}))
    else:
        store.finish_run(run.id, "failed", error="on purpose")
    ids.append(run.id)
print(json.dumps(ids))
"""


def test_two_processes_write_at_once(pg_url, tmp_path):
    from sqlalchemy import create_engine, text

    # The shared run must exist before the writers start; it lives in the same fresh database.
    setup = RecordStore(pg_url)
    shared = setup.create_run("shared", {})
    setup.mark_running(shared.id)
    setup.engine.dispose()
    n = 12
    go = tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, pg_url, tag, str(go), shared.id, str(n)], cwd=ROOT,
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for tag in ("a", "b")]
    time.sleep(1.0)  # both importing; then release them together
    go.write_text("go")
    outs = [p.communicate(timeout=180) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    ids = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]

    store = RecordStore(pg_url)
    runs = {r.id: r for r in store.list_runs()}
    assert len(runs) == 2 * n + 1 and set(ids[0]) | set(ids[1]) | {shared.id} == set(runs)
    assert sorted(r.status for r in runs.values() if r.id != shared.id) == ["completed"] * n + ["failed"] * n
    assert len(store.list_models()) == n
    for rid in ids[0] + ids[1]:
        assert [p.step for p in store.metrics(rid) if p.name == "loss"] == [1, 2, 3, 4, 5]
    seen = [p.name for p in store.metrics(shared.id)]
    assert seen.count("a_seen") == seen.count("b_seen") == 5 * n
    # Its last heartbeat came from a writer that has exited: the next store to open recovered it.
    assert store.get_run(shared.id).last_step == 5 and store.get_run(shared.id).status == "interrupted"
    assert store.consistency_problems() == []
    with create_engine(pg_url).connect() as conn:  # one schema, created once
        assert conn.execute(text("SELECT value FROM meta WHERE key = 'schema_version'")).scalar() == str(SCHEMA_VERSION)


def test_a_training_run_records_in_postgresql(pg_url, tmp_path, small_alpaca, demo_model):
    """`modelforge train` with MODELFORGE_DATABASE_URL=postgresql://... (the bare form users write)."""
    from sqlalchemy.engine import make_url

    bare = make_url(pg_url).set(drivername="postgresql").render_as_string(hide_password=False)
    env = {**os.environ, "MODELFORGE_DATABASE_URL": bare, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "app.main", "train", "--model", "demo", "--dataset",
                           str(small_alpaca), "--max-steps", "2", "--batch-size", "2", "--max-length", "64",
                           "--validation-split", "0", "--logging-steps", "1", "--output-dir", str(tmp_path),
                           "--json"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    store = RecordStore(pg_url)
    run = store.get_run(out["run_id"])
    assert run.status == "completed" and run.model_id == out["model_id"] and run.host == socket.gethostname()
    assert store.get_model(out["model_id"]).path == out["model_dir"]
    assert [p.step for p in store.metrics(run.id) if p.name == "loss"] == [1, 2]
