"""The engine end to end on the demo model: train, record, reload; stop, resume; failures."""

from __future__ import annotations

import json
import time
from pathlib import Path


from core.config import RunConfig
from core.engine import prepare_run, run_training
from core.events import EventLog, read_events
from core.jobs import JobManager, last_checkpoint
from tests.helpers import assert_answers


def _config(dataset: Path, **kw) -> RunConfig:
    base = dict(model="demo", dataset=str(dataset), max_steps=4, batch_size=2, max_length=128,
                logging_steps=1, save_steps=2, validation_split=0.25, learning_rate=1e-3,
                compare_after_training=False)  # base vs tuned is tests/test_compare_eval.py's (it costs time)
    base.update(kw)
    return RunConfig(**base)


def test_sft_trains_records_and_reloads(store, small_alpaca, demo_model):
    config, run_id, run_dir = prepare_run(_config(small_alpaca), store)
    result = run_training(config, store, EventLog(run_id), run_id, run_dir)
    assert result.status == "completed", result.error

    types = [e.type for e in read_events(run_dir / "events.jsonl")]
    assert types[0] == "started" and types[-1] == "finished"
    assert {"step", "eval", "checkpoint"} <= set(types)

    losses = [p.value for p in store.metrics(run_id) if p.name == "loss"]
    assert len(losses) >= 4 and all(v > 0 for v in losses)
    record = store.get_model(result.model_id)
    assert {"eval_loss", "perplexity", "train_loss"} <= set(record.metrics)
    assert record.path == str(run_dir / "model")

    # LoRA B matrices start at zero: non-zero now means the adapter really trained.
    from safetensors.torch import load_file

    weights = load_file(str(run_dir / "model" / "adapter_model.safetensors"))
    lora_b = [t for k, t in weights.items() if "lora_B" in k]
    assert lora_b and any(float(t.abs().sum()) > 0 for t in lora_b)

    from core.inference import load_model

    lm = load_model(record.path)
    assert type(lm.model).__name__ == "PeftModelForCausalLM"
    assert_answers(lm, "Give three tips for staying healthy.", 8)
    card = json.loads((run_dir / "model" / "modelforge.json").read_text())
    assert card["base_model"] == "demo" and card["run_id"] == run_id


def test_missing_model_fails_cleanly_without_a_model_record(store, small_alpaca, tmp_path):
    config, run_id, run_dir = prepare_run(_config(small_alpaca, model=str(tmp_path / "nope")), store)
    result = run_training(config, store, EventLog(run_id), run_id, run_dir)
    assert result.status == "failed" and not result.fault
    assert "not found" in result.error
    assert store.get_run(run_id).status == "failed"
    assert store.list_models() == []
    assert read_events(run_dir / "events.jsonl")[-1].type == "failed"


def test_bad_rows_fail_before_training_and_name_the_line(store, tmp_path, demo_model):
    bad = tmp_path / "bad.jsonl"
    lines = [json.dumps({"instruction": f"q{i}", "output": f"a{i}"}) for i in range(10)]
    lines[6] = json.dumps({"instruction": "q", "output": None})
    bad.write_text("\n".join(lines))
    config, run_id, run_dir = prepare_run(_config(bad), store)
    result = run_training(config, store, EventLog(run_id), run_id, run_dir)
    assert result.status == "failed"
    failed = read_events(run_dir / "events.jsonl")[-1]
    assert any(p["line"] == 7 and p["field"] == "output" for p in failed.data["problems"])
    assert store.list_models() == []


def _wait_for(predicate, timeout=120.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    raise AssertionError("condition not met in time")


def test_stop_keeps_a_checkpoint_and_resume_continues_from_it(store, small_alpaca, demo_model):
    jobs = JobManager(store)
    run_id = jobs.submit(_config(small_alpaca, max_steps=40, save_steps=100, validation_split=0.0, name="stopme"))
    # A second run while the first trains waits in the queue with a clear message.
    second = jobs.submit(_config(small_alpaca, max_steps=2, validation_split=0.0, name="second"))
    assert "waiting" in jobs.events(second)[0].data["message"]

    _wait_for(lambda: any(e.type == "step" and e.step >= 3 for e in jobs.events(run_id)))
    assert jobs.stop(run_id)
    assert jobs.wait(run_id, timeout=120) == "cancelled"
    stopped_at = store.get_run(run_id).last_step
    ckpt = last_checkpoint(store.get_run(run_id).output_dir)
    assert ckpt is not None and ckpt.endswith(f"checkpoint-{stopped_at}")
    assert [m.name for m in store.list_models()] == [] or all(m.run_id != run_id for m in store.list_models())

    assert jobs.wait(second, timeout=120) == "completed"
    n_before = len(jobs.events(run_id))
    jobs.resume(run_id)
    assert jobs.wait(run_id, timeout=180) == "completed"
    new_steps = [e.step for e in jobs.events(run_id)[n_before:] if e.type == "step"]
    assert new_steps and min(new_steps) > stopped_at  # continued, did not start over
    assert max(new_steps) == 40
    assert store.get_run(run_id).model_id is not None


def test_preflight_refuses_an_obviously_too_large_run_with_fixes(small_alpaca, monkeypatch):
    import core.hardware as hardware
    from core.engine import preflight

    real = hardware.probe()
    monkeypatch.setattr(hardware, "probe", lambda *a, **k: real.__class__(
        **{**real.__dict__, "ram_total_gib": 8.0, "ram_available_gib": 4.0}))
    problems = preflight(RunConfig(model="mistralai/Mistral-7B-Instruct-v0.3", dataset=str(small_alpaca),
                                   precision="fp32", max_length=2048, batch_size=8))
    assert len(problems) == 1 and problems[0].field == "model"
    assert "GiB" in problems[0].message and "4" in problems[0].hint


def test_preflight_accepts_the_demo(small_alpaca):
    from core.engine import preflight

    assert preflight(RunConfig(model="demo", dataset=str(small_alpaca))) == []


def test_one_start_press_runs_each_check_once(store, small_alpaca, monkeypatch):
    """Start (the form's button and the start_training API) runs the config validation, the memory
    estimate and the duplicate-run check once each, with the plugins' adjustments applied before
    them: qlora's 4-bit base is what the estimate sees and what the run records."""
    import threading
    from collections import Counter

    import core.jobs as jobs_mod
    import core.memory as memory
    from components.common import AppContext
    from components.train_tab import start_training
    from core import checks
    from core.run import RunResult

    release = threading.Event()

    def blocked_run(config, store_, events, run_id, run_dir, **kw):  # holds the device, trains nothing
        release.wait(60)
        store_.finish_run(run_id, "cancelled")
        return RunResult(run_id, "cancelled", str(run_dir))

    monkeypatch.setattr(jobs_mod, "run_training", blocked_run)
    ctx = AppContext(store=store, jobs=JobManager(store))
    queued: list[str] = []
    try:
        first = start_training(ctx, _config(small_alpaca, name="first", max_steps=3))["run_id"]
        calls: Counter = Counter()
        estimated: list[RunConfig] = []

        def count(module, name, keep=None):
            real = getattr(module, name)

            def wrapper(*a, **k):
                calls[name] += 1
                if keep is not None:
                    keep.append(a[0])
                return real(*a, **k)

            monkeypatch.setattr(module, name, wrapper)

        count(checks, "validate_config")
        count(memory, "estimate_for_run", estimated)
        count(jobs_mod, "_same_run")  # one run is active: the check compares with it once

        second = start_training(ctx, _config(small_alpaca, name="second", strategy="qlora", max_steps=3))
        queued.append(second["run_id"])
        assert second["queued"] and second["run_id"] != first
        assert calls == {"validate_config": 1, "estimate_for_run": 1, "_same_run": 1}, calls
        assert estimated[0].quantization == "4bit"  # adjust_config ran before the pre-flight
        assert store.get_run(second["run_id"]).config["quantization"] == "4bit"
    finally:
        # The queued run must not start for real once this test's stand-in is gone: a trainer
        # thread still running at the interpreter's exit aborts the whole pytest process.
        for run_id in queued:
            ctx.jobs.stop(run_id)
        release.set()
        deadline = time.time() + 60
        while (ctx.jobs.current or ctx.jobs.waiting()) and time.time() < deadline:
            time.sleep(0.1)
