"""Database upgrades: a database made by an older ModelForge opens with this one and keeps its rows.

tests/fixtures/db/modelforge_v1.db is a schema-1 database (built by make_v1.py beside it, from
the frozen v1 DDL). Opening a copy migrates it step by step (each step and its version bump in
one transaction, after a backup), keeps every row, and the migrated database works like a new
one. A failing step changes nothing; a database from a newer ModelForge is refused untouched.
The steps are SQLAlchemy DDL, compiled here for PostgreSQL too (and run against a server when
MODELFORGE_TEST_POSTGRES_URL names one).
"""

from __future__ import annotations

import os
import shutil
import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import inspect

import core.records as records
from core.records import SCHEMA_VERSION, RecordStore, SchemaTooNewError
from tests.fixtures.db.make_v1 import METRICS, RUNS, TARGET as FIXTURE, build

COMPLETED, FAILED, LEFT_RUNNING = (r[0] for r in RUNS)
MODEL_ID = "model-20250101-120300-bbbbbb"


@pytest.fixture()
def v1_db(tmp_path) -> Path:
    db = tmp_path / "modelforge.db"
    shutil.copyfile(FIXTURE, db)
    return db


def _version_in_file(path: Path) -> int:
    con = sqlite3.connect(path)
    try:
        return int(con.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0])
    finally:
        con.close()


def test_the_fixture_is_a_v1_database_and_matches_its_script(tmp_path):
    assert SCHEMA_VERSION >= 2 and _version_in_file(FIXTURE) == 1
    rebuilt = build(tmp_path / "again.db")
    dump = lambda p: [line for line in sqlite3.connect(p).iterdump()]  # noqa: E731
    assert dump(rebuilt) == dump(FIXTURE), "rerun tests/fixtures/db/make_v1.py"
    columns = {r[1] for r in sqlite3.connect(FIXTURE).execute("PRAGMA table_info(run)")}
    assert "attempts" not in columns


def test_a_v1_database_opens_migrates_and_keeps_its_rows(v1_db):
    store = RecordStore(f"sqlite:///{v1_db}")
    assert store.migrated == list(range(2, SCHEMA_VERSION + 1))
    assert store.schema_version() == SCHEMA_VERSION

    runs = {r.id: r for r in store.list_runs()}
    assert set(runs) == {COMPLETED, FAILED, LEFT_RUNNING}
    assert runs[COMPLETED].status == "completed" and runs[COMPLETED].model_id == MODEL_ID
    assert runs[COMPLETED].config["learning_rate"] == 0.001 and runs[COMPLETED].last_step == 4
    assert runs[FAILED].status == "failed" and "NaN" in runs[FAILED].error
    # Left "running" by a process long gone: recovered as interrupted, its progress kept.
    assert runs[LEFT_RUNNING].status == "interrupted" and runs[LEFT_RUNNING].last_step == 7
    assert all(r.attempts == 1 for r in runs.values())  # the new column, filled for old rows

    model = store.get_model(MODEL_ID)
    assert model.metrics == {"train_loss": 1.25, "eval_loss": 1.5, "perplexity": 4.48} and model.size_bytes == 123456
    assert [(p.step, p.value) for p in store.metrics(COMPLETED)] == [
        (s, v) for rid, s, _, v in METRICS if rid == COMPLETED]
    assert len(store.metrics(LEFT_RUNNING)) == 7
    assert store.consistency_problems() == []

    indexes = {i["name"]: i["column_names"] for i in inspect(store.engine).get_indexes("metric")}
    assert indexes["ix_metric_run_id_step"] == ["run_id", "step"]
    # The backup beside it is the untouched v1 database.
    backup = Path(f"{v1_db}.v1.bak")
    assert backup.exists() and _version_in_file(backup) == 1


def test_the_migrated_database_works_like_a_new_one(v1_db):
    store = RecordStore(f"sqlite:///{v1_db}")
    run = store.create_run("after-upgrade", {"model": "demo"})
    assert store.get_run(run.id).attempts == 1
    assert store.mark_running(run.id, resumed=True).attempts == 2
    store.delete_model(MODEL_ID)
    assert store.get_run(COMPLETED).model_id is None and store.consistency_problems() == []
    again = RecordStore(f"sqlite:///{v1_db}")  # the next process: nothing left to migrate
    assert again.migrated == [] and again.schema_version() == SCHEMA_VERSION
    assert {r.id for r in again.list_runs()} == {COMPLETED, FAILED, LEFT_RUNNING, run.id}


def test_a_new_database_starts_at_the_current_schema(tmp_path):
    store = RecordStore(f"sqlite:///{tmp_path / 'new.db'}")
    assert store.migrated == [] and store.schema_version() == SCHEMA_VERSION
    assert not list(tmp_path.glob("*.bak"))


def test_a_failing_migration_changes_nothing(v1_db, monkeypatch):
    def half_done_then_fails(conn):
        records._add_column(conn, records.Run.__table__.c.attempts)
        raise RuntimeError("step 2 broke halfway")

    monkeypatch.setattr(records, "MIGRATIONS", [(2, "broken", half_done_then_fails)])
    with pytest.raises(RuntimeError, match="halfway"):
        RecordStore(f"sqlite:///{v1_db}")
    assert _version_in_file(v1_db) == 1
    columns = {r[1] for r in sqlite3.connect(v1_db).execute("PRAGMA table_info(run)")}
    assert "attempts" not in columns  # the DDL was rolled back with the step
    monkeypatch.undo()
    assert RecordStore(f"sqlite:///{v1_db}").schema_version() == SCHEMA_VERSION


def test_a_database_from_a_newer_modelforge_is_refused_untouched(v1_db):
    con = sqlite3.connect(v1_db)
    con.execute("UPDATE meta SET value='99' WHERE key='schema_version'")
    con.commit()
    con.close()
    dump = lambda: list(sqlite3.connect(v1_db).iterdump())  # noqa: E731
    before = dump()
    with pytest.raises(SchemaTooNewError, match="schema version 99") as exc:
        RecordStore(f"sqlite:///{v1_db}")
    assert "upgrade ModelForge" in exc.value.hint
    assert dump() == before  # no table, row or index changed (only the journal mode may be WAL now)
    assert not list(v1_db.parent.glob("*.bak"))


def test_the_cli_opens_an_old_database(v1_db, monkeypatch, capsys):
    import json

    from app.main import main

    monkeypatch.setenv("MODELFORGE_HOME", str(v1_db.parent))
    assert main(["runs", "--json"]) == 0
    runs = {r["id"]: r for r in json.loads(capsys.readouterr().out)}
    assert runs[LEFT_RUNNING]["status"] == "interrupted" and runs[COMPLETED]["attempts"] == 1
    assert main(["models", "--json"]) == 0
    assert [m["id"] for m in json.loads(capsys.readouterr().out)] == [MODEL_ID]


def test_two_processes_opening_an_old_database_at_once_migrate_it_once(v1_db):
    import subprocess
    import sys

    code = ("import sys; sys.path.insert(0, '.'); from core.records import RecordStore; "
            f"s = RecordStore('sqlite:///{v1_db}'); print(s.migrated)")
    root = Path(__file__).resolve().parents[1]
    procs = [subprocess.Popen([sys.executable, "-c", code], cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(3)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-500:] for o in outs]
    import ast

    steps = [v for o in outs for v in ast.literal_eval(o[0].strip().splitlines()[-1])]
    assert sorted(steps) == list(range(2, SCHEMA_VERSION + 1)), outs  # each step ran exactly once
    assert RecordStore(f"sqlite:///{v1_db}").consistency_problems() == []


def test_the_steps_compile_for_postgresql():
    from sqlalchemy.dialects import postgresql
    from sqlalchemy.schema import CreateIndex

    pg = postgresql.dialect()
    assert records.add_column_sql(records.Run.__table__.c.attempts, pg) == \
        "ALTER TABLE run ADD COLUMN attempts INTEGER DEFAULT 1 NOT NULL"
    index = next(i for i in records.MetricPoint.__table__.indexes if i.name == "ix_metric_run_id_step")
    assert str(CreateIndex(index).compile(dialect=pg)) == "CREATE INDEX ix_metric_run_id_step ON metric (run_id, step)"


@pytest.fixture()
def fresh_pg_url():
    """A new, empty PostgreSQL database on MODELFORGE_TEST_POSTGRES_URL's server (dropped afterwards)."""
    import uuid

    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    server = os.environ.get("MODELFORGE_TEST_POSTGRES_URL")
    if not server:
        if os.environ.get("MODELFORGE_REQUIRE_POSTGRES") == "1":
            pytest.fail("MODELFORGE_REQUIRE_POSTGRES=1 but MODELFORGE_TEST_POSTGRES_URL is not set")
        pytest.skip("set MODELFORGE_TEST_POSTGRES_URL to a PostgreSQL server to run it")
    url, kwargs = records.postgres_engine_args(server)
    admin = create_engine(url, isolation_level="AUTOCOMMIT", **kwargs)
    name = f"mf_mig_{uuid.uuid4().hex[:12]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def test_a_v1_schema_migrates_on_postgresql(fresh_pg_url):
    """The same v1 -> current upgrade on a PostgreSQL server (tables created with the v1 DDL)."""
    from sqlalchemy import create_engine, text

    from tests.fixtures.db.make_v1 import V1_DDL

    url, kwargs = records.postgres_engine_args(fresh_pg_url)
    engine = create_engine(url, **kwargs)
    with engine.begin() as conn:
        for ddl in V1_DDL:  # PostgreSQL says TIMESTAMP where SQLite's DDL says DATETIME
            conn.execute(text(ddl.replace("DATETIME", "TIMESTAMP WITHOUT TIME ZONE")))
        conn.execute(text("INSERT INTO meta VALUES ('schema_version', '1')"))
        conn.execute(text("INSERT INTO run (id, name, status, config, output_dir, created_at, last_step, total_steps) "
                          "VALUES ('run-1', 'r', 'completed', '{}', '/x', now(), 3, 3)"))
        conn.execute(text("INSERT INTO metric (id, run_id, step, name, value) VALUES (1, 'run-1', 1, 'loss', 2.5)"))
    engine.dispose()
    store = RecordStore(fresh_pg_url)
    assert store.migrated == list(range(2, SCHEMA_VERSION + 1)) and store.schema_version() == SCHEMA_VERSION
    run = store.get_run("run-1")
    assert run.attempts == 1 and run.last_step == 3
    assert [(p.step, p.value) for p in store.metrics("run-1")] == [(1, 2.5)]
    indexes = {i["name"] for i in inspect(store.engine).get_indexes("metric")}
    assert "ix_metric_run_id_step" in indexes
    assert store.mark_running("run-1", resumed=True).attempts == 2
    assert RecordStore(fresh_pg_url).migrated == []
    store.engine.dispose()
