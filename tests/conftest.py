"""Shared fixtures: an isolated, offline ModelForge home per test session, and the demo model.

Everything runs offline on tiny models built in temp folders (see core/demo_model.py).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# Offline and quiet before anything imports the HF stack.
for _k, _v in {
    "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_EVALUATE_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False", "TOKENIZERS_PARALLELISM": "false",
    "TRL_EXPERIMENTAL_SILENCE": "1", "HF_HUB_DISABLE_TELEMETRY": "1",
}.items():
    os.environ[_k] = _v

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(ROOT))


# The files that take longest (seconds of one serial run on 2 cores), started first: with two
# workers (pyproject.toml's addopts) a long file started last would run on alone at the end.
LONGEST_FIRST = ("test_speed.py", "test_benchmarks.py", "test_export.py", "test_cli.py", "test_unsloth.py",
                 "test_browser_states.py", "test_browser.py", "test_distributed.py", "test_compare_eval.py",
                 "test_concurrency.py", "test_faults.py")


def pytest_collection_modifyitems(config, items):
    """Longest files first (a stable sort: within a file, and for every other file, the order stays)."""
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


@pytest.fixture(scope="session", autouse=True)
def mf_home(tmp_path_factory) -> Path:
    """One MODELFORGE_HOME for the session (the demo model is built once into its cache)."""
    home = tmp_path_factory.mktemp("mfhome")
    os.environ["MODELFORGE_HOME"] = str(home)
    # torch.compile's kernels are cached per session, not in the machine's shared /tmp cache: a
    # compiled test then really compiles (and a broken compiler really breaks it) on every run.
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(home / "inductor-cache")
    os.environ.pop("MODELFORGE_DATABASE_URL", None)
    return home


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real data sets in ../shared/data; fail loudly when they are missing."""
    if not (SHARED_DATA / "alpaca_en_demo.json").exists():
        pytest.fail(f"shared data sets not found at {SHARED_DATA}: the tests need ../shared/data "
                    "beside the checkout (see ../shared/data/README.md)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def demo_model(mf_home) -> Path:
    from core.demo_model import demo_path

    return demo_path()


@pytest.fixture()
def store(tmp_path):
    """A fresh record store on a temporary SQLite file."""
    from core.records import RecordStore

    return RecordStore(f"sqlite:///{tmp_path / 'records.db'}")


@pytest.fixture()
def small_alpaca(tmp_path, shared_data) -> Path:
    """48 real alpaca rows: enough for a few training and eval steps, small enough to be fast."""
    import json

    rows = json.loads((shared_data / "alpaca_en_demo.json").read_text())[:48]
    path = tmp_path / "alpaca48.json"
    path.write_text(json.dumps(rows))
    return path


@pytest.fixture(scope="module")
def browser():
    """Debian's headless Chromium (tests.helpers.chromium), one per browser test file."""
    from tests.helpers import chromium

    with chromium() as b:
        yield b
