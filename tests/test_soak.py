"""Soak: train again and again for MODELFORGE_SOAK_MINUTES (default 10) while clients poll the
status and upload malformed files, then check that nothing went wrong and nothing leaked.

Not in the default suite (pyproject's addopts deselects the ``soak`` marker). Run it with::

    MODELFORGE_SOAK_MINUTES=10 python -m pytest -m soak -n 0 tests/test_soak.py -s

One process holds the app and the trainer, as ``modelforge ui`` does. Through gradio_client:
a driver starts short runs on the demo model one after another (every third one is stopped
mid-way and resumed; finished models are deleted now and then), five pollers ask for the
training status, one uploader sends the malformed corpus (and a good file) to validation,
and /api/health is checked. At the end:

- no client saw an unexpected error, every run ended completed (none failed, none left active);
- the resident memory grew by less than MODELFORGE_SOAK_RSS_MB (default 300 MB) between the
  end of the warm-up (two runs) and the end, threads and open files did not pile up, and the
  job manager keeps a bounded number of runs' events in memory;
- the database passes ``PRAGMA integrity_check`` and the records' invariants, models and runs
  agree, and the app's fault log is empty.
"""

from __future__ import annotations

import gc
import json
import os
import random
import threading
import time
from pathlib import Path

import httpx
import psutil
import pytest

from core.paths import EXAMPLES
from tests.fixtures.malformed.make_corpus import CASES, HERE as CORPUS
from tests.helpers import free_port

MINUTES = float(os.environ.get("MODELFORGE_SOAK_MINUTES", "10"))
RSS_BOUND_MB = float(os.environ.get("MODELFORGE_SOAK_RSS_MB", "300"))
RUN = {"max_steps": 12, "batch_size": 2, "max_length": 64, "logging_steps": 1, "save_steps": 4,
       "save_total_limit": 2, "validation_split": 0.0}

pytestmark = [pytest.mark.soak, pytest.mark.timeout(int(MINUTES * 60) + 900)]


class Soak:
    def __init__(self, url: str):
        self.url = url
        self.deadline = time.time() + MINUTES * 60
        self.errors: list[str] = []
        self.lock = threading.Lock()
        self.counts = {"runs": 0, "resumes": 0, "deletes": 0, "polls": 0, "uploads": 0, "health": 0}
        self.runs: list[str] = []
        self.rss: list[tuple[float, float]] = []  # (time, MB)
        self.warm_rss: float | None = None
        self.warm_fds: int | None = None
        self.warm_threads: int | None = None
        self.driver_done = threading.Event()

    def error(self, where: str, exc: BaseException | str) -> None:
        with self.lock:
            self.errors.append(f"{where}: {exc if isinstance(exc, str) else f'{type(exc).__name__}: {exc}'}")

    def count(self, key: str) -> None:
        with self.lock:
            self.counts[key] += 1

    def running(self) -> bool:
        return not self.driver_done.is_set()


def _client(url):
    from gradio_client import Client

    return Client(url, verbose=False)


def _wait(client, run_id, until, soak: Soak, timeout=300.0) -> dict:
    end = time.time() + timeout
    while time.time() < end:
        status = client.predict(run_id=run_id, api_name="/training_status")
        if until(status):
            return status
        time.sleep(0.3)
    raise AssertionError(f"run {run_id} stuck: {status}")


def driver(soak: Soak) -> None:
    """Start runs back to back; stop and resume every third; delete some models."""
    from gradio_client.exceptions import AppError

    proc = psutil.Process()
    client = _client(soak.url)
    rnd = random.Random(0)
    try:
        n = 0
        while time.time() < soak.deadline:
            n += 1
            started = client.predict(config={**RUN, "name": f"soak-{n}", "seed": n}, preset="identity-demo",
                                     api_name="/start_training")
            run_id = started["run_id"]
            soak.runs.append(run_id)
            soak.count("runs")
            if n % 3 == 0:
                _wait(client, run_id, lambda s: s["step"] >= 5 or s["done"], soak)
                try:
                    client.predict(run_id=run_id, api_name="/stop_training")
                    _wait(client, run_id, lambda s: s["done"], soak)
                    client.predict(run_id=run_id, api_name="/resume_training")
                    soak.count("resumes")
                except AppError as exc:  # it finished before the stop arrived: fine
                    if "not training" not in str(exc):
                        raise
            done = _wait(client, run_id, lambda s: s["done"] and s["status"] != "cancelled", soak)
            if done["status"] != "completed":
                soak.error("driver", f"run {run_id} ended {done['status']}: {done.get('error')}")
            models = client.predict(api_name="/list_models")
            if len(models) > 3 or rnd.random() < 0.3:
                victim = models[-1]["id"]
                client.predict(model_id=victim, confirm=True, api_name="/delete_model")
                soak.count("deletes")
            if n == 2:  # warmed up: torch, the demo model, the trainer have all been built once
                gc.collect()
                soak.warm_rss = proc.memory_info().rss / 2**20
                soak.warm_fds = proc.num_fds()
                soak.warm_threads = threading.active_count()
    except Exception as exc:  # noqa: BLE001
        soak.error("driver", exc)
    finally:
        soak.driver_done.set()
        client.close()


def poller(soak: Soak, i: int) -> None:
    client = _client(soak.url)
    try:
        while soak.running():
            try:
                status = client.predict(api_name="/training_status")
                assert "status" in status and "step" in status
                if i == 0:
                    client.predict(api_name="/list_runs")
                soak.count("polls")
            except Exception as exc:  # noqa: BLE001
                soak.error(f"poller {i}", exc)
            time.sleep(0.2 + 0.1 * i)
    finally:
        client.close()


def uploader(soak: Soak) -> None:
    from gradio_client import handle_file

    client = _client(soak.url)
    k = 0
    try:
        while soak.running():
            case = CASES[k % len(CASES)]
            k += 1
            try:
                report = client.predict(file=handle_file(str(CORPUS / case.name)), config={"strategy": case.strategy},
                                        api_name="/validate_dataset")
                if report["ok"] or case.name not in json.dumps(report["report"]["problems"]):
                    soak.error("uploader", f"{case.name} not refused by name: {report['summary'][:200]}")
                if k % 10 == 0:
                    good = client.predict(file=handle_file(str(EXAMPLES / "identity.json")), api_name="/validate_dataset")
                    if not good["ok"]:
                        soak.error("uploader", "identity.json refused")
                soak.count("uploads")
            except Exception as exc:  # noqa: BLE001
                soak.error("uploader", exc)
            time.sleep(1.0)
    finally:
        client.close()


def watcher(soak: Soak) -> None:
    proc = psutil.Process()
    with httpx.Client(base_url=soak.url, timeout=30) as http:
        while soak.running():
            try:
                t0 = time.time()
                assert http.get("api/health").json()["status"] == "ok"
                if time.time() - t0 > 10:
                    soak.error("health", f"answered in {time.time() - t0:.1f} s")
                soak.count("health")
            except Exception as exc:  # noqa: BLE001
                soak.error("health", exc)
            soak.rss.append((time.time(), proc.memory_info().rss / 2**20))
            time.sleep(5)


def test_soak(tmp_path, demo_model):
    from app.services import build_services
    from app.ui import launch
    from components.common import fault_log_path
    from core.jobs import KEEP_FINISHED_LOGS

    fault_log = fault_log_path()
    faults_before = fault_log.read_text() if fault_log.exists() else ""
    services = build_services(f"sqlite:///{tmp_path / 'soak.db'}")
    running = launch(host="127.0.0.1", port=free_port(), block=False, services=services)
    soak = Soak(running.url)
    threads = [threading.Thread(target=driver, args=(soak,), name="soak-driver"),
               threading.Thread(target=uploader, args=(soak,), name="soak-uploader"),
               threading.Thread(target=watcher, args=(soak,), name="soak-watcher")]
    threads += [threading.Thread(target=poller, args=(soak, i), name=f"soak-poller-{i}") for i in range(5)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(MINUTES * 60 + 600)
        gc.collect()
        proc = psutil.Process()
        end_rss = proc.memory_info().rss / 2**20
        store, jobs = services.store, services.jobs

        growth = end_rss - (soak.warm_rss or end_rss)
        peak = max((m for _, m in soak.rss), default=end_rss)
        print(f"\nsoak {MINUTES:g} min: {soak.counts}; RSS warm {soak.warm_rss:.0f} MB -> end {end_rss:.0f} MB "
              f"(growth {growth:+.0f} MB, peak {peak:.0f} MB); fds {soak.warm_fds} -> {proc.num_fds()}; "
              f"threads {soak.warm_threads} -> {threading.active_count()}; errors {len(soak.errors)}")

        assert soak.errors == []
        assert soak.counts["runs"] >= 3 and soak.counts["uploads"] >= 3 and soak.counts["polls"] >= 10
        assert soak.warm_rss is not None, "the warm-up (two runs) did not finish"
        assert growth < RSS_BOUND_MB, f"RSS grew {growth:.0f} MB (bound {RSS_BOUND_MB:.0f} MB)"
        assert proc.num_fds() - soak.warm_fds < 50
        assert threading.active_count() - soak.warm_threads < 10
        assert len(jobs._logs) <= KEEP_FINISHED_LOGS + 2  # old runs' events replay from their files

        runs = store.list_runs(limit=10_000)
        assert {r.id for r in runs} == set(soak.runs)
        assert {r.status for r in runs} == {"completed"}, [(r.id, r.status, r.error) for r in runs
                                                            if r.status != "completed"]
        assert max(r.attempts for r in runs) >= (2 if soak.counts["resumes"] else 1)
        with store.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA integrity_check").scalar() == "ok"
        assert store.consistency_problems() == []
        models = store.list_models()
        assert len(models) == sum(1 for r in runs if r.model_id)
        assert all(Path(m.path).is_dir() for m in models)
        for r in runs:
            types = [json.loads(line)["type"] for line in (Path(r.output_dir) / "events.jsonl").read_text().splitlines()]
            assert types[-1] == "finished", (r.id, types[-5:])
        faults = fault_log.read_text() if fault_log.exists() else ""
        assert faults == faults_before, faults[len(faults_before):][-3000:]
    finally:
        soak.driver_done.set()
        running.close()
