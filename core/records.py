"""Run and model records in SQL, through SQLModel.

SQLite in the data folder by default; any SQLAlchemy URL through ``MODELFORGE_DATABASE_URL``.
SQLite runs in WAL mode with a busy timeout so that the app and a CLI run can share one file.

Invariants:
- A model record exists only for a completed run: :meth:`RecordStore.finish_run` writes the
  model and marks the run completed in one transaction, so a failed run never leaves one.
- A run whose process died (crash, kill, power loss) is marked ``interrupted`` by the next
  process that opens the store (its PID is gone or its heartbeat is stale), never left
  ``running`` forever.
"""

from __future__ import annotations

import json
import os
import socket
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any, Optional

from sqlalchemy import JSON, Column, event, text
from sqlmodel import Field, Session, SQLModel, create_engine, select

from core.errors import NotFoundError

SCHEMA_VERSION = 1
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
    id: Optional[int] = Field(default=None, primary_key=True)
    run_id: str = Field(index=True)
    step: int
    name: str
    value: float


class Meta(SQLModel, table=True):
    key: str = Field(primary_key=True)
    value: str


def _pid_alive(pid: int | None) -> bool:
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
        self.engine = create_engine(url, **kwargs)
        if url.startswith("sqlite"):
            @event.listens_for(self.engine, "connect")
            def _sqlite_pragmas(dbapi_conn, _record):  # pragma: no cover - trivial
                cur = dbapi_conn.cursor()
                cur.execute("PRAGMA journal_mode=WAL")
                cur.execute("PRAGMA busy_timeout=30000")
                cur.execute("PRAGMA foreign_keys=ON")
                cur.close()
        SQLModel.metadata.create_all(self.engine)
        with Session(self.engine) as s:
            if s.get(Meta, "schema_version") is None:
                s.add(Meta(key="schema_version", value=str(SCHEMA_VERSION)))
                s.commit()
        self.recover_stale_runs()

    # -- runs ---------------------------------------------------------------------------------------
    def create_run(self, name: str, config: dict, output_dir: str = "", run_id: str | None = None) -> Run:
        run = Run(id=run_id or new_id("run"), name=name, config=config, output_dir=output_dir,
                  status="queued", pid=os.getpid(), host=socket.gethostname(), heartbeat_at=utcnow())
        with Session(self.engine) as s:
            s.add(run)
            s.commit()
            s.refresh(run)
            return run

    def update_run(self, run_id: str, **changes: Any) -> Run:
        with Session(self.engine) as s:
            run = s.get(Run, run_id)
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
        with Session(self.engine) as s:
            run = s.get(Run, run_id)
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
        with Session(self.engine) as s:
            for run in s.exec(select(Run).where(Run.status.in_(ACTIVE))):
                same_host = run.host in (None, host)
                dead = (same_host and not _pid_alive(run.pid)) or (
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
        with Session(self.engine) as s:
            s.add_all(points)
            s.commit()

    def metrics(self, run_id: str) -> list[MetricPoint]:
        with Session(self.engine) as s:
            return list(s.exec(select(MetricPoint).where(MetricPoint.run_id == run_id)
                               .order_by(MetricPoint.step, MetricPoint.id)))

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
        with Session(self.engine) as s:
            rec = s.get(ModelRecord, model_id)
            if rec is None:
                raise NotFoundError(f"no model with id '{model_id}'")
            s.delete(rec)
            s.commit()
            return rec

    def schema_version(self) -> int:
        with Session(self.engine) as s:
            return int(s.exec(text("SELECT value FROM meta WHERE key='schema_version'")).one()[0])


def record_to_dict(rec: SQLModel) -> dict:
    """JSON-friendly dict of a record (datetimes as ISO strings)."""
    out = {}
    for k, v in rec.model_dump().items():
        out[k] = _aware(v).isoformat() if isinstance(v, datetime) else v
    return json.loads(json.dumps(out, default=str))
