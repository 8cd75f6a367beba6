"""Training speed settings: ``compile: auto|on|off`` (core/speed.py) and bf16 on a CPU, for real.

The decision functions are arithmetic, tested on their inputs; the runs are real (the demo model,
real SQLite, real trainer): bf16 weights train to fp32's loss; compiled runs (packed and resumed
compiled or eager, DPO/KTO/ORPO, two DDP processes with length grouping) log what eager runs log,
save plain LoRA names and reload; a broken C++ compiler makes a run train eager, saying why.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from core import speed
from core.config import RunConfig, config_problems
from core.engine import prepare_run, run_training
from core.events import EventLog, read_events


def _config(dataset: Path, **kw) -> RunConfig:
    base = dict(model="demo", dataset=str(dataset), max_steps=4, batch_size=2, max_length=128,
                logging_steps=1, save_steps=100, validation_split=0.0, learning_rate=1e-3,
                compare_after_training=False)
    base.update(kw)
    return RunConfig(**base)


# -- the compile decision ------------------------------------------------------------------------------------
def _plan(config: RunConfig, **kw):
    args = dict(device="cpu", params=29_000_000, num_layers=4, train_tokens=1e6, threads=2, dtype="bf16")
    args.update(kw)
    return speed.compile_plan(config, **args)


def test_compile_off_and_on_are_obeyed():
    assert not _plan(RunConfig(compile="off")).enabled
    plan = _plan(RunConfig(compile="on"), train_tokens=10)
    assert plan.enabled and plan.compile_s == speed.expected_compile_s(4)


def test_compile_auto_pays_only_on_long_runs():
    cost = speed.expected_compile_s(4)
    # Tokens whose eager time saves exactly PAYBACK_MARGIN x the compile time: the break-even.
    per_s = speed.CPU_TOKENS_PARAMS_PER_CORE_BF16 * 2 / 29e6
    even = speed.PAYBACK_MARGIN * cost / speed.STEP_TIME_SAVED * per_s
    short, long_ = _plan(RunConfig(), train_tokens=even * 0.9), _plan(RunConfig(), train_tokens=even * 1.1)
    assert not short.enabled and "too short/small to win back" in short.reason and f"~{cost:.0f} s" in short.reason
    assert long_.enabled and long_.compile_s == cost
    # The demo model (0.9M) on a typical demo run: nowhere near paying.
    demo = _plan(RunConfig(), params=900_000, num_layers=2, train_tokens=3 * 999 * 100)
    assert not demo.enabled and demo.reason.startswith("off (auto: run too short/small")


def test_several_ddp_processes_compile():
    """Measured (test_two_compiled_processes_train_like_one_eager_process): DDP + compile trains
    right, so it is allowed; sharded engines (GPU-only) are not measured and fall back."""
    assert _plan(RunConfig(compile="on", num_processes=2)).enabled


@pytest.mark.parametrize("change, device, why", [
    (dict(num_processes=2, distributed="fsdp"), "cpu", "fsdp"),
    (dict(quantization="4bit"), "cpu", "quantised"),
    ({}, "mps", "Apple MPS"),
])
def test_compile_falls_back_saying_why(change, device, why):
    plan = _plan(RunConfig(compile="on", **change), device=device)
    assert not plan.enabled and plan.reason.startswith("off: cannot compile here") and why in plan.reason


def test_compile_falls_back_without_a_compiler(monkeypatch):
    monkeypatch.setattr(speed.shutil, "which", lambda name: None)
    plan = _plan(RunConfig(compile="on"))
    assert not plan.enabled and "no C++ compiler" in plan.reason


def test_compile_failures_are_told_from_other_errors():
    """The engine trains eager only after a compile failure (inductor's, even wrapped in another
    error), never after the run's own errors."""
    from torch._inductor.exc import CppCompileError, InductorError

    try:
        raise CppCompileError(["g++", "k.cpp"], "g++: broken")
    except CppCompileError as inner:
        failed = InductorError(inner, None)
    assert speed.compile_failure(failed).startswith("InductorError: CppCompileError: C++ compile error")
    wrapped = RuntimeError("in the trainer")
    wrapped.__cause__ = failed
    assert speed.compile_failure(wrapped).startswith("InductorError:")
    assert speed.compile_failure(RuntimeError("CUDA out of memory")) == ""
    assert speed.compile_failure(ValueError("bad value")) == ""


def test_a_compile_failure_after_trained_steps_ends_the_run_in_one_line():
    """Before the first step the engine trains eager instead (test_a_broken_compiler_...); after steps
    were trained, redoing them would log them twice: the run fails, saying how to go on."""
    from types import SimpleNamespace

    from torch._inductor.exc import CppCompileError, InductorError

    from core.engine import _compile_failed_first
    from core.errors import TrainingError

    failed = InductorError(CppCompileError(["g++"], "g++: broken"), None)
    compiled = SimpleNamespace(compile_model=True)
    assert _compile_failed_first(compiled, SimpleNamespace(steps_done=0, step=0), failed).startswith("InductorError")
    assert _compile_failed_first(SimpleNamespace(compile_model=False), SimpleNamespace(steps_done=0), failed) == ""
    assert _compile_failed_first(compiled, SimpleNamespace(steps_done=0), ValueError("x")) == ""
    with pytest.raises(TrainingError) as info:
        _compile_failed_first(compiled, SimpleNamespace(steps_done=3, step=7), failed)
    assert info.value.message.startswith("torch.compile failed at step 7 (InductorError: ")
    assert "--compile off" in info.value.hint and "\n" not in info.value.message


def test_compile_is_a_checked_choice():
    problems = config_problems(RunConfig(compile="yes"))
    assert any(p.field == "compile" for p in problems)


# -- real runs -----------------------------------------------------------------------------------------------
def _final_loss(store, run_id: str) -> float:
    losses = sorted((p.step, p.value) for p in store.metrics(run_id) if p.name == "loss")
    return losses[-1][1]


@pytest.mark.slow
def test_bf16_weights_on_a_cpu_train_to_the_fp32_loss(store, small_alpaca, demo_model):
    """precision bf16 on a CPU (bf16 base under autocast, fp32 adapters: what auto trains with bf16
    matrix units) ends within 1% of fp32's loss on the same steps and data, and its adapter is fp32."""
    losses = {}
    for precision in ("fp32", "bf16"):
        config, run_id, run_dir = prepare_run(_config(small_alpaca, precision=precision, max_steps=8,
                                                      name=f"prec-{precision}"), store)
        result = run_training(config, store, EventLog(run_id), run_id, run_dir)
        assert result.status == "completed", result.error
        losses[precision] = _final_loss(store, run_id)
        if precision == "bf16":
            from safetensors.torch import load_file

            weights = load_file(str(run_dir / "model" / "adapter_model.safetensors"))
            assert {str(t.dtype) for t in weights.values()} == {"torch.float32"}
    assert abs(losses["bf16"] - losses["fp32"]) / losses["fp32"] < 0.01, losses


def test_auto_compile_stays_off_for_the_demo_and_says_why(store, small_alpaca, demo_model):
    config, run_id, run_dir = prepare_run(_config(small_alpaca, max_steps=1, name="auto-compile"), store)
    result = run_training(config, store, EventLog(run_id), run_id, run_dir)
    assert result.status == "completed", result.error
    messages = [e.data.get("message", "") for e in read_events(run_dir / "events.jsonl") if e.type == "log"]
    assert any(m.startswith("torch.compile off (auto: run too short/small to win back ~") for m in messages), messages
    assert not any(m.startswith("compiling, ~") for m in messages)


# -- compiled runs: packing and resume, preference strategies, several processes, a broken compiler --------
def _attempts(run_dir: Path) -> list[dict[int, float]]:
    """The step losses of each attempt of a run (a resume starts a new one), from its events file."""
    out: list[dict[int, float]] = []
    for e in read_events(run_dir / "events.jsonl"):
        if e.type == "started":
            out.append({})
        elif e.type == "step" and e.data.get("loss") is not None:
            out[-1][e.step] = e.data["loss"]
    return out


def _graphs_compiled_during(run):
    """Run ``run()`` and return how many graphs torch.compile (dynamo) captured meanwhile in this
    process: proof that a run said to be compiled really was. Dynamo's in-memory code cache is
    emptied first: an earlier test's compiled code could otherwise serve this run unseen."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    result = run()
    return result, counters["stats"]["unique_graphs"]


def _no_compile_prefix(folder: Path) -> None:
    """Saved weights carry the model's own names, not torch.compile's wrapper's (``_orig_mod.``):
    an eager run, `modelforge generate` and peft load them."""
    from safetensors.torch import load_file

    keys = list(load_file(str(folder / "adapter_model.safetensors")))
    assert keys and not [k for k in keys if "_orig_mod" in k], keys[:3]


@pytest.mark.slow
def test_a_compiled_packed_run_resumes_compiled_and_eager(store, small_alpaca, demo_model):
    """Packing under torch.compile, stopped at a checkpoint (step 2) and resumed twice from it: compiled
    and with compile off. Both continuations log the same losses (compiled steps compute what eager
    ones do), the checkpoint and the model hold plain LoRA names, and the model reloads."""
    config, run_id, run_dir = prepare_run(_config(small_alpaca, compile="on", packing=True, precision="fp32",
                                                  max_steps=2, save_steps=2, name="compiled-packed"), store)
    result, graphs = _graphs_compiled_during(lambda: run_training(config, store, EventLog(run_id), run_id, run_dir))
    assert result.status == "completed", result.error
    assert graphs > 0
    checkpoint = run_dir / "checkpoints" / "checkpoint-2"
    _no_compile_prefix(checkpoint)
    for compile_ in ("on", "off"):
        resumed = run_training(config.replace(max_steps=4, compile=compile_), store, EventLog(run_id), run_id,
                               run_dir, resume_from=str(checkpoint))
        assert resumed.status == "completed", resumed.error
    first, compiled, eager = _attempts(run_dir)
    assert sorted(first) == [1, 2] and sorted(compiled) == sorted(eager) == [3, 4]
    assert compiled == pytest.approx(eager, abs=1e-3)
    assert compiled[4] != pytest.approx(first[2], abs=1e-3)  # the resumed steps trained on other data
    messages = [e.data.get("message", "") for e in read_events(run_dir / "events.jsonl") if e.type == "log"]
    assert [m.split(" (")[0] for m in messages if m.startswith("torch.compile")] == ["torch.compile on"] * 2 + [
        "torch.compile off"]
    assert len([m for m in messages if m.startswith("compiling, ~")]) == 2  # the Train tab's "compiling, ~N s"
    _no_compile_prefix(run_dir / "model")

    from core.inference import load_model
    from tests.helpers import assert_answers

    assert_answers(load_model(str(run_dir / "model")), "Give three tips for staying healthy.", 4)


@pytest.fixture()
def dpo_rows(tmp_path, shared_data) -> Path:
    import json

    path = tmp_path / "dpo16.json"
    path.write_text(json.dumps(json.loads((shared_data / "dpo_en_demo.json").read_text())[:16]))
    return path


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["dpo", "kto", "orpo"])
def test_preference_strategies_compile_and_train_like_eager(strategy, store, dpo_rows, demo_model):
    """DPO (its reference model is the same model with the adapter off), KTO and ORPO compile and log
    the eager run's losses, step for step, and their compiled adapters reload."""
    losses = {}
    for compile_ in ("off", "on"):
        config, run_id, run_dir = prepare_run(_config(dpo_rows, strategy=strategy, compile=compile_, max_steps=2,
                                                      max_length=64, precision="fp32",
                                                      name=f"{strategy}-{compile_}"), store)
        result, graphs = _graphs_compiled_during(
            lambda: run_training(config, store, EventLog(run_id), run_id, run_dir))
        assert result.status == "completed", result.error
        assert (graphs > 0) == (compile_ == "on"), graphs
        messages = [e.data.get("message", "") for e in read_events(run_dir / "events.jsonl") if e.type == "log"]
        assert any(m.startswith(f"torch.compile {compile_} (compile: {compile_})") for m in messages), messages
        (losses[compile_],) = _attempts(run_dir)
    assert sorted(losses["on"]) == [1, 2] and losses["on"] == pytest.approx(losses["off"], abs=1e-3)
    _no_compile_prefix(run_dir / "model")

    from core.inference import load_model

    assert type(load_model(str(run_dir / "model")).model).__name__ == "PeftModelForCausalLM"


@pytest.mark.slow
def test_two_compiled_processes_train_like_one_eager_process(tmp_path, store, demo_model):
    """DDP + torch.compile on two CPU processes (gloo), batches grouped by length (the default: two
    batch lengths, so a recompile), follows one eager process with the same effective batch step
    for step (tests/test_distributed.py's proof, compiled), and its model reloads."""
    import json

    from core.inference import load_model
    from tests.test_distributed import GRAD_NORM_RTOL, LOSS_TOL, ROOT, TRAIN, _curves

    data = tmp_path / "identity48.json"
    data.write_text(json.dumps(json.loads((ROOT / "assets" / "examples" / "identity.json").read_text())[:48]))
    curves = {}
    for label, change in (("eager", dict(batch_size=4)),
                          ("compiled", dict(batch_size=2, num_processes=2, distributed="ddp", compile="on"))):
        # Two steps: the second shows the first one's update was made of both ranks' gradients
        # (each new batch shape recompiles at first: a minute a step on 2 cores).
        config = RunConfig(dataset=str(data), **{**TRAIN, "max_steps": 2}, name=f"ddp-{label}",
                           compare_after_training=False, **change)
        config, run_id, run_dir = prepare_run(config, store)
        result = run_training(config, store, EventLog(run_id), run_id, run_dir)
        assert result.status == "completed", result.error
        assert config.group_by_length and not config.packing
        curves[label] = _curves(store, run_id)
    messages = [e.data.get("message", "") for e in read_events(run_dir / "events.jsonl") if e.type == "log"]
    assert any(m.startswith("torch.compile on (compile: on)") for m in messages), messages
    assert len(curves["compiled"]["loss"]) == 2
    assert curves["compiled"]["loss"] == pytest.approx(curves["eager"]["loss"], abs=LOSS_TOL)
    assert curves["compiled"]["grad_norm"] == pytest.approx(curves["eager"]["grad_norm"], rel=GRAD_NORM_RTOL)
    _no_compile_prefix(run_dir / "model")
    assert type(load_model(str(run_dir / "model")).model).__name__ == "PeftModelForCausalLM"


# A run in a child process whose C++ compiler is broken (a `g++` first on PATH that exits 1) and whose
# inductor cache is empty, so inductor must call it. Prints the run's result and log lines as JSON.
_BROKEN_COMPILER_RUN = """
import json, sys
from core.config import RunConfig
from core.engine import prepare_run, run_training
from core.events import EventLog, read_events
from core.records import RecordStore
store = RecordStore(sys.argv[1])
config, run_id, run_dir = prepare_run(RunConfig(model="demo", dataset=sys.argv[2], max_steps=2, batch_size=2,
    max_length=64, logging_steps=1, validation_split=0.0, compile="on", compare_after_training=False), store)
result = run_training(config, store, EventLog(run_id), run_id, run_dir)
events = read_events(run_dir / "events.jsonl")
print(json.dumps({"status": result.status, "error": result.error, "record": store.get_run(run_id).status,
                  "model": result.model_id, "dir": str(run_dir), "types": [e.type for e in events],
                  "logs": [e.data.get("message", "") for e in events if e.type == "log"]}))
"""


@pytest.mark.slow
def test_a_broken_compiler_falls_back_to_eager_saying_why(tmp_path, small_alpaca, demo_model):
    import json
    import os
    import subprocess
    import sys

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "g++").write_text("#!/bin/sh\necho 'g++: broken on purpose' >&2\nexit 1\n")
    (bin_dir / "g++").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
           "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "cold-cache"),
           "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run([sys.executable, "-c", _BROKEN_COMPILER_RUN, f"sqlite:///{tmp_path / 'r.db'}",
                           str(small_alpaca)], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["status"] == out["record"] == "completed" and out["model"], out
    failed = [m for m in out["logs"] if m.startswith("torch.compile failed before the first step (")]
    assert len(failed) == 1 and "C++ compiler" in failed[0] and "TORCHDYNAMO_VERBOSE" not in failed[0]
    assert failed[0].endswith("training without it (eager), from the start"), out["logs"]
    assert any(m.startswith("torch.compile off (compile failed: ") for m in out["logs"])
    assert out["types"].count("started") == 1 and out["types"][-1] == "finished"
    assert out["types"].count("step") == 2  # each step once: nothing was trained before the failure
