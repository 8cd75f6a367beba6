"""The run config: defaults, YAML round trip, CLI flags generated from it, every problem at once."""

from __future__ import annotations

import pytest

from app.main import build_parser, config_from_args
from core.checks import validate_config
from core.config import RunConfig, config_fields, from_yaml, load_yaml, to_yaml
from core.errors import ConfigError
from core.paths import ASSETS


def test_defaults_are_valid_except_missing_dataset():
    problems = validate_config(RunConfig())
    assert [p.field for p in problems] == ["dataset"]


def test_yaml_round_trip_keeps_every_field():
    cfg = RunConfig(dataset="x.json", lora_r=32, learning_rate=1e-4, packing=True,
                    column_map={"q": "instruction"}, template_vars={"name": "Ada"})
    back = from_yaml(to_yaml(cfg))
    assert back == cfg


def test_yaml_reports_all_unknown_and_mistyped_fields_at_once():
    with pytest.raises(ConfigError) as err:
        from_yaml("lora_rank: 8\nlearning_rate: fast\nmax_steps: 2.5\n", source="bad.yaml")
    fields = sorted(p.field for p in err.value.problems)
    assert fields == ["learning_rate", "lora_rank", "max_steps"]
    text = str(err.value)
    assert "bad.yaml" in text and "did you mean 'lora_r'" in text


def test_wrong_types_and_out_of_range_values_are_one_answer():
    """A refused file or mapping names every field to fix, not the mistyped ones first and the
    out-of-range ones on the next try."""
    with pytest.raises(ConfigError) as err:
        from_yaml("learning_rate: abc\nlora_r: -1\nprecision: fast\nmax_steps: 3\n", source="bad.yaml")
    found = {p.field: p for p in err.value.problems}
    assert sorted(found) == ["learning_rate", "lora_r", "precision"]
    assert "not a number" in found["learning_rate"].message and found["learning_rate"].hint
    assert "below the minimum 1" in found["lora_r"].message and found["lora_r"].hint == "use a value >= 1"
    assert "auto" in found["precision"].message and "precision" in found["precision"].hint
    assert all(p.file == "bad.yaml" for p in err.value.problems)
    # The same for a mapping (the API, the form): and a valid mapping is still built as before.
    with pytest.raises(ConfigError) as err:
        RunConfig.from_dict({"batch_size": "many", "learning_rate": 5})
    assert {p.field for p in err.value.problems} == {"batch_size", "learning_rate"}
    assert RunConfig.from_dict({"lora_r": 0}).lora_r == 0  # range checked by validate_config


def test_yaml_syntax_error_names_the_line():
    with pytest.raises(ConfigError) as err:
        from_yaml("model: demo\nlora_r: [1, 2\n", source="broken.yaml")
    assert err.value.problems[0].line is not None
    assert "broken.yaml" in str(err.value)


def test_validation_reports_every_problem_at_once():
    cfg = RunConfig(dataset="", lora_r=0, validation_split=0.9, strategy="nope", name="../evil")
    fields = {p.field for p in validate_config(cfg)}
    assert {"dataset", "lora_r", "validation_split", "strategy", "name"} <= fields


@pytest.mark.parametrize("name", ["../x", "a/b", "a\\b", "x" * 100, "bad\x00name", "tab\tname", ".hidden"])
def test_hostile_names_are_refused(name):
    problems = validate_config(RunConfig(dataset="d.json", name=name), check_paths=False)
    assert any(p.field == "name" for p in problems)


def test_strategy_that_does_not_fit_the_task_is_refused():
    problems = validate_config(RunConfig(dataset="d.json", strategy="dpo", task="extractive-qa"), check_paths=False)
    msgs = [p.message for p in problems if p.field == "strategy"]
    assert msgs and "cannot train task" in msgs[0]


def test_every_config_field_is_a_cli_flag():
    parser = build_parser()
    train = parser._subparsers._group_actions[0].choices["train"]
    flags = {opt for a in train._actions for opt in a.option_strings}
    for f in config_fields():
        assert "--" + f.name.replace("_", "-") in flags


def test_cli_flags_override_the_yaml(tmp_path):
    yaml_path = tmp_path / "run.yaml"
    yaml_path.write_text("model: demo\nlora_r: 4\nmax_steps: 7\n")
    args = build_parser().parse_args(["train", "--config", str(yaml_path), "--lora-r", "12",
                                      "--packing", "true", "--column-map", "q=instruction"])
    cfg = config_from_args(args)
    assert (cfg.lora_r, cfg.max_steps, cfg.packing, cfg.column_map) == (12, 7, True, {"q": "instruction"})


def test_bad_cli_values_are_all_reported():
    args = build_parser().parse_args(["train", "--lora-r", "many", "--learning-rate", "x"])
    with pytest.raises(ConfigError) as err:
        config_from_args(args)
    assert {p.field for p in err.value.problems} == {"--lora-r", "--learning-rate"}


def test_preset_dataset_path_is_relative_to_the_preset():
    cfg = load_yaml(ASSETS / "presets" / "identity-demo.yaml")
    assert cfg.dataset.endswith("identity.json")
    assert validate_config(cfg) == []


def test_a_registered_strategy_is_accepted_by_config_and_cli(monkeypatch):
    from core.registry import STRATEGIES
    from core.strategies.sft import SFTStrategy

    monkeypatch.setitem(STRATEGIES._factories, "mystrategy", lambda: SFTStrategy(name="mystrategy"))
    assert validate_config(RunConfig(dataset="d.json", strategy="mystrategy"), check_paths=False) == []
    args = build_parser().parse_args(["train", "--strategy", "mystrategy"])
    assert config_from_args(args).strategy == "mystrategy"


def test_a_config_saved_before_the_plugins_declared_their_adjustments_still_loads_and_trains_alike():
    """Runs recorded before issue 13 hold the config as given (qlora with quantization none, kto
    with batch_size 1): they load as they are, and the adjustments (applied again by the engine
    when such a run is resumed) give what those runs trained with."""
    from core.checks import adjusted

    old = from_yaml("# ModelForge run configuration\nstrategy: qlora\nquantization: none\nlora_r: 8\n"
                    "dataset: d.json\nprovider: huggingface\n", source="old-run/config.yaml")
    assert (old.strategy, old.quantization) == ("qlora", "none")
    assert adjusted(old).quantization == "4bit" and adjusted(adjusted(old)) == adjusted(old)
    kto = RunConfig.from_dict({**RunConfig().to_dict(), "strategy": "kto", "batch_size": 1}, source="run x")
    assert adjusted(kto).batch_size == 2
