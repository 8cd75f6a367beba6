"""Build the services once per process and pass them in (no global mutable state elsewhere).

Tests build their own with a temporary MODELFORGE_HOME and database.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from core.jobs import JobManager
from core.records import RecordStore


@dataclass
class Services:
    store: RecordStore
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


def build_services(database_url: str | None = None) -> Services:
    from core.paths import database_url as default_url

    go_offline_if_hub_unreachable()
    store = RecordStore(database_url or default_url())
    return Services(store=store, jobs=JobManager(store))
