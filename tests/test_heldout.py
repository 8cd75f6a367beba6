"""Issue 16, "sensible held-out data by default": the validation rule (5% once the data has 200
rows, none below, at most 300; an explicit share or 0 still works), its words in the run's log,
and the config's 'auto' value in flags and YAML."""

from __future__ import annotations

import pytest

from core.config import RunConfig, load_yaml
from core.data import MAX_EVAL_ROWS, held_out, split_train_eval
from core.errors import ConfigError


@pytest.mark.parametrize("rows, split, count, text", [
    (960, -1, 48, "validation: 48 of 960 rows held out (auto: 5%)"),
    (200, -1, 10, "validation: 10 of 200 rows held out (auto: 5%)"),
    (91, -1, 0, "validation: none (auto: 91 rows is too few, 200 needed; set validation_split to hold some out)"),
    (199, -1, 0, None),
    (100_000, -1, MAX_EVAL_ROWS, "validation: 300 of 100000 rows held out (auto: 5%, at most 300)"),
    (91, 0.0, 0, "validation: none (validation_split is 0)"),
    (91, 0.1, 9, "validation: 9 of 91 rows held out (validation_split 0.1)"),
    (3, 0.1, 1, None),      # an explicit share holds out at least one row...
    (2, 0.5, 1, None),      # ...and training keeps at least one
    (1, 0.5, 0, "validation: none (1 row)"),
    (5000, 0.2, 300, "validation: 300 of 5000 rows held out (validation_split 0.2, at most 300)"),
])
def test_the_held_out_rule(rows, split, count, text):
    choice = held_out(rows, split)
    assert choice.count == count
    if text:
        assert choice.text == text
    train, evaluation = split_train_eval(list(range(rows)), split, seed=3)
    assert len(evaluation) == count and sorted(train + evaluation) == list(range(rows))


def test_auto_is_the_default_and_is_accepted_by_name(tmp_path):
    from app.main import build_parser, config_from_args

    assert RunConfig().validation_split == -1
    args = build_parser().parse_args(["train", "--dataset", "x.json", "--validation-split", "auto"])
    assert config_from_args(args).validation_split == -1
    path = tmp_path / "run.yaml"
    path.write_text("dataset: x.json\nvalidation_split: auto\n")
    assert load_yaml(path).validation_split == -1
    path.write_text("dataset: x.json\nvalidation_split: 0\n")
    assert load_yaml(path).validation_split == 0


def test_a_negative_share_other_than_auto_is_refused_by_name():
    from core.checks import validate_config

    problems = validate_config(RunConfig(dataset="x.json", validation_split=-0.5), check_paths=False)
    assert [p for p in problems if p.field == "validation_split" and "-1 (auto)" in p.hint], problems
    with pytest.raises(ConfigError) as info:
        RunConfig.from_dict({"validation_split": "most"})
    assert "validation_split" in str(info.value.problems)


def test_a_tiny_data_set_trains_on_every_row_and_the_log_says_why(store, shared_data, demo_model):
    """The identity data (91 rows) with the defaults: no rows held out, no eval, and the reason in
    the events (which the Train tab's log and the CLI print)."""
    from core.engine import prepare_run, run_training
    from core.events import EventLog, read_events

    config, run_id, run_dir = prepare_run(RunConfig(
        model="demo", dataset=str(shared_data / "identity.json"), max_steps=1, batch_size=2, max_length=64,
        save_steps=50), store)
    result = run_training(config, store, EventLog(run_id), run_id, run_dir)
    assert result.status == "completed", result.error
    events = read_events(run_dir / "events.jsonl")
    said = [e.data["validation"] for e in events if e.type == "log" and "validation" in e.data]
    assert said == ["validation: none (auto: 91 rows is too few, 200 needed; set validation_split to hold "
                    "some out)"]
    assert not [e for e in events if e.type == "eval"]
    assert "eval_loss" not in result.metrics


def test_the_eval_plot_marks_the_step_early_stopping_kept():
    from components.train_tab import RunView, eval_plot

    view = RunView(run_id="r1", metrics={"best_step": 20})
    view.series["eval_loss"] = [(10, 2.0), (20, 1.5), (30, 1.7), (40, 1.9)]
    plot = eval_plot(view, "eval loss")
    rows = plot.value["data"]
    marker = [r for r in rows if r[2] == "best: step 20"]
    assert [r[0] for r in marker] == [20, 20] and {r[1] for r in marker} == {1.5, 2.0}  # a vertical line
    assert "best: step 20" in plot.title and "kept step 20 (eval loss 1.5)" in plot.caption
    plain = eval_plot(RunView(run_id="r2"), "eval loss")  # no early stopping: no marker
    assert {r[2] for r in plain.value["data"]} <= {"eval loss"}


def test_the_train_tab_eval_plot_says_why_there_is_no_eval_loss():
    from types import SimpleNamespace

    from components.train_tab import OUTPUT_NAMES, RunView, view_outputs

    idle = SimpleNamespace(jobs=SimpleNamespace(current=None, waiting=lambda: []))  # no run active
    text = "validation: none (auto: 91 rows is too few, 200 needed; set validation_split to hold some out)"
    out = view_outputs(idle, {}, RunView(run_id="r1", validation=text), relist=False)
    plot = out[OUTPUT_NAMES.index("eval_loss")]
    assert plot.visible is False  # an empty plot does not take a quarter of the tab
    note = out[OUTPUT_NAMES.index("eval_note")]
    assert note == ("No eval loss for this run (auto: 91 rows is too few, 200 needed; "
                    "set validation_split to hold some out).")


def test_train_help_states_the_rule(capsys):
    from app.main import build_parser

    with pytest.raises(SystemExit) as done:
        build_parser().parse_args(["train", "--help"])
    assert done.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "-1 (or 'auto', the default): 5% once the data has 200 rows, none below" in text
