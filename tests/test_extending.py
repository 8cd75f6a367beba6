"""The two routes of docs/extending.md, as written there: a strategy (one file + one register
line) and a provider (the page's code block, executed), each run through the engine."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from core.config import RunConfig
from core.engine import run_training
from core.events import EventLog, read_events
from tests.helpers import assert_answers

DOC = Path(__file__).resolve().parents[1] / "docs" / "extending.md"


def _start(store, tmp_path, config: RunConfig):
    """What the CLI does: the pre-flight check (with the new plugin's declarations), record, train."""
    from core.checks import run_checks
    from core.run import create_run

    checked = run_checks(config.replace(output_dir=str(tmp_path)))
    assert checked.ok, checked.problems
    config, run_id, run_dir = create_run(checked.config, store)
    return run_training(config, store, EventLog(run_id), run_id, run_dir), run_dir


@pytest.fixture()
def registered():
    """Registers like the one line of the doc; unregisters afterwards (the registry is global)."""
    from core.registry import PROVIDERS, STRATEGIES

    before = (STRATEGIES.names(), PROVIDERS.names())
    yield
    for name in set(STRATEGIES.names()) - set(before[0]):
        STRATEGIES.unregister(name)
    for name in set(PROVIDERS.names()) - set(before[1]):
        PROVIDERS.unregister(name)


def test_a_new_strategy_is_one_file_and_one_line(registered, store, tmp_path, small_alpaca, demo_model):
    from core.catalog import describe
    from core.inference import load_model
    from core.strategies.examples.full_finetune import FullFineTuneStrategy  # the one file
    from core.registry import STRATEGIES

    assert 'STRATEGIES.register("full", FullFineTuneStrategy)' in DOC.read_text()
    STRATEGIES.register("full", FullFineTuneStrategy)                       # the one line

    assert any(s["name"] == "full" and s["available"] for s in describe()["strategies"])
    config = RunConfig(model="demo", dataset=str(small_alpaca), strategy="full", max_steps=2, batch_size=2,
                       max_length=64, logging_steps=1, save_steps=50, max_samples=16, validation_split=0.25)
    result, run_dir = _start(store, tmp_path, config)
    assert result.status == "completed", result.error
    assert any(e.type == "step" for e in read_events(run_dir / "events.jsonl"))
    assert {"train_loss", "eval_loss", "perplexity"} <= set(store.get_model(result.model_id).metrics)

    # Every weight trained: the saved whole model differs from the demo in a non-LoRA layer.
    from safetensors.torch import load_file

    saved = load_file(str(run_dir / "model" / "model.safetensors"))
    base = load_file(str(demo_model / "model.safetensors"))
    key = "model.layers.0.mlp.down_proj.weight"
    assert not saved[key].equal(base[key])
    assert_answers(load_model(str(run_dir / "model")), "Hello", 4)


def test_the_strategy_declares_its_data(registered, tmp_path, shared_data):
    from core.checks import validate_file
    from core.strategies.examples.full_finetune import FullFineTuneStrategy
    from core.registry import STRATEGIES

    STRATEGIES.register("full", FullFineTuneStrategy)
    report = validate_file(shared_data / "dpo_en_demo.json", strategy="full", max_rows=4)
    assert not report.ok and "conversation or text" in report.errors[0].message


def test_a_new_provider_is_the_docs_block_and_one_line(registered, store, tmp_path, small_alpaca, demo_model):
    from core.errors import ModelLoadError
    from core.registry import PROVIDERS

    block = re.search(r"<!-- example: provider -->\s*```python\n(.*?)```", DOC.read_text(), re.S)
    assert block, "the provider example is missing from docs/extending.md"
    exec(compile(block.group(1), "docs/extending.md#provider", "exec"), {"__name__": "local_provider"})

    provider = PROVIDERS.get("local")
    with pytest.raises(ModelLoadError, match="not a local folder"):
        provider.load(RunConfig(model="Qwen/Qwen2.5-0.5B-Instruct", dataset="x.json"))
    config = RunConfig(model="demo", provider="local", dataset=str(small_alpaca), max_steps=1, batch_size=2,
                       max_length=64, save_steps=50, max_samples=8, validation_split=0.0)
    result, _ = _start(store, tmp_path, config)
    assert result.status == "completed", result.error
    assert store.get_model(result.model_id).provider == "local"
