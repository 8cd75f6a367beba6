"""Every strategy trains a few steps on the demo model through the engine, and proves it.

For each: the loss was logged (events and metric points), trainable weights changed (LoRA B
matrices start at zero, so non-zero means trained), the saved result reloads through
core.inference and answers, and the metrics are in the database (curve and model record).
Preference strategies use the first rows of ../shared/data/dpo_en_demo.json.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.config import RunConfig
from core.engine import prepare_run, run_training
from core.events import EventLog, read_events
from tests.helpers import assert_answers


# -- helpers shared with test_tasks.py ------------------------------------------------------------------
def train_run(store, dataset: Path, **kw):
    """prepare_run + run_training on tiny settings; returns (result, run_dir)."""
    base = dict(model="demo", dataset=str(dataset), max_steps=2, batch_size=2, max_length=64, logging_steps=1,
                save_steps=50, validation_split=0.25, learning_rate=1e-3,
                compare_after_training=False)  # base vs tuned is tests/test_compare_eval.py's (it costs time)
    base.update(kw)
    config, run_id, run_dir = prepare_run(RunConfig(**base), store)
    result = run_training(config, store, EventLog(run_id), run_id, run_dir)
    assert result.status == "completed", f"{result.error} ({result.hint})"
    return result, run_dir


def assert_loss_logged(store, result, run_dir: Path) -> None:
    events = read_events(run_dir / "events.jsonl")
    steps = [e for e in events if e.type == "step"]
    assert steps and all(e.data["loss"] == e.data["loss"] for e in steps)  # logged, and not NaN
    assert [p for p in store.metrics(result.run_id) if p.name == "loss"]
    assert events[-1].type == "finished"


def assert_lora_trained(adapter_dir: Path) -> dict:
    """LoRA B matrices are initialised to zero: any non-zero B means the adapter trained."""
    from safetensors.torch import load_file

    weights = load_file(str(adapter_dir / "adapter_model.safetensors"))
    lora_b = [t for k, t in weights.items() if "lora_B" in k]
    assert lora_b and any(float(t.abs().sum()) > 0 for t in lora_b), "no LoRA B weight moved"
    return weights


def assert_metrics_recorded(store, result, *names: str) -> dict:
    """``names`` are in the run's final metrics, the model record and the metric table."""
    record = store.get_model(result.model_id)
    stored = {p.name for p in store.metrics(result.run_id)}
    for name in names:
        assert name in result.metrics and name in record.metrics, name
        assert f"final_{name}" in stored, name
    return record.metrics


@pytest.fixture()
def dpo_rows(tmp_path, shared_data) -> Path:
    """The first 16 real preference rows (sharegpt: conversations + chosen + rejected)."""
    rows = json.loads((shared_data / "dpo_en_demo.json").read_text())[:16]
    path = tmp_path / "dpo16.json"
    path.write_text(json.dumps(rows))
    return path


# -- sft and qlora ------------------------------------------------------------------------------------
def test_sft_on_plain_text_is_continued_pretraining(store, tmp_path, demo_model):
    from core.inference import load_model

    data = tmp_path / "text.jsonl"
    data.write_text("\n".join(json.dumps({"text": f"Forge number {i} shapes iron into tools, day {i}."})
                              for i in range(12)))
    result, run_dir = train_run(store, data, max_steps=3)
    assert_loss_logged(store, result, run_dir)
    assert_lora_trained(run_dir / "model")
    assert_metrics_recorded(store, result, "train_loss", "eval_loss", "perplexity")
    assert_answers(load_model(str(run_dir / "model")), "Forge number", 4)


def test_qlora_trains_lora_on_a_4bit_nf4_base(store, small_alpaca, demo_model):
    import bitsandbytes as bnb

    from core.inference import load_model
    from core.providers.huggingface import HuggingFaceProvider

    # The provider really loads the demo in 4-bit NF4 on this CPU (every out_features % 32 == 0).
    config = RunConfig(model="demo", dataset=str(small_alpaca), quantization="4bit")
    model, _ = HuggingFaceProvider().load(config)
    quantised = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert quantised and quantised[0].weight.quant_type == "nf4"
    del model

    result, run_dir = train_run(store, small_alpaca, strategy="qlora", max_samples=16, max_steps=3)
    assert_loss_logged(store, result, run_dir)
    assert_lora_trained(run_dir / "model")
    assert_metrics_recorded(store, result, "train_loss", "eval_loss", "perplexity")
    card = json.loads((run_dir / "model" / "modelforge.json").read_text())
    assert card["config"]["quantization"] == "4bit"          # qlora forced the 4-bit base
    lm = load_model(str(run_dir / "model"))
    assert_answers(lm, "Give three tips for staying healthy.", 6)


# -- preference strategies ----------------------------------------------------------------------------------
@pytest.mark.parametrize("strategy, reported", [
    ("dpo", ("eval_loss", "eval_rewards/accuracies", "eval_rewards/margins")),
    ("orpo", ("eval_loss", "eval_rewards/accuracies", "eval_log_odds_ratio")),
    ("kto", ("eval_loss", "eval_kl", "eval_rewards/chosen")),
])
def test_preference_strategy_trains_on_sharegpt_pairs(strategy, reported, store, dpo_rows, demo_model):
    from core.inference import load_model

    result, run_dir = train_run(store, dpo_rows, strategy=strategy)
    assert_loss_logged(store, result, run_dir)
    assert_lora_trained(run_dir / "model")
    assert_metrics_recorded(store, result, "train_loss", *reported)
    evals = [e for e in read_events(run_dir / "events.jsonl") if e.type == "eval"]
    assert evals and "eval_loss" in evals[-1].data
    assert "perplexity" not in evals[-1].data                 # a preference loss has no perplexity
    lm = load_model(str(run_dir / "model"))
    assert type(lm.model).__name__ == "PeftModelForCausalLM"
    assert_answers(lm, "Hi! Tell me a joke.", 6)


def test_kto_accepts_labelled_rows_and_splits_pairs(tmp_path, dpo_rows):
    from core.checks import validate_file

    labelled = tmp_path / "kto.jsonl"
    labelled.write_text("\n".join(json.dumps({"prompt": f"Question {i}?", "completion": f"Answer {i}.",
                                              "label": i % 2 == 0}) for i in range(6)))
    report = validate_file(labelled, strategy="kto")
    assert report.ok and report.kind == "kto" and len(report.examples) == 6
    pairs = validate_file(dpo_rows, strategy="kto")                # chosen -> true, rejected -> false
    assert pairs.ok and len(pairs.examples) == 32
    assert [e["label"] for e in pairs.examples[:2]] == [True, False]


# -- rlhf: reward model, then GRPO against it ---------------------------------------------------------------
@pytest.fixture(scope="module")
def rlhf_run(tmp_path_factory, shared_data, mf_home):
    from core.records import RecordStore

    folder = tmp_path_factory.mktemp("rlhf")
    rows = json.loads((shared_data / "dpo_en_demo.json").read_text())[:16]
    data = folder / "dpo16.json"
    data.write_text(json.dumps(rows))
    store = RecordStore(f"sqlite:///{folder / 'records.db'}")
    result, run_dir = train_run(store, data, strategy="rlhf")
    return store, result, run_dir, data


def test_rlhf_trains_a_reward_model_then_the_policy(rlhf_run):
    from core.inference import load_model

    store, result, run_dir, _ = rlhf_run
    assert_loss_logged(store, result, run_dir)
    # Stage 1: a LoRA sequence classifier with its score head, saved in the run folder.
    reward = assert_lora_trained(run_dir / "reward_model")
    assert any("score" in k for k in reward)
    assert json.loads((run_dir / "reward_model" / "adapter_config.json").read_text())["task_type"] == "SEQ_CLS"
    # Stage 2: the policy's adapter.
    assert_lora_trained(run_dir / "model")
    metrics = assert_metrics_recorded(store, result, "reward_accuracy", "reward_loss", "mean_reward", "kl",
                                      "train_loss", "eval_reward")
    assert 0.0 <= metrics["reward_accuracy"] <= 1.0 and metrics["kl"] >= 0.0
    curves = {p.name for p in store.metrics(result.run_id)}
    assert {"reward_loss", "mean_reward", "kl", "loss"} <= curves  # both stages' curves, over steps
    lm = load_model(str(run_dir / "model"))
    assert_answers(lm, "Hi! Tell me a joke.", 6)


def test_rlhf_reuses_a_reward_model_from_an_earlier_run(rlhf_run):
    store, first, first_dir, data = rlhf_run
    result, run_dir = train_run(store, data, strategy="rlhf", max_steps=1, validation_split=0.0,
                                reward_model=str(first_dir))  # the run folder is enough
    assert not (run_dir / "reward_model").exists()                 # no second reward model trained
    assert "reward_accuracy" not in result.metrics and "mean_reward" in result.metrics
    assert_lora_trained(run_dir / "model")


def test_rlhf_rejects_a_folder_without_a_reward_model(store, dpo_rows, tmp_path, demo_model):
    """rlhf's adjust_config checks the folder; it runs with the checks, so the run is refused before
    anything is recorded (it used to be recorded, then fail at its start)."""
    from core.checks import preflight
    from core.errors import ConfigError

    config = RunConfig(model="demo", dataset=str(dpo_rows), strategy="rlhf", max_steps=1, reward_model=str(tmp_path))
    problems = preflight(config)
    assert problems and "no reward model" in problems[0].message
    with pytest.raises(ConfigError, match="problem"):
        prepare_run(config, store)
    assert store.list_runs() == []


def test_every_strategy_is_real_and_declares_what_it_needs():
    from core.catalog import describe
    from core.plugins import MemoryProfile
    from core.registry import STRATEGIES

    assert STRATEGIES.names() == ["sft", "qlora", "dpo", "orpo", "kto", "rlhf"]
    for name in STRATEGIES.names():
        s = STRATEGIES.get(name)  # refuses a strategy that lacks a declaration
        assert s.available() == (True, ""), name
        assert s.name == name and s.tasks and s.data_kinds and isinstance(s.memory, MemoryProfile)
    tasks = {t["name"]: t for t in describe()["tasks"]}
    assert all(t["available"] for t in tasks.values())
    assert "sft" in tasks["extractive-qa"]["strategies"] and "dpo" not in tasks["summarization"]["strategies"]
