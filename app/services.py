"""Build the services once per process and pass them in (no global mutable state elsewhere).

Tests build their own with a temporary MODELFORGE_HOME and database.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.jobs import JobManager

if TYPE_CHECKING:  # SQLAlchemy loads when the store opens, not when the app starts (issue 18)
    from core.records import RecordStore


@dataclass
class Services:
    store: Any  # a RecordStore, or a core.deferred.Deferred one while the app starts
    jobs: JobManager


def go_offline_if_hub_unreachable() -> bool:
    """With no hub access, switch the HF libraries to offline mode so they fail in seconds.

    Returns True when offline. Skipped (False) when the user set HF_HUB_OFFLINE themselves.
    """
    if "HF_HUB_OFFLINE" in os.environ:
        return os.environ["HF_HUB_OFFLINE"] == "1"
    from core.models import hub_reachable

    if hub_reachable(timeout=1.5):
        return False
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HF_EVALUATE_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ.setdefault(var, "1")
    return True


def sqlite_file(url: str) -> Path | None:
    """The file of a ``sqlite:///`` URL (None for other databases and in-memory ones)."""
    if not url.startswith("sqlite:///"):
        return None
    name = url[len("sqlite:///"):].split("?", 1)[0]
    return Path(name) if name and name != ":memory:" else None


def open_store(url: str) -> "RecordStore":
    """The record store at ``url``.

    Raises:
        DatabaseDamagedError: the SQLite file is garbage or truncated, or empty while run folders
            exist (it would start empty and hide them): the message names the file and says to
            run ``modelforge doctor``.
    """
    from core.doctor import check_database, damaged
    from core.paths import runs_dir
    from core.records import RecordStore

    db = sqlite_file(url)
    check_database(db, runs_dir())
    try:
        return RecordStore(url)
    except Exception as exc:  # noqa: BLE001 - only a damaged file is translated; anything else stays a fault
        error = damaged(exc, db)
        if error is None:
            raise
        raise error from None


def build_services(database_url: str | None = None, defer_store: bool = False) -> Services:
    """The record store and the job manager.

    Args:
        database_url: default ``MODELFORGE_DATABASE_URL`` or the SQLite file in the data folder.
        defer_store: ``modelforge ui``: the store is opened by ``store.start()`` in a background
            thread (``launch`` starts it once the server listens, then waits for it), so the
            first page does not wait for SQLAlchemy; every use of the store waits until it is open.
    """
    from core.paths import database_url as default_url

    go_offline_if_hub_unreachable()
    url = database_url or default_url()
    if defer_store:
        from core.deferred import Deferred

        store: Any = Deferred(lambda: open_store(url), "record store")
    else:
        store = open_store(url)
    return Services(store=store, jobs=JobManager(store))
