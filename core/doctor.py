"""A damaged records database, said plainly, and rebuilt from the run folders (``modelforge doctor``).

Every run folder holds what its records say: ``config.yaml`` (the whole config), ``events.jsonl``
(started, steps, evaluations, how it ended) and, for a finished run, ``model/modelforge.json``
(the model card). So when ``modelforge.db`` is garbage, truncated or an empty file while run
folders exist, nothing is lost: :func:`check_database` says so, with what to do, and
:func:`rebuild` moves the broken file aside and restores the runs, models and loss curves.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from core.errors import ModelForgeError

MODEL_CARD = "modelforge.json"
DOCTOR_HINT = ("run `modelforge doctor`: it moves the damaged file aside and rebuilds the runs and models "
               "from the run folders")


class DatabaseDamagedError(ModelForgeError):
    """The records database cannot be read (garbage, truncated) or is empty while runs exist."""


def run_folders(runs: Path) -> list[Path]:
    """Run folders under ``runs`` (those with a config.yaml), oldest first."""
    if not runs.is_dir():
        return []
    return sorted((p for p in runs.iterdir() if p.is_dir() and (p / "config.yaml").is_file()), key=lambda p: p.name)


def check_database(db: Path | None, runs: Path) -> None:
    """Refuse a SQLite file that would silently start empty: 0 bytes while run folders exist.

    Raises:
        DatabaseDamagedError: naming the file and how to rebuild it.
    """
    if db is None or not db.exists() or db.stat().st_size > 0:
        return
    n = len(run_folders(runs))
    if n:
        raise DatabaseDamagedError(
            f"the records database {db} is an empty file (0 bytes), but {n} run folder(s) exist in {runs}",
            DOCTOR_HINT)


def damaged(exc: BaseException, db: Path | None) -> DatabaseDamagedError | None:
    """The user-facing error for a database the driver cannot read, or None if ``exc`` is another fault."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        text = str(exc).lower()
        # A truncated SQLite file (WAL mode) answers "disk I/O error" when it is opened.
        if any(w in text for w in ("file is not a database", "malformed", "file is encrypted",
                                   "not a database", "disk i/o error")):
            first = str(exc).splitlines()[0][:200]
            where = str(db) if db else "the records database"
            return DatabaseDamagedError(f"the records database {where} is damaged ({first})",
                                        f"move it aside (mv {where} {where}.broken) or {DOCTOR_HINT}")
        exc = exc.__cause__ or exc.__context__
    return None


@dataclass
class DoctorReport:
    database: str
    state: str                      # ok | missing | empty | damaged
    moved_to: str | None = None
    runs_restored: list[str] = field(default_factory=list)
    models_restored: list[str] = field(default_factory=list)
    already: int = 0
    skipped: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return dict(self.__dict__)

    def lines(self) -> list[str]:
        out = [f"database: {self.database} ({self.state})"]
        if self.moved_to:
            out.append(f"the damaged file was moved to {self.moved_to}")
        out.append(f"restored {len(self.runs_restored)} run(s) and {len(self.models_restored)} model(s) from the run "
                   f"folders; {self.already} run(s) were already recorded")
        out += [f"skipped {s}" for s in self.skipped]
        return out


def probe(db: Path, url: str) -> str:
    """The state of a SQLite database file: ok, missing, empty or damaged."""
    if not db.exists():
        return "missing"
    if db.stat().st_size == 0:
        return "empty"
    from core.records import RecordStore

    try:
        store = RecordStore(url)
        with store.engine.connect() as conn:
            row = conn.exec_driver_sql("PRAGMA quick_check").first()
        store.list_runs(limit=1)
        store.engine.dispose()
        return "ok" if row and str(row[0]).lower() == "ok" else "damaged"
    except Exception as exc:  # noqa: BLE001 - whatever the driver says, the file cannot be used
        if damaged(exc, db) is not None or "database" in str(exc).lower():
            return "damaged"
        raise


def rebuild(url: str, db: Path | None, runs: Path) -> DoctorReport:
    """Make the records usable again: move a damaged (or empty) SQLite file aside, then add every run
    folder (and its model) the records lack. Safe to run on a healthy database: nothing recorded is
    changed."""
    from core.records import RecordStore

    state = probe(db, url) if db is not None else "ok"
    moved = None
    if db is not None and state in ("damaged", "empty"):
        stamp = time.strftime("%Y%m%d-%H%M%S")
        target = db.with_name(f"{db.name}.broken-{stamp}")
        db.rename(target)
        for suffix in ("-wal", "-shm", "-journal"):
            side = db.with_name(db.name + suffix)
            if side.exists():
                side.rename(target.with_name(target.name + suffix))
        moved = str(target)
    store = RecordStore(url)
    report = DoctorReport(database=str(db) if db else url, state=state, moved_to=moved)
    known_runs = {r.id for r in store.list_runs(limit=1_000_000)}
    known_models = {m.id for m in store.list_models()}
    for folder in run_folders(runs):
        try:
            if folder.name in known_runs:
                report.already += 1
                continue
            _restore(store, folder, known_models, report)
        except Exception as exc:  # noqa: BLE001 - one bad folder must not stop the others
            report.skipped.append(f"{folder.name}: {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}")
    return report


def _when(t: float | None) -> datetime | None:
    return datetime.fromtimestamp(t, tz=timezone.utc) if t else None


def _restore(store: Any, folder: Path, known_models: set[str], report: DoctorReport) -> None:
    import yaml
    from sqlmodel import Session

    from core.events import read_events
    from core.records import ModelRecord, Run

    config = yaml.safe_load((folder / "config.yaml").read_text(encoding="utf-8")) or {}
    events = read_events(folder / "events.jsonl")
    status, error, model_id = "interrupted", "restored by modelforge doctor: the run did not finish", None
    last_step = total = 0
    started = finished = None
    for ev in events:
        last_step = max(last_step, ev.step or 0)
        total = ev.total_steps or total
        if ev.type == "started":
            started = started or ev.time
            status, error, finished = "interrupted", "restored by modelforge doctor: the run did not finish", None
        elif ev.type == "finished":
            status, error, finished, model_id = "completed", None, ev.time, ev.data.get("model_id")
        elif ev.type == "failed":
            status, finished = "failed", ev.time
            error = ev.data.get("message") + (f" (fix: {ev.data['hint']})" if ev.data.get("hint") else "")
        elif ev.type == "cancelled":
            status, error, finished = "cancelled", "stopped by the user; resume to continue", ev.time
    card_path = folder / "model" / MODEL_CARD
    card = json.loads(card_path.read_text(encoding="utf-8")) if card_path.is_file() else None
    if card and status == "completed":
        model_id = card.get("model_id") or model_id
    run = Run(id=folder.name, name=str(config.get("name") or folder.name), status=status, config=config,
              output_dir=str(folder), created_at=_when(events[0].time if events else folder.stat().st_mtime),
              started_at=_when(started), finished_at=_when(finished), last_step=last_step, total_steps=total,
              error=error, model_id=model_id if card else None)
    restored_model = None
    with Session(store.writer) as s:
        s.add(run)
        if card and status == "completed" and model_id and model_id not in known_models:
            model_dir = folder / "model"
            size = sum(f.stat().st_size for f in model_dir.rglob("*") if f.is_file())
            s.add(ModelRecord(id=model_id, name=str(card.get("name") or config.get("name") or model_id),
                              base_model=str(card.get("base_model", "")), task=str(card.get("task", "")),
                              strategy=str(card.get("strategy", "")), provider=str(card.get("provider", "")),
                              path=str(model_dir), run_id=folder.name, metrics=card.get("metrics") or {},
                              size_bytes=size))
            restored_model = model_id
        s.commit()
    report.runs_restored.append(folder.name)
    if restored_model:
        known_models.add(restored_model)
        report.models_restored.append(restored_model)
    points: dict[int, dict[str, float]] = {}
    for ev in events:
        if ev.type in ("step", "eval"):
            for k, v in ev.data.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and (k == "loss" or k.startswith("eval_")):
                    points.setdefault(ev.step, {})[k] = v
    for step, values in points.items():
        store.add_metrics(folder.name, step, values)
