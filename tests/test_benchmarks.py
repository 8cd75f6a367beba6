"""The benchmark suite runs end to end in its tiny mode and writes its files.

A smoke test only: ``python -m benchmarks.run --smoke`` into a temporary folder. It never
asserts on a timing or a target (the machines are shared and noisy): the figures of the smoke
sizes mean nothing; that they are computed, written and readable is what is checked.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from benchmarks.run import ORDER

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def test_smoke_run_writes_results_and_table(tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.run", "--smoke", "--out", str(out), "--work", str(work)],
                          cwd=ROOT, capture_output=True, text=True, timeout=840)
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = json.loads((out / "results.json").read_text())
    assert results["mode"] == "smoke"
    assert {"cpu", "cores"} <= set(results["machine"])
    assert {"torch", "transformers", "trl", "peft", "gradio"} <= set(results["versions"])
    assert list(results["benchmarks"]) == list(ORDER)
    for name, res in results["benchmarks"].items():
        assert "error" not in res, f"{name}: {res.get('error')}"
        assert res["figures"], name
        for f in res["figures"]:
            assert {"name", "value", "target", "met"} <= set(f)
    doc = (out / "benchmarks.md").read_text()
    assert doc.startswith("# Benchmarks")
    for res in results["benchmarks"].values():
        assert f"## {res['title']}" in doc
    # Correctness checks that do not depend on timing hold even at the smoke sizes.
    engine = {f["name"]: f["value"] for f in results["benchmarks"]["engine_overhead"]["figures"]}
    assert engine["same trainer settings in both"] is True
    assert engine["same tokens in the measured window"] is True
    useful = {f["name"]: f for f in results["benchmarks"]["useful_compute"]["figures"]}
    assert useful["packing keeps completion masks (same supervised tokens as naive)"]["value"] is True
    assert useful["packed examples isolated (max |logit diff| vs alone)"]["met"] is True
    cold = {f["name"]: f for f in results["benchmarks"]["cold_start"]["figures"]}
    assert cold["heavy libraries imported until the page rendered and loaded"]["value"] == "none"
    # The LLaMA-Factory peer installs a ~2 GB venv: smoke mode skips it, saying so, with no figures.
    peer = results["benchmarks"]["peer_llamafactory"]
    assert peer["skipped"].startswith("skipped in smoke mode") and "run --quick" in peer["skipped"]
    assert {f["value"] for f in peer["figures"]} == {"skipped"}
    assert "skipped in smoke mode" in doc.split(f"## {peer['title']}")[1]


def test_peer_that_cannot_install_says_why_in_one_line(tmp_path, monkeypatch):
    """Offline (no index, nothing on disk), pip cannot get LLaMA-Factory: the suite records one
    line saying so, not a traceback, and exits 1 (a benchmark that did not run)."""
    from benchmarks import peer_llamafactory, run

    monkeypatch.setattr(peer_llamafactory, "VENV", tmp_path / "venv-llamafactory")  # never the real cache
    monkeypatch.setenv("MF_BENCH_THREADS", "0")  # run.main sets these two: restored after the test
    monkeypatch.setenv("MODELFORGE_HOME", str(tmp_path / "home"))
    for key, value in {"PIP_CONFIG_FILE": "/dev/null", "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(tmp_path)}.items():
        monkeypatch.setenv(key, value)
    out = tmp_path / "out"
    code = run.main(["--quick", "--only", "peer_llamafactory", "--out", str(out), "--work", str(tmp_path / "work")])
    assert code == 1
    error = json.loads((out / "results.json").read_text())["benchmarks"]["peer_llamafactory"]["error"]
    assert error.startswith("LLaMA-Factory could not be installed into") and "llamafactory" in error
    assert "\n" not in error and "Traceback" not in error
    doc = (out / "benchmarks.md").read_text()
    assert "did not run" in doc and "Traceback" not in doc
