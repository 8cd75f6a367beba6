"""The two routes of docs/extending.md, as written there: a strategy (one file + one register
line) and a provider (the page's code block, executed), each run through the engine."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from core.config import RunConfig, save_yaml
from core.engine import run_training
from core.events import EventLog, read_events

DOC = Path(__file__).resolve().parents[1] / "docs" / "extending.md"


def _start(store, tmp_path, config: RunConfig):
    """What prepare_run does, less its check of the config's fixed name lists (see the doc)."""
    run = store.create_run("example", config.to_dict(), output_dir=str(tmp_path / "run"))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    save_yaml(config, run_dir / "config.yaml")
    return run_training(config, store, EventLog(run.id), run.id, run_dir), run_dir


@pytest.fixture()
def registered():
    """Registers like the one line of the doc; unregisters afterwards (the registry is global)."""
    from core.providers import registry as providers
    from core.strategies import registry as strategies

    strategies.names(), providers.names()  # load the built-ins first
    before = (dict(strategies._REGISTRY), dict(providers._REGISTRY))
    yield
    strategies._REGISTRY.clear()
    strategies._REGISTRY.update(before[0])
    providers._REGISTRY.clear()
    providers._REGISTRY.update(before[1])


def test_a_new_strategy_is_one_file_and_one_line(registered, store, tmp_path, small_alpaca, demo_model):
    from core.catalog import describe
    from core.inference import generate, load_model
    from core.strategies.examples.full_finetune import FullFineTuneStrategy  # the one file
    from core.strategies.registry import register

    assert 'register("full", FullFineTuneStrategy)' in DOC.read_text()
    register("full", FullFineTuneStrategy)                                  # the one line

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
    assert isinstance(generate(load_model(str(run_dir / "model")), "Hello", max_new_tokens=4), str)


def test_the_strategy_declares_its_data(registered, tmp_path, shared_data):
    from core.data import validate_file
    from core.strategies.examples.full_finetune import FullFineTuneStrategy
    from core.strategies.registry import register

    register("full", FullFineTuneStrategy)
    report = validate_file(shared_data / "dpo_en_demo.json", strategy="full", max_rows=4)
    assert not report.ok and "conversation or text" in report.errors[0].message


def test_a_new_provider_is_the_docs_block_and_one_line(registered, store, tmp_path, small_alpaca, demo_model):
    from core.errors import ModelLoadError
    from core.providers import registry as providers

    block = re.search(r"<!-- example: provider -->\s*```python\n(.*?)```", DOC.read_text(), re.S)
    assert block, "the provider example is missing from docs/extending.md"
    exec(compile(block.group(1), "docs/extending.md#provider", "exec"), {"__name__": "local_provider"})

    provider = providers.get("local")
    with pytest.raises(ModelLoadError, match="not a local folder"):
        provider.load(RunConfig(model="Qwen/Qwen2.5-0.5B-Instruct", dataset="x.json"))
    config = RunConfig(model="demo", provider="local", dataset=str(small_alpaca), max_steps=1, batch_size=2,
                       max_length=64, save_steps=50, max_samples=8, validation_split=0.0)
    result, _ = _start(store, tmp_path, config)
    assert result.status == "completed", result.error
    assert store.get_model(result.model_id).provider == "local"
