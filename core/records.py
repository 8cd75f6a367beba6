"""Run and model records in SQL, through SQLModel.

SQLite in the data folder by default; any SQLAlchemy URL through ``MODELFORGE_DATABASE_URL``.
SQLite runs in WAL mode with a busy timeout so that the app and a CLI run can share one file.

Invariants:
- A model record exists only for a completed run: :meth:`RecordStore.finish_run` writes the
  model and marks the run completed in one transaction, so a failed run never leaves one.
- A run whose process died (crash, kill, power loss) is marked ``interrupted`` by the next
  process that opens the store (its PID is gone or its heartbeat is stale), never left
  ``running`` forever.
- Every read-modify-write starts its transaction as a writer (SQLite: ``BEGIN IMMEDIATE``).
  A deferred transaction that reads first and writes later fails at once with "database is
  locked" when another connection wrote in between (WAL cannot upgrade a stale snapshot, and
  the busy timeout does not help); taking the write lock up front makes it wait its turn.
  On PostgreSQL the rows read for a change are locked (``SELECT ... FOR UPDATE``, which SQLite
  ignores), so two deletes of one model cannot both succeed there either.

Schema versions: ``meta.schema_version`` says which schema a database has. Opening an older
one runs the missing steps of :data:`MIGRATIONS` in order, each in its own transaction together
with the version bump (a failing step leaves the database as it was), after a backup copy of a
SQLite file. A database from a newer ModelForge is refused rather than damaged. Migrations use
SQLAlchemy DDL constructs (``CreateColumn``, ``Index.create``), so they run on PostgreSQL too.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Optional

from sqlalchemy import JSON, Column, Index, event, inspect, text
from sqlalchemy.engine import Connection
from sqlalchemy.schema import CreateColumn
from sqlmodel import Field, Session, SQLModel, create_engine, select

from core.errors import ModelForgeError, NotFoundError

log = logging.getLogger("modelforge.records")

SCHEMA_VERSION = 2  # the schema this code writes; older databases are migrated (see MIGRATIONS)
RUN_STATUSES = ("queued", "running", "completed", "failed", "cancelled", "interrupted")
ACTIVE = ("queued", "running")
# A running run whose heartbeat is older than this is considered dead even if a process with
# its PID exists (PIDs are reused after a reboot).
STALE_AFTER = timedelta(minutes=5)


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _aware(dt: datetime) -> datetime:
    """SQLite hands datetimes back without a zone; they were written in UTC."""
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)


def new_id(prefix: str) -> str:
    return f"{prefix}-{utcnow():%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}"


class Run(SQLModel, table=True):
    id: str = Field(primary_key=True)
    name: str = Field(index=True)
    status: str = Field(default="queued", index=True)
    config: dict = Field(default_factory=dict, sa_column=Column(JSON))
    output_dir: str = ""
    created_at: datetime = Field(default_factory=utcnow)
    started_at: Optional[datetime] = None
    finished_at: Optional[datetime] = None
    last_step: int = 0
    total_steps: int = 0
    error: Optional[str] = None
    model_id: Optional[str] = None
    pid: Optional[int] = None
    host: Optional[str] = None
    heartbeat_at: Optional[datetime] = None
    # 1 + the number of times the run was resumed (schema 2). A server default, so that the
    # migration can add the column to a table that already has rows.
    attempts: int = Field(default=1, sa_column_kwargs={"server_default": text("1")})


class ModelRecord(SQLModel, table=True):
    __tablename__ = "model"
    id: str = Field(primary_key=True)
    name: str = Field(index=True)
    base_model: str
    task: str
    strategy: str
    provider: str
    path: str
    run_id: str = Field(index=True)
    metrics: dict = Field(default_factory=dict, sa_column=Column(JSON))
    size_bytes: int = 0
    created_at: datetime = Field(default_factory=utcnow)


class MetricPoint(SQLModel, table=True):
    """One value of one metric at one step: the curves, not only the last values."""

    __tablename__ = "metric"
    # The curves are read per run in step order (schema 2).
    __table_args__ = (Index("ix_metric_run_id_step", "run_id", "step"),)
    id: Optional[int] = Field(default=None, primary_key=True)
    run_id: str = Field(index=True)
    step: int
    name: str
    value: float


class Evaluation(SQLModel, table=True):
    """One base-vs-tuned evaluation of a model (core.compare_eval): its summary and where its
    per-row predictions are. A new table (no migration step: ``_prepare_schema`` creates tables
    that are missing)."""

    id: str = Field(primary_key=True)
    model_id: str = Field(default="", index=True)
    run_id: str = Field(default="", index=True)
    created_at: datetime = Field(default_factory=utcnow)
    dataset: str = ""
    kind: str = ""
    rows: int = 0
    better: int = 0
    worse: int = 0
    same: int = 0
    primary: str = ""
    base: dict = Field(default_factory=dict, sa_column=Column(JSON))
    tuned: dict = Field(default_factory=dict, sa_column=Column(JSON))
    predictions: str = ""
    summary: str = ""
    details: dict = Field(default_factory=dict, sa_column=Column(JSON))


class Meta(SQLModel, table=True):
    key: str = Field(primary_key=True)
    value: str


# -- migrations ---------------------------------------------------------------------------------------
def _add_column(conn: Connection, column: Column) -> None:
    """``ALTER TABLE ... ADD COLUMN`` for a column of a model, in the connection's dialect.

    Skipped when the column is there already (a database upgraded by hand, a retried step).
    """
    if column.name in {c["name"] for c in inspect(conn).get_columns(column.table.name)}:
        return
    conn.execute(text(add_column_sql(column, conn.dialect)))


def add_column_sql(column: Column, dialect) -> str:
    """The ``ALTER TABLE ... ADD COLUMN`` statement for ``column`` in ``dialect`` (SQLite, PostgreSQL...).

    SQLAlchemy has no ADD COLUMN construct outside Alembic; ``CreateColumn`` renders the column
    exactly as ``CREATE TABLE`` would (type, server default, NOT NULL) for the dialect.
    """
    spec = CreateColumn(column).compile(dialect=dialect)
    table = dialect.identifier_preparer.format_table(column.table)
    return f"ALTER TABLE {table} ADD COLUMN {spec}"


def _create_index(conn: Connection, table, name: str) -> None:
    index = next(i for i in table.indexes if i.name == name)
    index.create(conn, checkfirst=True)


def _v2_attempts_and_curve_index(conn: Connection) -> None:
    """v1 -> v2: ``run.attempts`` (1 + resumes; existing runs count one) and an index on
    ``metric(run_id, step)``, the order in which the Models tab and the API read the curves."""
    _add_column(conn, Run.__table__.c.attempts)
    _create_index(conn, MetricPoint.__table__, "ix_metric_run_id_step")


# (version it produces, what it does, the step). Append only; never edit a released step.
MIGRATIONS: list[tuple[int, str, Callable[[Connection], None]]] = [
    (2, "runs count their attempts; metric curves indexed by run and step", _v2_attempts_and_curve_index),
]
assert [v for v, _, _ in MIGRATIONS] == list(range(2, SCHEMA_VERSION + 1)), "migrations must be contiguous"


class SchemaTooNewError(ModelForgeError):
    """The database was written by a newer ModelForge."""


def postgres_engine_args(url: str) -> tuple[str, dict[str, Any]]:
    """The SQLAlchemy URL and engine options for a PostgreSQL database.

    - ``postgresql://`` (and Heroku's ``postgres://``) get the psycopg 3 driver, the one ModelForge
      installs: to SQLAlchemy a bare ``postgresql://`` means psycopg2. A URL naming a driver
      (``postgresql+psycopg2://``) keeps it.
    - Sessions run in UTC, as every datetime here is: values read back carry UTC like on SQLite,
      and a ``TIMESTAMP WITHOUT TIME ZONE`` column (a hand-made schema) is not shifted by a server
      whose default zone is another one.
    - ``pool_pre_ping``: a connection the server dropped (restart, idle timeout) is replaced
      instead of failing the next write of a long run.
    """
    from sqlalchemy.engine import make_url

    for bare in ("postgresql://", "postgres://"):
        if url.startswith(bare):
            url = "postgresql+psycopg://" + url[len(bare):]
    kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if make_url(url).drivername in ("postgresql+psycopg", "postgresql+psycopg2"):  # libpq's "options"
        kwargs["connect_args"] = {"options": "-c timezone=UTC"}
    return url, kwargs


def pid_alive(pid: int | None) -> bool:
    """Whether process ``pid`` runs on this machine (None or 0: no)."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RecordStore:
    """All database access. Build one per process (the app builds it once in app/services.py)."""

    def __init__(self, url: str):
        self.url = url
        kwargs: dict[str, Any] = {}
        if url.startswith("sqlite"):
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
        elif url.startswith("postgres"):
            url, kwargs = postgres_engine_args(url)
        self.engine = create_engine(url, **kwargs)
        if url.startswith("sqlite"):
            @event.listens_for(self.engine, "connect")
            def _sqlite_pragmas(dbapi_conn, _record):  # pragma: no cover - trivial
                # The driver's own implicit BEGIN would defeat BEGIN IMMEDIATE: SQLAlchemy
                # emits the BEGIN itself (the "begin" listener below).
                dbapi_conn.isolation_level = None
                cur = dbapi_conn.cursor()
                cur.execute("PRAGMA journal_mode=WAL")
                cur.execute("PRAGMA busy_timeout=30000")
                cur.execute("PRAGMA foreign_keys=ON")
                cur.close()

            @event.listens_for(self.engine, "begin")
            def _sqlite_begin(conn):  # pragma: no cover - trivial
                conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("mf_write")
                                     else "BEGIN")
        # Sessions on this engine write: on SQLite they take the write lock when they begin.
        self.writer = self.engine.execution_options(mf_write=True)
        self.migrated: list[int] = []  # versions this process migrated the database to
        self._prepare_schema()
        self.recover_stale_runs()

    # -- schema ---------------------------------------------------------------------------------------
    @staticmethod
    def _lock_schema(conn: Connection) -> None:
        """Serialise schema work between processes (SQLite: the BEGIN IMMEDIATE already does)."""
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(7286207)"))

    @staticmethod
    def _version(conn: Connection) -> int:
        row = conn.execute(select(Meta.value).where(Meta.key == "schema_version")).first()
        return int(row[0]) if row else 1  # a database from before versioning is schema 1

    @staticmethod
    def _set_version(conn: Connection, version: int) -> None:
        table = Meta.__table__
        if conn.execute(select(Meta.value).where(Meta.key == "schema_version")).first() is None:
            conn.execute(table.insert().values(key="schema_version", value=str(version)))
        else:
            conn.execute(table.update().where(table.c.key == "schema_version").values(value=str(version)))

    def _prepare_schema(self) -> None:
        """Create a new database at the current schema, or migrate an older one step by step.

        Raises:
            SchemaTooNewError: the database comes from a newer ModelForge (nothing is changed).
        """
        with self.writer.begin() as conn:
            self._lock_schema(conn)
            if not inspect(conn).has_table(Run.__tablename__):
                SQLModel.metadata.create_all(conn)
                self._set_version(conn, SCHEMA_VERSION)
                return
            if not inspect(conn).has_table(Meta.__tablename__):
                Meta.__table__.create(conn)
            version = self._version(conn)
        if version > SCHEMA_VERSION:
            raise SchemaTooNewError(
                f"the database {self._where()} has schema version {version}, newer than this ModelForge "
                f"understands ({SCHEMA_VERSION})",
                "upgrade ModelForge (pip install -U modelforge), or point MODELFORGE_HOME or "
                "MODELFORGE_DATABASE_URL at another database")
        pending = [m for m in MIGRATIONS if m[0] > version]
        if pending:
            self._backup(version)
        for target, what, step in pending:
            with self.writer.begin() as conn:  # the step and its version bump commit together
                self._lock_schema(conn)
                if self._version(conn) >= target:
                    continue  # another process migrated it while we waited
                log.info("migrating %s to schema %d: %s", self._where(), target, what)
                step(conn)
                self._set_version(conn, target)
            self.migrated.append(target)
        with self.writer.begin() as conn:  # tables added in this version that no step creates
            SQLModel.metadata.create_all(conn)

    def _where(self) -> str:
        return self.engine.url.render_as_string(hide_password=True)

    def sqlite_path(self) -> str | None:
        """The database file of a SQLite store (None for in-memory or other databases)."""
        if self.engine.dialect.name != "sqlite":
            return None
        db = self.engine.url.database
        return db if db and db != ":memory:" else None

    def _backup(self, version: int) -> None:
        """Copy a SQLite file to ``<file>.v<version>.bak`` before migrating it (once per version)."""
        path = self.sqlite_path()
        if not path or not os.path.exists(path):
            return
        target = f"{path}.v{version}.bak"
        if os.path.exists(target):
            return
        import sqlite3

        src = sqlite3.connect(path, timeout=30)
        try:
            dst = sqlite3.connect(target)
            try:
                src.backup(dst)  # consistent even with a WAL beside the file
            finally:
                dst.close()
        finally:
            src.close()
        log.info("backed up %s to %s before migrating", path, target)

    # -- runs ---------------------------------------------------------------------------------------
    def create_run(self, name: str, config: dict, output_dir: str = "", run_id: str | None = None) -> Run:
        run = Run(id=run_id or new_id("run"), name=name, config=config, output_dir=output_dir,
                  status="queued", pid=os.getpid(), host=socket.gethostname(), heartbeat_at=utcnow())
        with Session(self.writer) as s:
            s.add(run)
            s.commit()
            s.refresh(run)
            return run

    def update_run(self, run_id: str, **changes: Any) -> Run:
        with Session(self.writer) as s:
            run = s.get(Run, run_id, with_for_update=True)
            if run is None:
                raise NotFoundError(f"no run with id '{run_id}'", "list runs with `modelforge runs`")
            for k, v in changes.items():
                setattr(run, k, v)
            s.add(run)
            s.commit()
            s.refresh(run)
            return run

    def heartbeat(self, run_id: str, step: int | None = None, total: int | None = None) -> None:
        changes: dict[str, Any] = {"heartbeat_at": utcnow(), "pid": os.getpid()}
        if step is not None:
            changes["last_step"] = step
        if total is not None:
            changes["total_steps"] = total
        self.update_run(run_id, **changes)

    def mark_running(self, run_id: str, resumed: bool = False) -> Run:
        """The run starts training in this process; a resumed run counts one more attempt."""
        with Session(self.writer) as s:
            run = s.get(Run, run_id, with_for_update=True)
            if run is None:
                raise NotFoundError(f"no run with id '{run_id}'", "list runs with `modelforge runs`")
            now = utcnow()
            run.status, run.started_at, run.heartbeat_at = "running", now, now
            run.pid, run.host = os.getpid(), socket.gethostname()
            if resumed:
                run.attempts = (run.attempts or 1) + 1
            s.add(run)
            s.commit()
            s.refresh(run)
            return run

    def get_run(self, run_id: str) -> Run:
        with Session(self.engine) as s:
            run = s.get(Run, run_id)
            if run is None:
                raise NotFoundError(f"no run with id '{run_id}'", "list runs with `modelforge runs`")
            return run

    def list_runs(self, limit: int = 200) -> list[Run]:
        with Session(self.engine) as s:
            return list(s.exec(select(Run).order_by(Run.created_at.desc()).limit(limit)))

    def finish_run(self, run_id: str, status: str, error: str | None = None,
                   model: ModelRecord | None = None) -> Run:
        """End a run; with ``model`` (completed runs only) write its record in the same transaction."""
        with Session(self.writer) as s:
            run = s.get(Run, run_id, with_for_update=True)
            if run is None:
                raise NotFoundError(f"no run with id '{run_id}'")
            run.status = status
            run.finished_at = utcnow()
            run.error = error
            if model is not None and status == "completed":
                s.add(model)
                run.model_id = model.id
            s.add(run)
            s.commit()
            s.refresh(run)
            return run

    def recover_stale_runs(self) -> list[str]:
        """Mark runs whose owner process is gone as interrupted. Returns their ids."""
        host = socket.gethostname()
        now = utcnow()
        fixed: list[str] = []
        with Session(self.writer) as s:
            for run in s.exec(select(Run).where(Run.status.in_(ACTIVE)).with_for_update()):
                same_host = run.host in (None, host)
                dead = (same_host and not pid_alive(run.pid)) or (
                    run.heartbeat_at is not None and now - _aware(run.heartbeat_at) > STALE_AFTER)
                if dead:
                    run.status = "interrupted"
                    run.finished_at = now
                    run.error = run.error or "the process running it stopped unexpectedly; resume it to continue"
                    s.add(run)
                    fixed.append(run.id)
            s.commit()
        return fixed

    # -- metrics ------------------------------------------------------------------------------------
    def add_metrics(self, run_id: str, step: int, values: dict[str, float]) -> None:
        points = [MetricPoint(run_id=run_id, step=int(step), name=k, value=float(v))
                  for k, v in values.items() if isinstance(v, (int, float)) and v == v]
        if not points:
            return
        with Session(self.writer) as s:
            s.add_all(points)
            s.commit()

    def metrics(self, run_id: str) -> list[MetricPoint]:
        with Session(self.engine) as s:
            return list(s.exec(select(MetricPoint).where(MetricPoint.run_id == run_id)
                               .order_by(MetricPoint.step, MetricPoint.id)))

    # -- evaluations (base vs tuned, core.compare_eval) ------------------------------------------------
    def add_evaluation(self, rec: "Evaluation") -> None:
        with Session(self.writer, expire_on_commit=False) as s:  # the caller reads rec afterwards
            s.add(rec)
            s.commit()

    def evaluations(self, model_id: str | None = None, run_id: str | None = None) -> list["Evaluation"]:
        """Evaluations, newest first, of one model or one run (or all)."""
        with Session(self.engine) as s:
            q = select(Evaluation)
            if model_id:
                q = q.where(Evaluation.model_id == model_id)
            if run_id:
                q = q.where(Evaluation.run_id == run_id)
            return list(s.exec(q.order_by(Evaluation.created_at.desc())))

    # -- models -------------------------------------------------------------------------------------
    def list_models(self) -> list[ModelRecord]:
        with Session(self.engine) as s:
            return list(s.exec(select(ModelRecord).order_by(ModelRecord.created_at.desc())))

    def get_model(self, key: str) -> ModelRecord:
        """Find a model by id, or by name (the newest with that name)."""
        with Session(self.engine) as s:
            rec = s.get(ModelRecord, key)
            if rec is None:
                rec = s.exec(select(ModelRecord).where(ModelRecord.name == key)
                             .order_by(ModelRecord.created_at.desc())).first()
            if rec is None:
                raise NotFoundError(f"no model with id or name '{key}'", "list models with `modelforge models`")
            return rec

    def delete_model(self, model_id: str) -> ModelRecord:
        """Delete a model record; its run stays (completed) and forgets the model, in one transaction."""
        with Session(self.writer) as s:
            rec = s.get(ModelRecord, model_id, with_for_update=True)
            if rec is None:
                raise NotFoundError(f"no model with id '{model_id}'")
            run = s.get(Run, rec.run_id, with_for_update=True)
            if run is not None and run.model_id == rec.id:
                run.model_id = None
                s.add(run)
            s.delete(rec)
            s.commit()
            return rec

    def consistency_problems(self) -> list[str]:
        """What is wrong with the database (empty: nothing). For tests, the soak test and support.

        SQLite's own ``PRAGMA integrity_check``, then the invariants of this module: every model
        belongs to a completed run that points back at it, every run that names a model has it,
        metric points belong to runs, and statuses are known ones.
        """
        out: list[str] = []
        with self.engine.connect() as conn:
            if self.engine.dialect.name == "sqlite":
                result = [r[0] for r in conn.exec_driver_sql("PRAGMA integrity_check")]
                if result != ["ok"]:
                    out += [f"integrity_check: {r}" for r in result]
        with Session(self.engine) as s:
            runs = {r.id: r for r in s.exec(select(Run))}
            models = {m.id: m for m in s.exec(select(ModelRecord))}
            for m in models.values():
                run = runs.get(m.run_id)
                if run is None:
                    out.append(f"model {m.id} belongs to a missing run {m.run_id}")
                elif run.status != "completed" or run.model_id != m.id:
                    out.append(f"model {m.id}: its run {run.id} is {run.status} and points at {run.model_id}")
            for r in runs.values():
                if r.status not in RUN_STATUSES:
                    out.append(f"run {r.id} has an unknown status {r.status!r}")
                if r.model_id and r.model_id not in models:
                    out.append(f"run {r.id} points at a missing model {r.model_id}")
            orphans = s.exec(text("SELECT COUNT(*) FROM metric WHERE run_id NOT IN (SELECT id FROM run)")).one()[0]
            if orphans:
                out.append(f"{orphans} metric point(s) belong to no run")
        return out

    def schema_version(self) -> int:
        with Session(self.engine) as s:
            return int(s.exec(text("SELECT value FROM meta WHERE key='schema_version'")).one()[0])


def record_to_dict(rec: SQLModel) -> dict:
    """JSON-friendly dict of a record (datetimes as ISO strings)."""
    out = {}
    for k, v in rec.model_dump().items():
        out[k] = _aware(v).isoformat() if isinstance(v, datetime) else v
    return json.loads(json.dumps(out, default=str))
