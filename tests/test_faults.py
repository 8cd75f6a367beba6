"""Faults of the machine end as a clear failed run or one line, never a traceback or a stuck record.

- a disk that fills up during training (torch's own writer error, and a real full tmpfs when
  this machine lets the tests mount one): the run fails with "the disk is full (N MB free on
  PATH)", the half-written checkpoint is removed, ``--json`` still prints its line, exit 1,
  and the run resumes (with a new --max-steps) once there is space;
- the disk pre-flight measures what a run writes (no fixed 64 MiB slack);
- a data folder that cannot be written: one line naming it and the fix, exit 2, every command;
- a garbage, truncated or empty database: a message naming the file and ``modelforge doctor``,
  which rebuilds the runs and models from the run folders;
- ``train --resume RUN_ID`` honours --max-steps and refuses the flags it cannot honour.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from core.paths import EXAMPLES

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ["train", "--model", "demo", "--dataset", str(EXAMPLES / "identity.json"), "--batch-size", "2",
         "--max-length", "64", "--logging-steps", "1", "--save-steps", "2", "--validation-split", "0"]
WRITER_ERROR = ("[enforce fail at inline_container.cc:672] . unexpected pos 1088 vs 1034 "
                "PytorchStreamWriter failed writing file data/0: file write failed")


@pytest.fixture()
def cli_home(tmp_path, monkeypatch, demo_model):
    home = tmp_path / "home"
    monkeypatch.setenv("MODELFORGE_HOME", str(home))
    (home / "cache").mkdir(parents=True)
    shutil.copytree(demo_model, home / "cache" / demo_model.name)  # the demo, without building it again
    return home


def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    from app.main import main

    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def _store(home: Path):
    from core.records import RecordStore

    return RecordStore(f"sqlite:///{home / 'modelforge.db'}")


# -- disk full ---------------------------------------------------------------------------------------------
def test_disk_full_during_training_is_a_clean_failed_run_that_resumes(cli_home, capsys, monkeypatch):
    import torch

    import core.faults as faults

    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        if "checkpoint-4" in str(f):
            raise RuntimeError(WRITER_ERROR)  # what torch says on a full disk: no errno, no "space"
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    monkeypatch.setattr(faults, "free_bytes", lambda path: 3 * 2**20)
    code, out, err = _cli(capsys, *TRAIN, "--max-steps", "6", "--json")
    assert code == 1, err
    result = json.loads(out.strip().splitlines()[-1])  # --json still prints its line
    assert result["status"] == "failed"
    assert result["error"].startswith("the disk is full (3.0 MB free on "), result
    assert "save_total_limit" in result["hint"] and "checkpoint-4 was removed" in result["error"]
    assert "Traceback" not in err and "Logging error" not in err and len(err.splitlines()) < 25, err
    run_dir = Path(result["output_dir"])
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("checkpoint-*")) == ["checkpoint-2"]
    run = _store(cli_home).get_run(result["run_id"])
    assert run.status == "failed" and run.error.startswith("the disk is full")

    monkeypatch.undo()  # space is back: the run resumes, here with more steps than it had
    monkeypatch.setenv("MODELFORGE_HOME", str(cli_home))
    code, out, err = _cli(capsys, "train", "--resume", result["run_id"], "--max-steps", "8", "--json")
    assert code == 0, err
    done = json.loads(out.strip().splitlines()[-1])
    assert done["status"] == "completed" and done["run_id"] == result["run_id"]
    run = _store(cli_home).get_run(result["run_id"])
    assert run.last_step == 8 and run.config["max_steps"] == 8 and run.attempts == 2
    assert "max_steps: 8" in (run_dir / "config.yaml").read_text()


def _can_mount_tmpfs(tmp_path: Path) -> bool:
    probe = tmp_path / "probe"
    probe.mkdir()
    ok = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(probe)],
                        capture_output=True).returncode == 0
    if ok:
        subprocess.run(["umount", str(probe)], capture_output=True)
    return ok


@pytest.fixture()
def small_disk(tmp_path):
    """An 8 MB tmpfs (needs root and mount rights: skipped elsewhere)."""
    if not _can_mount_tmpfs(tmp_path):
        pytest.skip("cannot mount a tmpfs here (needs root with mount rights)")
    disk = tmp_path / "small"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(disk)], check=True)
    yield disk
    subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def test_a_real_full_disk_in_a_real_process(cli_home, small_disk):
    """The disk really fills up after the first checkpoint (a filler file takes the rest)."""
    env = {**os.environ, "MODELFORGE_HOME": str(cli_home), "PYTHONPATH": str(ROOT)}
    filler = small_disk / "filler"

    def fill():
        deadline = time.time() + 120
        while time.time() < deadline:
            if list(small_disk.glob("*/checkpoints/checkpoint-2/trainer_state.json")):
                with open(filler, "wb") as fh:
                    try:
                        while True:
                            fh.write(b"\0" * 65536)
                            fh.flush()
                    except OSError:
                        return
            time.sleep(0.02)

    thread = threading.Thread(target=fill, daemon=True)
    thread.start()
    out = subprocess.run([sys.executable, "-m", "app.main", *TRAIN, "--max-steps", "8", "--output-dir",
                          str(small_disk), "--json"], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    thread.join(10)
    assert out.returncode == 1, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["status"] == "failed" and result["error"].startswith("the disk is full ("), result
    assert f"free on {small_disk}" in result["error"]
    assert "Traceback" not in out.stderr and "Logging error" not in out.stderr, out.stderr[-2000:]
    run_dir = Path(result["output_dir"])
    assert all((c / "trainer_state.json").exists() for c in (run_dir / "checkpoints").glob("checkpoint-*"))
    assert _store(cli_home).get_run(result["run_id"]).status == "failed"
    filler.unlink()
    out = subprocess.run([sys.executable, "-m", "app.main", "train", "--resume", result["run_id"], "--json"],
                         capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1])["status"] == "completed"


def test_the_disk_preflight_is_honest_about_small_runs(cli_home, monkeypatch):
    from collections import namedtuple

    import core.checks as engine
    from core.checks import checkpoint_bytes, disk_problems
    from core.config import RunConfig

    config = RunConfig(model="demo", dataset=str(EXAMPLES / "identity.json"))
    need = checkpoint_bytes(config)
    assert need < 16 * 2**20, need  # a demo run writes ~2 MB; no fixed 64 MiB on top
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(engine.shutil, "disk_usage", lambda p: usage(2**30, 0, need + 2**20))
    assert disk_problems(config) == []
    monkeypatch.setattr(engine.shutil, "disk_usage", lambda p: usage(2**30, 0, need // 4))
    (problem,) = disk_problems(config)
    assert " MB" in problem.message and "GiB" not in problem.message


# -- resume flags ---------------------------------------------------------------------------------------------
def test_resume_refuses_flags_it_cannot_honour(cli_home, capsys):
    import threading as _t

    from core.engine import prepare_run, run_training
    from core.config import RunConfig
    from core.events import EventLog

    store = _store(cli_home)
    config = RunConfig(model="demo", dataset=str(EXAMPLES / "identity.json"), max_steps=4, batch_size=2,
                       max_length=64, save_steps=2, validation_split=0.0)
    config, run_id, run_dir = prepare_run(config, store)
    stop = _t.Event()
    events = EventLog(run_id)
    events.subscribe(lambda ev: stop.set() if ev.type == "checkpoint" else None)
    assert run_training(config, store, events, run_id, run_dir, stop_event=stop).status == "cancelled"
    for flags, words in ((["--lora-r", "4"], "--lora-r cannot change"), (["--dataset", "x.json"], "--dataset"),
                         (["--max-steps", "1"], "give a --max-steps above"), (["--max-steps", "nan"], "--max-steps"),
                         (["--config", "x.yaml"], "--config cannot")):
        code, out, err = _cli(capsys, "train", "--resume", run_id, *flags)
        assert code == 2 and words in err, (flags, err)
    # Compiling changes the speed, not the training: a resume may turn it on or off.
    from app.main import build_parser, resumed_config

    args = build_parser().parse_args(["train", "--resume", run_id, "--compile", "off", "--max-steps", "6"])
    resumed = resumed_config(args, store.get_run(run_id), str(run_dir / "checkpoints" / "checkpoint-2"))
    assert (resumed.compile, resumed.max_steps, resumed.lora_r) == ("off", 6, config.lora_r)
    assert store.get_run(run_id).status == "cancelled" and store.get_run(run_id).config["max_steps"] == 4


# -- the data folder ----------------------------------------------------------------------------------------
COMMANDS = [["runs"], ["models"], ["doctor"], ["train", "--model", "demo", "--dataset", "x.json"],
            ["generate", "--model", "demo", "--prompt", "hi"], ["ui", "--port", "1"], ["runs", "--json"]]


def _unusable_homes(tmp_path: Path) -> list[Path]:
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    homes = [a_file / "home", a_file]
    if _can_mount_tmpfs(tmp_path):
        ro = tmp_path / "ro"
        ro.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(ro)], check=True)
        homes += [ro, ro / "sub"]
    return homes


def test_an_unwritable_data_folder_is_one_line_and_exit_2_for_every_command(tmp_path, monkeypatch, capsys):
    homes = _unusable_homes(tmp_path)
    try:
        for home in homes:
            monkeypatch.setenv("MODELFORGE_HOME", str(home))
            for argv in COMMANDS:
                code, out, err = _cli(capsys, *argv)
                assert code == 2, (home, argv, err)
                lines = err.strip().splitlines()
                assert len(lines) == 1 and str(home) in lines[0] and "MODELFORGE_HOME" in lines[0], (argv, err)
                if "--json" in argv:
                    assert json.loads(out)["error"] == "DataFolderError"
        # ...and in a real process (the app's entry point too)
        env = {**os.environ, "MODELFORGE_HOME": str(homes[0]), "PYTHONPATH": str(ROOT)}
        for argv in (["ui", "--port", "1"], ["runs"]):
            out = subprocess.run([sys.executable, "-m", "app.main", *argv], capture_output=True, text=True,
                                 env=env, cwd=ROOT, timeout=120)
            assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr
    finally:
        for home in homes:
            if home.name == "ro":
                subprocess.run(["umount", "-l", str(home)], capture_output=True)


# -- a damaged database ------------------------------------------------------------------------------------
@pytest.fixture()
def trained_home(cli_home, capsys):
    """A data folder with one completed run (and its model) and one stopped run."""
    code, out, err = _cli(capsys, *TRAIN, "--max-steps", "2", "--json")
    assert code == 0, err
    done = json.loads(out.strip().splitlines()[-1])
    return cli_home, done


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_a_damaged_database_is_named_and_doctor_rebuilds_it(trained_home, capsys, damage):
    home, done = trained_home
    db = home / "modelforge.db"
    for side in (home / "modelforge.db-wal", home / "modelforge.db-shm"):
        side.unlink(missing_ok=True)
    data = db.read_bytes()
    db.write_bytes({"garbage": os.urandom(8192), "truncated": data[:3000], "empty": b""}[damage])
    for argv in (["runs"], ["models"], ["train", *TRAIN[1:], "--max-steps", "1"]):
        code, out, err = _cli(capsys, *argv)
        assert code == 2, (argv, err)
        assert str(db) in err and "modelforge doctor" in err and "Traceback" not in err, err
        assert len(err.strip().splitlines()) <= 2
    code, out, err = _cli(capsys, "doctor", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["state"] == {"empty": "empty"}.get(damage, "damaged")
    assert report["runs_restored"] == [done["run_id"]] and report["models_restored"] == [done["model_id"]], json.dumps(report)[-900:]
    assert Path(report["moved_to"]).exists()
    code, out, err = _cli(capsys, "models", "--json")
    models = json.loads(out)
    assert [m["id"] for m in models] == [done["model_id"]] and models[0]["path"] == done["model_dir"]
    runs = json.loads(_cli(capsys, "runs", "--json")[1])
    assert runs[0]["status"] == "completed" and runs[0]["last_step"] == 2
    assert _store(home).metrics(done["run_id"])  # the loss curve is back too
    code, out, err = _cli(capsys, "doctor", "--json")  # again: nothing to do, nothing changed
    again = json.loads(out)
    assert again["state"] == "ok" and again["runs_restored"] == [] and again["already"] == 1
