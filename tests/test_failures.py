"""Failures inside training end the run as ``failed`` with what happened and what to change.

Each failure is injected where it really happens: out of memory inside the model's forward pass,
a NaN loss from poisoned weights, ENOSPC from the checkpoint writer, a corrupt weights file at
load time. After each one the same job manager trains the next run (the app stays usable), no
model record is left behind, and the events file ends with ``failed``.
"""

from __future__ import annotations

import errno
import json
import shutil
from collections import namedtuple
from pathlib import Path

import pytest
import torch

from core.callback import EventCallback
from core.config import RunConfig
from core import checks
from core.checks import checkpoint_bytes, disk_problems, preflight
from core.engine import prepare_run, run_training
from core.events import EventLog, read_events
from core.jobs import JobManager, last_checkpoint
from core.paths import EXAMPLES

DiskUsage = namedtuple("DiskUsage", "total used free")


def _config(**kw) -> RunConfig:
    base = dict(model="demo", dataset=str(EXAMPLES / "identity.json"), max_steps=4, batch_size=2, max_length=64,
                logging_steps=1, save_steps=2, validation_split=0.0, learning_rate=1e-3)
    base.update(kw)
    return RunConfig(**base)


def _train(store, config: RunConfig, resume_from: str | None = None, run_id: str | None = None):
    if run_id is None:
        config, run_id, run_dir = prepare_run(config, store)
    else:
        run_dir = Path(store.get_run(run_id).output_dir)
    return run_training(config, store, EventLog(run_id), run_id, run_dir, resume_from=resume_from), run_dir


def _at_step(monkeypatch, step: int, action) -> None:
    """Run ``action(model)`` when the trainer begins optimizer step ``step`` (1-based)."""
    def on_step_begin(self, args, state, control, model=None, **kwargs):
        if state.global_step == step - 1:
            action(model)
    monkeypatch.setattr(EventCallback, "on_step_begin", on_step_begin, raising=False)


def _assert_failed_cleanly(store, result, run_dir, *words):
    assert result.status == "failed", result
    assert not result.fault  # the user can act on it: not reported as a bug
    for word in words:
        assert word in (result.error + " " + result.hint).lower(), (result.error, result.hint)
    run = store.get_run(result.run_id)
    assert run.status == "failed" and run.model_id is None and "fix:" in run.error
    assert all(m.run_id != result.run_id for m in store.list_models())
    last = read_events(run_dir / "events.jsonl")[-1]
    assert last.type == "failed" and last.data["message"] == result.error and last.data["hint"] == result.hint
    assert store.consistency_problems() == []


@pytest.mark.parametrize("error", [
    torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 7.79 GiB total capacity)"),
    MemoryError(),  # what CPU training raises when an allocation fails
], ids=["cuda-oom", "cpu-memoryerror"])
def test_out_of_memory_at_a_step_fails_with_a_fix(store, demo_model, monkeypatch, error):
    def exhaust(model):
        def allocate(module, inputs):
            raise error
        model.register_forward_pre_hook(allocate)  # the next forward pass runs out of memory

    _at_step(monkeypatch, 2, exhaust)
    result, run_dir = _train(store, _config())
    _assert_failed_cleanly(store, result, run_dir, "out of memory", "batch_size", "gradient_checkpointing")
    assert store.get_run(result.run_id).last_step == 1


def test_the_job_manager_trains_again_after_a_failure(store, demo_model, monkeypatch):
    """Out of memory in one run; the next run on the same manager (the app's) completes."""
    jobs = JobManager(store)

    def allocate(module, inputs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 512.00 MiB")

    def exhaust(model):
        model.register_forward_pre_hook(allocate)

    _at_step(monkeypatch, 2, exhaust)
    first = jobs.submit(_config(name="will-oom"))
    assert jobs.wait(first, timeout=120) == "failed"
    monkeypatch.undo()
    second = jobs.submit(_config(name="after-oom", seed=7))
    assert jobs.wait(second, timeout=120) == "completed"
    run = store.get_run(second)
    assert run.model_id and store.get_model(run.model_id)
    # The disk estimate of pre-flight covers what the run really wrote (checkpoints + model).
    run_dir = Path(run.output_dir)
    written = sum(f.stat().st_size for d in ("checkpoints", "model") for f in (run_dir / d).rglob("*") if f.is_file())
    assert written <= checkpoint_bytes(_config())


def test_nan_loss_fails_the_run_instead_of_completing_it(store, demo_model, monkeypatch):
    """transformers hides a NaN step loss by default (logging_nan_inf_filter): the engine must not."""
    def poison(model):
        with torch.no_grad():
            for p in model.parameters():
                if p.requires_grad:
                    p.fill_(float("nan"))

    _at_step(monkeypatch, 3, poison)
    result, run_dir = _train(store, _config(max_steps=6))
    _assert_failed_cleanly(store, result, run_dir, "nan", "learning_rate")
    losses = [e.data["loss"] for e in read_events(run_dir / "events.jsonl") if e.type == "step"]
    assert losses[:2] == [pytest.approx(v) for v in losses[:2]] and losses[-1] != losses[-1]  # finite, then NaN
    assert len(losses) == 3  # stopped at the first NaN, not trained on for three more steps


def test_every_trainer_config_logs_a_nan_loss_as_nan(tmp_path):
    """The arguments every strategy builds its trainer from turn transformers' NaN filter off
    themselves, so the NaN check does not hang on the engine's guard callback reaching the trainer."""
    from types import SimpleNamespace

    from transformers import TrainingArguments

    from core.strategies.common import training_kwargs

    ctx = SimpleNamespace(config=RunConfig(), eval_rows=[], checkpoint_dir=tmp_path, device="cpu", dtype="fp32")
    for lora in (True, False):
        kw = training_kwargs(ctx, lora=lora)
        assert kw["logging_nan_inf_filter"] is False
        assert TrainingArguments(**kw).logging_nan_inf_filter is False


def test_disk_full_while_saving_a_checkpoint_keeps_the_good_one_and_resumes(store, demo_model, monkeypatch):
    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        if "checkpoint-4" in str(f):
            raise OSError(errno.ENOSPC, "No space left on device", str(f))
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    config = _config(max_steps=6)
    result, run_dir = _train(store, config)
    _assert_failed_cleanly(store, result, run_dir, "disk is full", "free disk space", "resume")
    assert "checkpoint-4 was removed" in result.error  # half-written: it could not be resumed from
    ckpts = sorted(p.name for p in (run_dir / "checkpoints").glob("checkpoint-*"))
    assert ckpts == ["checkpoint-2"]

    monkeypatch.undo()  # space freed: resume continues from the last complete checkpoint
    resumed, _ = _train(store, RunConfig.from_dict(store.get_run(result.run_id).config),
                        resume_from=last_checkpoint(run_dir), run_id=result.run_id)
    assert resumed.status == "completed", resumed.error
    run = store.get_run(result.run_id)
    assert run.attempts == 2 and run.last_step == 6
    steps = [e.step for e in read_events(run_dir / "events.jsonl") if e.type == "step"]
    assert steps[-3:] == [4, 5, 6]


def test_a_half_written_checkpoint_is_never_resumed_from(tmp_path):
    (tmp_path / "checkpoints" / "checkpoint-2").mkdir(parents=True)
    (tmp_path / "checkpoints" / "checkpoint-2" / "trainer_state.json").write_text("{}")
    (tmp_path / "checkpoints" / "checkpoint-4").mkdir()  # killed mid-save: no trainer_state.json
    assert last_checkpoint(tmp_path).endswith("checkpoint-2")


@pytest.mark.parametrize("damage", ["truncated-weights", "config-not-json"])
def test_a_model_that_cannot_load_fails_with_a_fix(store, demo_model, tmp_path, damage):
    broken = tmp_path / "broken-model"
    shutil.copytree(demo_model, broken)
    if damage == "truncated-weights":
        weights = next(broken.glob("*.safetensors"))
        weights.write_bytes(weights.read_bytes()[:1000])
    else:
        (broken / "config.json").write_text("{not json")
    result, run_dir = _train(store, _config(model=str(broken)))
    _assert_failed_cleanly(store, result, run_dir, "could not load model", str(broken).lower())
    assert any(w in result.hint for w in ("corrupt", "holds a"))


def test_preflight_refuses_a_run_whose_checkpoints_do_not_fit_on_disk(monkeypatch, tmp_path):
    import core.engine as engine

    config = _config(save_total_limit=3, output_dir=str(tmp_path / "not-yet" / "runs"))
    need = checkpoint_bytes(config)
    assert need and need > checks.DISK_SLACK_BYTES
    seen = []

    def disk_usage(path):
        seen.append(Path(path))
        return DiskUsage(total=100 * 2**30, used=100 * 2**30 - need // 2, free=need // 2)

    monkeypatch.setattr(checks.shutil, "disk_usage", disk_usage)
    problems = preflight(config)
    assert [p.field for p in problems] == ["output_dir"], problems
    text = str(problems[0])
    assert "GiB" in text and "free" in text and "save_total_limit (now 3)" in text
    assert seen == [tmp_path]  # the disk the run folder will be on (its nearest existing folder)
    # More checkpoints kept: more disk needed.
    assert checkpoint_bytes(config.replace(save_total_limit=6)) > need
    monkeypatch.setattr(checks.shutil, "disk_usage", lambda p: DiskUsage(100 * 2**30, 0, 100 * 2**30))
    assert disk_problems(config) == []


def test_cli_train_refuses_a_full_disk_and_records_nothing(monkeypatch, tmp_path, capsys):
    import core.engine as engine
    from app.main import main

    monkeypatch.setenv("MODELFORGE_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(checks.shutil, "disk_usage", lambda p: DiskUsage(2**30, 2**30 - 2**20, 2**20))
    code = main(["train", "--model", "demo", "--dataset", str(EXAMPLES / "identity.json"), "--max-steps", "2"])
    err = capsys.readouterr().err
    assert code == 2 and "output_dir" in err and "free disk space" in err, err
    assert not (tmp_path / "home" / "runs").exists() or not any((tmp_path / "home" / "runs").iterdir())
    assert main(["runs", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []
