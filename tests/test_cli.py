"""The `modelforge` command as a user runs it: exit codes, --json, messages that name the line."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


# The status emoji core used to put in its texts (a terminal without the font shows boxes).
EMOJI = re.compile("[\u2600-\u27bf\U0001f300-\U0001faff\ufe0f]")


def mf(*args: str, home: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "MODELFORGE_HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "app.main", *args], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=timeout)


@pytest.fixture(scope="module")
def home(tmp_path_factory, mf_home):
    h = tmp_path_factory.mktemp("clihome")
    # Reuse the session's built demo model so each CLI process does not rebuild it.
    cache = Path(mf_home) / "cache"
    if cache.exists():
        shutil.copytree(cache, h / "cache", dirs_exist_ok=True)
    return h


def test_console_script_is_installed():
    assert shutil.which("modelforge") or (Path(sys.executable).parent / "modelforge").exists()


def test_help_lists_every_command(home):
    out = mf("--help", home=home)
    assert out.returncode == 0
    for cmd in ("ui", "train", "validate", "generate", "models", "runs", "info", "hardware"):
        assert cmd in out.stdout


def test_train_json_then_models_lists_it_and_adapter_reloads(home, shared_data, demo_model):
    out = mf("train", "--model", "demo", "--dataset", str(shared_data / "alpaca_en_demo.json"),
             "--task", "text-generation", "--strategy", "sft", "--max-steps", "5", "--max-samples", "200",
             "--max-length", "128", "--compare-after-training", "false", "--json", home=home)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["status"] == "completed"
    assert {"run_id", "output_dir", "model_id", "metrics"} <= set(result)
    assert "eval_loss" in result["metrics"] and "perplexity" in result["metrics"]
    assert "validation: 10 of 200 rows held out (auto: 5%)" in out.stderr  # the default rule, said
    assert "memory: Fits: needs about " in out.stderr  # the verdict in plain words, no emoji
    assert not EMOJI.search(out.stderr), out.stderr[-2000:]

    from peft import PeftConfig

    assert PeftConfig.from_pretrained(result["model_dir"]).peft_type == "LORA"

    listed = json.loads(mf("models", "--json", home=home).stdout)
    assert [m["id"] for m in listed] == [result["model_id"]]
    assert listed[0]["metrics"]["perplexity"] == pytest.approx(result["metrics"]["perplexity"])
    runs = json.loads(mf("runs", "--json", home=home).stdout)
    assert runs[0]["status"] == "completed" and runs[0]["last_step"] == 5

    gen = mf("generate", "--model", result["model_id"], "--prompt", "Hello", "--max-new-tokens", "5", "--json",
             home=home)
    assert gen.returncode == 0, gen.stderr[-1000:]
    assert "answer" in json.loads(gen.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name,extra", [
    ("alpaca_en_demo.json", []), ("identity.json", []), ("dpo_en_demo.json", ["--strategy", "dpo"]),
])
def test_validate_accepts_the_shared_files(home, shared_data, name, extra):
    out = mf("validate", str(shared_data / name), *extra, "--json", home=home)
    assert out.returncode == 0, out.stdout[-2000:]
    assert json.loads(out.stdout)["ok"] is True


def test_validate_json_shows_the_rendered_segments(home, tmp_path):
    """A script can check what is trained: samples are segments {"text", "trained"}."""
    row = {"messages": [{"role": "user", "content": "Q1"}, {"role": "assistant", "content": "A1", "weight": 0},
                        {"role": "user", "content": "Q2"}, {"role": "assistant", "content": "A2"}]}
    path = tmp_path / "chat.jsonl"
    path.write_text("\n".join(json.dumps(row) for _ in range(2)))
    out = mf("validate", str(path), "--json", home=home)
    assert out.returncode == 0, out.stdout[-2000:]
    sample = json.loads(out.stdout)["samples"][0]
    assert [s["text"] for s in sample["segments"] if s["trained"]] == ["A2<|im_end|>"]
    assert "A1" in "".join(s["text"] for s in sample["segments"] if not s["trained"])
    every = mf("validate", str(path), "--json", "--train-turns", "last", "--loss-on", "all", home=home)
    assert [s["trained"] for s in json.loads(every.stdout)["samples"][0]["segments"]] == [True]


MALFORMED = {
    "empty.json": (b"", "empty"),
    "notjson.json": (b"this is not json\n", "line 1"),
    "broken.jsonl": (b'{"instruction": "a", "output": "b"}\n{"instruction": "c", "output": \n'
                     b'{"instruction": "e", "output": "f"}\n', "line 2"),
    "missing.jsonl": (b'{"instruction": "a", "output": "b"}\n{"instruction": "c"}\n{"instruction": "e", "output": "f"}\n',
                      "line 2"),
    "null.jsonl": (b'{"instruction": "a", "output": "b"}\n{"instruction": "c", "output": "d"}\n'
                   b'{"instruction": "e", "output": null}\n', "line 3"),
    "wrongtype.jsonl": (b'{"instruction": "a", "output": 5}\n{"instruction": "c", "output": "d"}\n'
                        b'{"instruction": "e", "output": "f"}\n', "line 1"),
    "binary.json": (bytes(range(256)) * 4, "binary"),
}


@pytest.mark.parametrize("fname", sorted(MALFORMED))
def test_validate_rejects_malformed_files_naming_the_line(home, tmp_path, fname):
    data, expected = MALFORMED[fname]
    path = tmp_path / fname
    path.write_bytes(data)
    out = mf("validate", str(path), home=home)
    assert out.returncode == 2, out.stdout + out.stderr
    text = out.stdout + out.stderr
    assert expected in text.lower() or expected in text
    assert fname in text
    assert "Traceback" not in text


def test_validate_rejects_alpaca_for_dpo_naming_the_missing_columns(home, shared_data):
    out = mf("validate", str(shared_data / "alpaca_en_demo.json"), "--strategy", "dpo", home=home)
    assert out.returncode == 2
    assert "chosen" in out.stdout and "rejected" in out.stdout


def test_train_with_bad_config_exits_2_and_records_nothing(home, shared_data):
    out = mf("train", "--dataset", str(shared_data / "identity.json"), "--lora-r", "0", "--name", "../x",
             "--strategy", "dpo", "--task", "extractive-qa", home=home)
    assert out.returncode == 2
    for field in ("lora_r", "name", "strategy"):
        assert field in out.stderr
    assert "Traceback" not in out.stderr
    assert json.loads(mf("runs", "--json", home=home).stdout) == [] or all(
        r["name"] != "../x" for r in json.loads(mf("runs", "--json", home=home).stdout))


def test_train_refuses_what_the_provider_cannot_do_before_loading(home, shared_data):
    """unsloth does not train rlhf (anywhere), and without a GPU or the extra is not available at
    all: exit 2 naming the field `provider` and the fix, and no run is recorded."""
    before = json.loads(mf("runs", "--json", home=home).stdout)
    out = mf("train", "--provider", "unsloth", "--strategy", "rlhf", "--model", "demo",
             "--dataset", str(shared_data / "identity.json"), "--name", "unsloth-rlhf", home=home)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "field 'provider'" in out.stderr and "strategy 'rlhf'" in out.stderr
    assert "use provider huggingface" in out.stderr and "Traceback" not in out.stderr
    assert json.loads(mf("runs", "--json", home=home).stdout) == before


def test_hub_id_offline_fails_fast_with_one_clear_line(home, shared_data):
    t0 = time.time()
    out = mf("train", "--model", "Qwen/Qwen2.5-0.5B-Instruct", "--dataset", str(shared_data / "identity.json"),
             "--max-steps", "1", home=home)
    elapsed = time.time() - t0
    assert out.returncode == 2
    assert "offline" in out.stderr.lower() or "not reachable" in out.stderr.lower()
    assert "Traceback" not in out.stderr
    assert elapsed < 60  # includes interpreter + torch import; the hub check itself is ~instant


def test_info_lists_providers_strategies_tasks_with_availability(home):
    info = json.loads(mf("info", "--json", home=home).stdout)
    assert {p["name"] for p in info["providers"]} == {"huggingface", "unsloth"}
    assert {s["name"] for s in info["strategies"]} >= {"sft", "qlora", "dpo", "orpo", "kto", "rlhf"}
    assert {t["name"] for t in info["tasks"]} == {"text-generation", "summarization", "extractive-qa"}
    for item in info["providers"] + info["strategies"] + info["tasks"]:
        assert item["available"] or item["reason"]


def test_hardware_json(home):
    out = mf("hardware", "--json", home=home)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report
