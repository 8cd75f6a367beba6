"""No lost work: a training process killed mid-run is seen as interrupted and resumes where it was."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.test_cli import ROOT, mf


@pytest.fixture()
def home(tmp_path, mf_home):
    import shutil

    cache = Path(mf_home) / "cache"
    if cache.exists():
        shutil.copytree(cache, tmp_path / "cache", dirs_exist_ok=True)
    return tmp_path


@pytest.mark.slow
def test_sigkill_mid_run_marks_interrupted_and_resume_continues(home, shared_data, demo_model):
    env = {**os.environ, "MODELFORGE_HOME": str(home)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.main", "train", "--model", "demo", "--dataset",
         str(shared_data / "identity.json"), "--max-steps", "150", "--save-steps", "5", "--batch-size", "2",
         "--max-length", "96", "--logging-steps", "1", "--validation-split", "0", "--name", "killme"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 180
        run_dir = None
        while time.time() < deadline:
            ckpts = list((home / "runs").glob("run-*/checkpoints/checkpoint-*"))
            if ckpts:
                run_dir = ckpts[0].parents[1]
                break
            time.sleep(0.5)
        assert run_dir is not None, "no checkpoint appeared"
        time.sleep(1.0)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)

    runs = json.loads(mf("runs", "--json", home=home).stdout)
    assert runs[0]["status"] == "interrupted", runs[0]
    assert "resume" in runs[0]["error"]
    assert json.loads(mf("models", "--json", home=home).stdout) == []
    # The kill may land while a checkpoint is being written: resume uses the newest complete one.
    ckpts = sorted(int(p.name.split("-")[1]) for p in (run_dir / "checkpoints").glob("checkpoint-*")
                   if (p / "trainer_state.json").exists())
    last = ckpts[-1]

    out = mf("train", "--resume", runs[0]["id"], "--json", home=home, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["status"] == "completed" and result["run_id"] == runs[0]["id"]

    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    starts = [i for i, e in enumerate(events) if e["type"] == "started"]
    assert len(starts) == 2
    resumed_steps = [e["step"] for e in events[starts[1]:] if e["type"] == "step"]
    assert min(resumed_steps) == last + 1  # the same global step, not from zero
    assert max(resumed_steps) == 150
    # Loss continuity: the first losses after resuming are in line with those before the kill.
    before = [e["data"]["loss"] for e in events[:starts[1]] if e["type"] == "step" and e["step"] <= last][-5:]
    after = [e["data"]["loss"] for e in events[starts[1]:] if e["type"] == "step"][:5]
    assert abs(sum(after) / len(after) - sum(before) / len(before)) < 1.5
    assert len(json.loads(mf("models", "--json", home=home).stdout)) == 1
