"""Typed training events: an in-memory stream plus an append-only ``events.jsonl`` per run.

The worker emits; any number of readers (the CLI's progress bar, the app's Train tab in one or
several browsers, tests) follow along. A reader that arrives late, or after a page reload,
replays the file: the file is the source of truth, the memory list a fast path.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

EVENT_TYPES = (
    "queued", "started", "log", "step", "eval", "checkpoint",
    "finished", "failed", "cancelled",
)
TERMINAL = ("finished", "failed", "cancelled")


@dataclass
class Event:
    type: str
    run_id: str
    step: int = 0
    total_steps: int = 0
    time: float = field(default_factory=time.time)
    data: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), default=str)

    @classmethod
    def from_dict(cls, d: dict) -> "Event":
        return cls(type=d["type"], run_id=d["run_id"], step=d.get("step", 0),
                   total_steps=d.get("total_steps", 0), time=d.get("time", 0.0), data=d.get("data", {}))


class EventLog:
    """The events of one run, kept in memory and appended to ``path`` (flushed per event)."""

    def __init__(self, run_id: str, path: Path | None = None):
        self.run_id = run_id
        self.path = Path(path) if path else None
        self.events: list[Event] = []
        self._subscribers: list[Callable[[Event], None]] = []
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)

    def attach_file(self, path: Path) -> None:
        """Start writing to ``path``, first writing what was emitted before it was known."""
        with self._lock:
            self.path = Path(path)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as fh:
                for ev in self.events:
                    fh.write(ev.to_json() + "\n")

    def subscribe(self, fn: Callable[[Event], None]) -> None:
        self._subscribers.append(fn)

    def emit(self, type: str, step: int = 0, total_steps: int = 0, **data: Any) -> Event:
        ev = Event(type=type, run_id=self.run_id, step=step, total_steps=total_steps, data=data)
        with self._changed:
            self.events.append(ev)
            if self.path is not None:
                with self.path.open("a", encoding="utf-8") as fh:
                    fh.write(ev.to_json() + "\n")
            self._changed.notify_all()
        for fn in list(self._subscribers):
            try:
                fn(ev)
            except Exception:  # noqa: BLE001 - a broken reader must never stop training
                pass
        return ev

    def since(self, index: int) -> list[Event]:
        with self._lock:
            return self.events[index:]

    def wait(self, index: int, timeout: float) -> list[Event]:
        """Block until there are events past ``index`` (or timeout); return them."""
        with self._changed:
            if len(self.events) <= index:
                self._changed.wait(timeout)
            return self.events[index:]


def read_events(path: str | Path) -> list[Event]:
    """Replay an events file; a torn last line (crash mid-write) is skipped, not an error."""
    p = Path(path)
    if not p.exists():
        return []
    out: list[Event] = []
    with p.open(encoding="utf-8", errors="replace") as fh:
        for line in fh:
            try:
                out.append(Event.from_dict(json.loads(line)))
            except (json.JSONDecodeError, KeyError, TypeError):
                continue
    return out
