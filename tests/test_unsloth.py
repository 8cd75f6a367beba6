"""The unsloth provider: why it is (not) available, the same reason everywhere, and, with the
extra installed, real training through the engine on the CPU.

The first part runs everywhere (unsloth's presence and the GPU are faked). The tests marked
``unsloth`` need the extra: they are skipped, saying so, where it is not installed, and run in
CI's separate venv (``.ci/unsloth.sh``), where unsloth's CPU fallback trains the demo model.
Training runs through the ``modelforge`` command in a child process, as a user would, so this
test process never imports unsloth (which patches transformers for everything after it).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

from core.config import RunConfig
from core.errors import NotAvailableError
from core.hardware import GPUInfo
from core.checks import plugin_problems
from core.providers import unsloth as up
from core.registry import PROVIDERS
from tests.helpers import assert_answers

ROOT = Path(__file__).resolve().parents[1]
INSTALLED = importlib.util.find_spec("unsloth") is not None
needs_unsloth = pytest.mark.skipif(
    not INSTALLED, reason="unsloth is not installed (the unsloth extra runs in its own venv: .ci/unsloth.sh)")


@pytest.fixture()
def fresh(monkeypatch):
    """No remembered import result, and no CPU opt-in unless a test sets it."""
    monkeypatch.setattr(up, "_import_cache", {})
    monkeypatch.delenv(up.CPU_ENV, raising=False)
    return up


def gpu(cc=(8, 9), name="NVIDIA GeForce RTX 4090") -> GPUInfo:
    return GPUInfo(name=name, memory_total_mib=24576, memory_free_mib=22000, compute_capability=cc,
                   bf16=cc >= (8, 0))


# -- availability, without unsloth ------------------------------------------------------------------------
def test_not_installed_says_how_to_install(fresh, monkeypatch):
    monkeypatch.setattr(up, "_installed", lambda: False)
    ok, why = up.status()
    assert not ok and why.startswith("not installed") and ".[unsloth]" in why


def test_no_gpu_is_a_reason_not_an_error(fresh, monkeypatch):
    monkeypatch.setattr(up, "_installed", lambda: True)
    monkeypatch.setattr(up, "_import_check", lambda: pytest.fail("must not try to import without a GPU"))
    ok, why = up.status(gpus=[], gpu_reason="no NVIDIA driver found")
    assert not ok
    assert why.startswith("no supported GPU") and "no NVIDIA driver found" in why and up.CPU_ENV in why


def test_old_gpu_and_cpu_torch_are_reasons(fresh, monkeypatch):
    from core import hardware

    monkeypatch.setattr(up, "_installed", lambda: True)
    monkeypatch.setattr(up, "_import_check", lambda: (True, ""))
    ok, why = up.status(gpus=[gpu((6, 1), "GeForce GTX 1080")])
    assert not ok and "compute capability 6.1" in why and "7.0" in why
    monkeypatch.setattr(hardware, "_torch_cuda_build", lambda: None)
    ok, why = up.status(gpus=[gpu()])
    assert not ok and "CPU-only build" in why
    monkeypatch.setattr(hardware, "_torch_cuda_build", lambda: "12.8")
    assert up.status(gpus=[gpu()]) == (True, "")


def test_import_error_text_is_the_reason_and_is_remembered(fresh, monkeypatch, tmp_path):
    from core import hardware

    monkeypatch.setattr(up, "_installed", lambda: True)
    monkeypatch.setattr(hardware, "_torch_cuda_build", lambda: "12.8")
    monkeypatch.setattr(up, "_cache_file", lambda: tmp_path / "unsloth-import.json")
    monkeypatch.delitem(sys.modules, "unsloth", raising=False)
    calls = []
    stderr = ("Traceback (most recent call last):\n  File \"<string>\", line 1, in <module>\n"
              "ImportError: Unsloth: torchvision==0.28.0 claims to match torch==2.13.0+cpu, but its "
              "compiled operators do not load\n")

    def fake_run(cmd, **kw):
        calls.append(cmd)
        return types.SimpleNamespace(returncode=1, stdout="", stderr=stderr)

    monkeypatch.setattr(up.subprocess, "run", fake_run)
    ok, why = up.status(gpus=[gpu()])
    assert not ok and why.startswith("installed but failed to import: ImportError: Unsloth: torchvision")
    assert up.status(gpus=[gpu()]) == (ok, why) and len(calls) == 1          # remembered in memory
    monkeypatch.setattr(up, "_import_cache", {})
    assert up.status(gpus=[gpu()]) == (ok, why) and len(calls) == 1          # and on disk
    assert json.loads((tmp_path / "unsloth-import.json").read_text())["reason"] == why


def test_error_line_picks_the_exception():
    assert up._error_line("noise\nNotImplementedError: You need a GPU.\n") == "NotImplementedError: You need a GPU."
    assert up._error_line("warning only\n") == "warning only"
    assert up._error_line("") == "no error message"


def test_hardware_report_and_info_give_the_provider_reason(fresh, monkeypatch):
    from core.catalog import describe
    from core.checks import hardware_report

    ok, why = up.status()
    backend = hardware_report().backend("unsloth")
    assert (backend.available, backend.reason) == (ok, why)
    entry = next(p for p in describe()["providers"] if p["name"] == "unsloth")
    assert (entry["available"], entry["reason"]) == (ok, why)
    if not ok:
        with pytest.raises(NotAvailableError) as err:
            PROVIDERS.require("unsloth")
        assert why in err.value.message


def test_hardware_tab_shows_the_same_reason(fresh):
    pytest.importorskip("gradio")
    from components.hardware_tab import hardware_markdown, probe_report

    report = probe_report()
    ok, why = up.status()
    row = next(line for line in hardware_markdown(report).splitlines() if line.startswith("- **unsloth**"))
    assert (why or "ok") in row


@pytest.mark.parametrize("changes, words", [
    ({"strategy": "rlhf"}, "strategy 'rlhf'"),
    ({"task": "summarization"}, "task 'summarization'"),
    ({"quantization": "8bit"}, "8-bit"),
])
def test_what_unsloth_cannot_train_is_said_before_loading(changes, words):
    config = RunConfig(model="demo", dataset="x.json", provider="unsloth", **changes)
    problems = plugin_problems(config)
    assert problems and words in problems[0].message and problems[0].field in ("provider", "quantization")
    with pytest.raises(NotAvailableError) as err:
        up.UnslothProvider().load(config)  # refused before unsloth is even imported
    assert words in err.value.message
    assert plugin_problems(RunConfig(model="demo", dataset="x.json", provider="unsloth")) == []
    assert plugin_problems(RunConfig(model="demo", dataset="x.json", **changes)) == []  # huggingface


def test_preflight_refuses_an_unavailable_provider_naming_the_field(fresh, monkeypatch, tmp_path):
    """The reason `modelforge info` gives (here: no GPU, and how to opt in to the CPU fallback)
    stops the run in pre-flight, before anything is recorded or loaded."""
    from core.engine import preflight

    monkeypatch.setattr(up, "_installed", lambda: True)
    monkeypatch.setattr(up, "_gpu_problem", lambda gpus, reason="": "no supported GPU: none was found")
    config = RunConfig(model="demo", dataset=str(ROOT / "assets" / "examples" / "identity.json"), provider="unsloth")
    problems = preflight(config)
    assert [p.field for p in problems] == ["provider"]
    assert "not available here" in problems[0].message and up.CPU_ENV in problems[0].message
    assert "huggingface" in problems[0].hint
    assert preflight(config.replace(provider="huggingface")) == []


PREPARE_ORDER = """
import json, sys
from core.config import RunConfig
from core.engine import prepare_run, run_training
from core.events import EventLog
from core.records import RecordStore
from core.registry import PROVIDERS

seen = {}

class Early:  # a provider that, like unsloth, must be imported before transformers/peft/trl
    name, description = "early", "test"
    tasks = ("text-generation",)
    own_process = multi_process = applies_adapter = False
    def available(self):
        return True, ""
    def config_problems(self, config):
        return []
    def adjust_config(self, config):
        return config
    def backend_status(self, report):
        return None
    def prepare(self):
        seen["loaded"] = [m for m in ("transformers", "peft", "trl") if m in sys.modules]
    def load(self, config, *, for_training=True):
        seen["prepared_before_load"] = "loaded" in seen
        raise RuntimeError("enough")

PROVIDERS.register("early", Early)
store = RecordStore(f"sqlite:///{sys.argv[1]}/records.db")
config = RunConfig(model="demo", dataset=sys.argv[2], provider="early", strategy=sys.argv[3],
                   output_dir=sys.argv[1])
config, run_id, run_dir = prepare_run(config, store)
result = run_training(config, store, EventLog(run_id), run_id, run_dir)
print(json.dumps({"seen": seen, "status": result.status}))
"""


@pytest.mark.parametrize("strategy", ["sft", "orpo"])  # orpo's availability check imports trl
def test_the_engine_lets_the_provider_import_first(tmp_path, strategy):
    """unsloth must be imported before transformers, peft and trl (it patches them, and warns
    when second): the engine calls the provider's prepare() before anything imports them. In a
    fresh process, as a CLI run is."""
    out = subprocess.run([sys.executable, "-c", PREPARE_ORDER, str(tmp_path),
                          str(ROOT / "assets" / "examples" / "identity.json"), strategy],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["seen"] == {"loaded": [], "prepared_before_load": True} and result["status"] == "failed"


def test_prepare_imports_unsloth_or_says_why_not(monkeypatch):
    monkeypatch.setitem(sys.modules, "unsloth", None)  # "import unsloth" raises ImportError
    with pytest.raises(NotAvailableError) as err:
        up.UnslothProvider().prepare()
    assert "failed to import" in err.value.message and "huggingface" in err.value.hint


# -- with the extra installed: the real thing, on the CPU ------------------------------------------------
@pytest.fixture(scope="module")
def home(tmp_path_factory, mf_home):
    """One MODELFORGE_HOME for the CLI runs here: the demo model is built once, and the first
    run's import check (cache/unsloth-import.json, ~10 s) is reused by the others."""
    import shutil

    h = tmp_path_factory.mktemp("unslothhome")
    if (Path(mf_home) / "cache").exists():
        shutil.copytree(Path(mf_home) / "cache", h / "cache", dirs_exist_ok=True)
    return h


def mf(*args: str, home: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "MODELFORGE_HOME": str(home), up.CPU_ENV: "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "app.main", *args], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=timeout)


def last_json(out: subprocess.CompletedProcess) -> dict:
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.unsloth
@needs_unsloth
def test_unsloth_imports_here_with_the_cpu_opt_in(fresh, monkeypatch, home):
    monkeypatch.setenv(up.CPU_ENV, "1")
    monkeypatch.setenv("MODELFORGE_HOME", str(home))  # its answer is cached there for the runs below
    ok, why = up.status()
    assert ok, f"unsloth is installed but not usable: {why}"


@pytest.mark.unsloth
@needs_unsloth
def test_info_json_shows_unsloth_available(home):
    out = mf("info", "--json", home=home)
    assert out.returncode == 0, out.stderr[-2000:]
    entry = next(p for p in json.loads(out.stdout)["providers"] if p["name"] == "unsloth")
    assert entry["available"] and entry["reason"] == "", entry


@pytest.mark.unsloth
@needs_unsloth
def test_sft_trains_through_the_engine(home, shared_data):
    """`modelforge train --provider unsloth --model demo ... --max-steps 3`, then the adapter is a
    plain PEFT adapter that the huggingface provider reloads and answers with."""
    from core.inference import generate, load_model
    from tests.test_strategies import assert_lora_trained

    out = mf("train", "--provider", "unsloth", "--model", "demo", "--dataset", str(shared_data / "identity.json"),
             "--max-steps", "3", "--batch-size", "2", "--max-length", "128", "--logging-steps", "1",
             "--json", home=home)
    assert out.returncode == 0, out.stderr[-3000:]
    result = last_json(out)
    assert result["status"] == "completed", result
    assert "no GPU found, training on CPU" in out.stdout + out.stderr  # unsloth really ran
    model_dir = Path(result["model_dir"])
    events = [json.loads(line) for line in (Path(result["output_dir"]) / "events.jsonl").read_text().splitlines()]
    losses = [e["data"]["loss"] for e in events if e["type"] == "step"]
    assert len(losses) == 3 and all(loss == loss for loss in losses)
    assert result["metrics"]["train_loss"] > 0
    assert_lora_trained(model_dir)
    adapter = json.loads((model_dir / "adapter_config.json").read_text())
    assert set(adapter["target_modules"]) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                              "up_proj", "down_proj"}  # all-linear, wrapped once
    card = json.loads((model_dir / "modelforge.json").read_text())
    assert card["provider"] == "unsloth"
    loaded = load_model(str(model_dir))  # huggingface: base + adapter, in this (unsloth-free) process
    assert_answers(loaded, [{"role": "user", "content": "Who are you?"}], 4)


@pytest.mark.unsloth
@needs_unsloth
@pytest.mark.parametrize("strategy, data", [("qlora", "identity.json"), ("dpo", "dpo_en_demo.json")])
def test_other_strategies_train(home, tmp_path, shared_data, strategy, data):
    rows = json.loads((shared_data / data).read_text())[:16]
    dataset = tmp_path / data
    dataset.write_text(json.dumps(rows))
    out = mf("train", "--provider", "unsloth", "--strategy", strategy, "--model", "demo", "--dataset", str(dataset),
             "--max-steps", "2", "--batch-size", "2", "--max-length", "128", "--json", home=home)
    assert out.returncode == 0, out.stderr[-3000:]
    assert last_json(out)["status"] == "completed"
    if strategy == "qlora":
        assert "4-bit = True" in out.stdout + out.stderr  # unsloth loaded the base in NF4


@pytest.mark.unsloth
@needs_unsloth
def test_load_applies_unsloths_lora_once(home):
    """The provider's model in a child process: a PeftModel marked as already adapted, LoRA only
    trainable, gradient checkpointing on when asked."""
    code = (
        "import json, sys; from core.config import RunConfig; from core.registry import PROVIDERS\n"
        "c = RunConfig(model='demo', dataset='x.json', provider='unsloth', gradient_checkpointing=True)\n"
        "p = PROVIDERS.require('unsloth'); m, t = p.load(c)\n"
        "names = [n for n, p in m.named_parameters() if p.requires_grad]\n"
        "print(json.dumps({'marked': p.applies_adapter, 'type': type(m).__name__,\n"
        "  'all_lora': all('lora_' in n for n in names), 'n': len(names), 'pad': t.pad_token is not None,\n"
        "  'ckpt': bool(getattr(m.base_model.model, 'is_gradient_checkpointing', False)),\n"
        "  'nested': sum(1 for n, _ in m.named_modules() if n.endswith('base_model.model.base_model'))}))\n"
    )
    env = {**os.environ, "MODELFORGE_HOME": str(home), up.CPU_ENV: "1", "PYTHONWARNINGS": "ignore"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got == {"marked": True, "type": "PeftModelForCausalLM", "all_lora": True, "n": 2 * 7 * 2,
                   "pad": True, "ckpt": True, "nested": 0}, got


# -- the GPU check's plumbing, on the CPU ---------------------------------------------------------------
@pytest.mark.slow
def test_gpu_check_dry_run(tmp_path):
    """benchmarks/gpu_check.py --dry-run: the tiny model through both providers on the CPU; the
    unsloth leg runs where the extra is installed (CPU opt-in) and is skipped, saying why, elsewhere."""
    env = {**os.environ, up.CPU_ENV: "1"}
    out = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--dry-run", "--only",
                          "hf-lora,unsloth-lora,engine-lora,calibrate",
                          "--wheels", str(tmp_path / "none"), "--out", str(tmp_path)],
                         capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    hf, us = report["legs"]["hf-lora"], report["legs"]["unsloth-lora"]
    assert hf["status"] == "ok" and hf["tokens_per_s"] > 0 and hf["peak_rss_gib"] > 0
    assert hf["trainable_params"] > 0 and abs(hf["estimate_error"]) < 0.5
    if INSTALLED:
        assert us["status"] == "ok", us
        assert set(report["ratios"]["lora"]) == {"speed_unsloth_over_hf", "memory_unsloth_over_hf"}
    else:
        assert us["status"] == "skipped" and "unsloth" in us["detail"]
    assert "| hf-lora | ok |" in (tmp_path / "gpu_check.md").read_text()
    # The engine leg: `modelforge train` then `generate` with the adapter (the records) and --base.
    engine = report["engine"]["engine-lora"]
    assert engine["status"] == "ok" and engine["exit"] == 0 and engine["adapter_reloads"], engine
    assert engine["model_id"].startswith("model-") and set(engine["answers"]) == {"tuned", "base"}
    from core.hardware import auto_precision

    # What auto means on this CPU (bf16 with bf16 matrix units and 2+ threads, else fp32): the report
    # says the engine's own decision.
    assert report["hardware"]["device"] == "cpu" and report["hardware"]["auto_precision"] == auto_precision("cpu")
    assert len(report["calibration"]["points"]) == 8  # on the CPU only the plumbing (zeros)


APP_RUN = """
import json, sys
from core.config import RunConfig
from core.jobs import JobManager
from core.records import RecordStore

store = RecordStore(f"sqlite:///{sys.argv[1]}/records.db")
jobs = JobManager(store)
config = RunConfig(model="demo", dataset=sys.argv[2], provider="unsloth", max_steps=2, batch_size=2,
                   max_length=128, validation_split=0.0, output_dir=sys.argv[1])
run_id = jobs.submit(config)
status = jobs.wait(run_id, timeout=900)
print(json.dumps({"status": status, "error": store.get_run(run_id).error,
                  "unsloth_here": "unsloth" in sys.modules,
                  "logs": [e.data.get("message") for e in jobs.events(run_id) if e.type == "log"]}))
"""


@pytest.mark.unsloth
@needs_unsloth
def test_the_app_trains_unsloth_in_a_child_process(home, tmp_path, shared_data):
    """In the app (the job manager, a process that lives on), an unsloth run trains in a child
    process: it completes, and the app's own process never imports unsloth, so its transformers
    stay unpatched for the next huggingface run and the Playground."""
    rows = json.loads((shared_data / "identity.json").read_text())[:16]
    dataset = tmp_path / "identity16.json"
    dataset.write_text(json.dumps(rows))
    env = {**os.environ, "MODELFORGE_HOME": str(home), up.CPU_ENV: "1", "PYTHONWARNINGS": "ignore"}
    out = subprocess.run([sys.executable, "-c", APP_RUN, str(tmp_path), str(dataset)], capture_output=True,
                         text=True, cwd=ROOT, env=env, timeout=1200)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["status"] == "completed", result
    assert any("training in a child process" in (m or "") for m in result["logs"]), result["logs"]
    assert result["unsloth_here"] is False
