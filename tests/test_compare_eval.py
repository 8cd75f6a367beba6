"""Issue 16, "did the fine-tune help?": base vs tuned on held-out rows (per task), the CLI's
``modelforge evaluate``, the Models tab's panel, early stopping and the trackers.

The identity demo is trained once for this file (module fixture), with 15% of its rows held out;
the comparison runs automatically at the end of that run.
"""

from __future__ import annotations

import json

import pytest

from core.config import RunConfig, load_yaml
from core.engine import prepare_run, run_training
from core.events import EventLog, read_events
from core.paths import ASSETS


def _train(store, config: RunConfig):
    config, run_id, run_dir = prepare_run(config, store)
    result = run_training(config, store, EventLog(run_id), run_id, run_dir)
    assert result.status == "completed", f"{result.error} ({result.hint})"
    return result, run_dir


@pytest.fixture(scope="module")
def identity(mf_home):
    """(services, result, run_dir) of the identity demo with 14 of its 91 rows held out."""
    from app.services import build_services

    services = build_services()
    config = load_yaml(ASSETS / "presets" / "identity-demo.yaml").replace(
        name="identity-compare", validation_split=0.15, max_steps=200, eval_steps=100, save_steps=100)
    result, run_dir = _train(services.store, config)
    return services, result, run_dir


@pytest.mark.slow
def test_identity_demo_tuned_beats_base_on_nearly_every_held_out_row(identity):
    services, result, run_dir = identity
    evals = services.store.evaluations(model_id=result.model_id)
    assert len(evals) == 1, "the comparison runs automatically after a run with validation rows"
    ev = evals[0]
    print(f"identity demo, held-out rows: {ev.summary}; base {ev.base}; tuned {ev.tuned}")
    assert ev.rows == 14 and ev.kind == "conversation" and ev.primary == "rougeL"
    assert ev.better >= ev.rows - 2, ev.summary                       # nearly every row
    assert ev.tuned["rougeL"] > ev.base["rougeL"] + 0.2                # measured: 0.014 -> 0.30
    assert ev.tuned["perplexity"] < ev.base["perplexity"]            # of the reference answers
    assert {"general_perplexity", "exact_match"} <= set(ev.base) & set(ev.tuned)  # forgetting check
    rows = [json.loads(line) for line in open(ev.predictions, encoding="utf-8")]
    assert len(rows) == 14
    assert {"prompt", "reference", "base", "tuned", "base_scores", "tuned_scores", "change"} <= set(rows[0])
    assert sum("Forge" in r["tuned"] for r in rows) >= 12
    finished = [e for e in read_events(run_dir / "events.jsonl") if e.type == "finished"][-1]
    assert finished.data["evaluation"]["better"] == ev.better


@pytest.mark.slow
def test_cli_evaluate_json(identity, capsys):
    from app.main import main

    services, result, run_dir = identity
    assert main(["evaluate", result.model_id, "--max-rows", "4", "--max-new-tokens", "24", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["rows"] == 4 and out["better"] + out["worse"] + out["same"] == 4
    assert {"rougeL", "exact_match", "perplexity"} <= set(out["base"]) & set(out["tuned"])
    assert out["better"] >= 3
    lines = open(out["predictions"], encoding="utf-8").read().splitlines()
    assert len(lines) == 4
    assert len(services.store.evaluations(model_id=result.model_id)) == 2    # recorded too


def test_cli_evaluate_refuses_bad_bounds_before_loading(identity, capsys):
    """0 or negative rows used to mean "the default", negative tokens failed inside generate()."""
    from app.main import main

    services, result, run_dir = identity
    before = len(services.store.evaluations(model_id=result.model_id))
    for flag, value in (("--max-rows", "0"), ("--max-rows", "-1"), ("--max-new-tokens", "-5")):
        assert main(["evaluate", result.model_id, flag, value]) == 2, (flag, value)
        err = capsys.readouterr().err
        assert flag.lstrip("-").replace("-", "_") in err and "internal error" not in err, err
    assert len(services.store.evaluations(model_id=result.model_id)) == before  # nothing recorded


@pytest.mark.slow
def test_cli_evaluate_on_a_file_and_bounded_by_default(identity, capsys, tmp_path):
    from app.main import main

    services, result, run_dir = identity
    rows = json.loads((ASSETS / "examples" / "identity.json").read_text())[:3]
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(rows))
    assert main(["evaluate", str(run_dir / "model"), "--dataset", str(path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["rows"] == 3
    assert "default bound on a CPU" in out["limits"] and "64 new tokens" in out["limits"]


def test_models_tab_panel_shows_summary_rows_and_download(store, tmp_path, mf_home):
    from components import evaluation_panel
    from components.common import AppContext
    from core.compare_eval import Comparison, record, write

    def row(prompt, b, t):
        return {"prompt": prompt, "reference": "ref", "base": "b", "tuned": "t", "change": t - b,
                "base_scores": {"rougeL": b}, "tuned_scores": {"rougeL": t}}

    result = Comparison(kind="conversation", rows=3, base={"rougeL": 0.2}, tuned={"rougeL": 0.5}, better=2, worse=1,
                        same=0, primary="rougeL", limits="3 of 3 rows", per_row=[row("a", 0.1, 0.9),
                                                                                   row("b", 0.5, 0.2), row("c", 0.0, 0.4)])
    write(result, tmp_path / "ev")
    record(store, result, model_id="model-x", run_id="run-x")
    ctx = AppContext(store=store, jobs=None)
    text, table, download = evaluation_panel.show(ctx, "model-x")
    assert "tuned better on 2 of 3 rows" in text and "ROUGE-L 0.2 -> 0.5" in text
    assert len(table[0]) == len(evaluation_panel.ROW_HEADERS)
    assert [r[1] for r in table] == ["a", "c", "b"]                     # most improved first
    assert [r[1] for r in evaluation_panel.show(ctx, "model-x", evaluation_panel.SORTS[1])[1]] == ["b", "c", "a"]
    assert download.startswith(str(mf_home / "exports")) and download.endswith(".jsonl")  # a path the app serves
    assert open(download, encoding="utf-8").read() == open(result.predictions, encoding="utf-8").read()
    assert evaluation_panel.show(ctx, "model-none")[0] == evaluation_panel.NONE_TEXT


def test_summarization_and_qa_comparisons_give_their_metrics(store, shared_data):
    result, run_dir = _train(store, RunConfig(
        model="demo", task="summarization", dataset=str(shared_data / "xsum_sample.jsonl"), max_steps=4,
        batch_size=2, max_length=128, validation_split=0.2, learning_rate=1e-2, compare_max_rows=4,
        compare_max_new_tokens=12, save_steps=50))
    ev = store.evaluations(run_id=result.run_id)[0]
    assert ev.kind == "summarization" and 2 <= ev.rows <= 4
    assert {"rouge1", "rouge2", "rougeL"} <= set(ev.base) & set(ev.tuned)
    assert all(0.0 <= ev.tuned[k] <= 1.0 for k in ("rouge1", "rouge2", "rougeL"))

    result, run_dir = _train(store, RunConfig(
        model="demo", task="extractive-qa", dataset=str(shared_data / "squad_v2_sample.json"), max_steps=4,
        batch_size=4, max_length=128, validation_split=0.3, learning_rate=1e-3, compare_max_rows=6,
        save_steps=50))
    ev = store.evaluations(run_id=result.run_id)[0]
    assert ev.kind == "qa" and 3 <= ev.rows <= 6 and ev.primary == "f1"
    assert {"exact_match", "f1"} <= set(ev.base) & set(ev.tuned)
    assert ev.better + ev.worse + ev.same == ev.rows


def test_preference_comparison_counts_chosen_by_likelihood(store, shared_data):
    result, run_dir = _train(store, RunConfig(
        model="demo", strategy="dpo", dataset=str(shared_data / "dpo_en_demo.json"), max_steps=2, batch_size=2,
        max_length=64, validation_split=0.1, learning_rate=1e-3, compare_max_rows=4, save_steps=50))
    ev = store.evaluations(run_id=result.run_id)[0]
    assert ev.kind == "preference" and ev.rows == 4 and ev.primary == "margin"
    assert 0.0 <= ev.tuned["chosen_preferred"] <= 1.0 and "margin" in ev.base


class _RisingEvalLoss:
    """A callback placed before EarlyStoppingCallback: the eval loss it reports is lowest at step 20
    and rises after it (as an overfitting run's does), deterministically and in few steps."""

    def __new__(cls):
        from transformers import TrainerCallback

        class Rising(TrainerCallback):
            def on_evaluate(self, args, state, control, metrics=None, **kwargs):
                if metrics is not None and "eval_loss" in metrics:
                    metrics["eval_loss"] = 1.0 + abs(state.global_step - 20) / 10
        return Rising()


def test_early_stopping_stops_when_eval_loss_rises_and_keeps_the_best(store, small_alpaca, monkeypatch):
    from safetensors.torch import load_file

    import core.trackers as trackers

    real = trackers.callbacks
    monkeypatch.setattr(trackers, "callbacks", lambda *a: [_RisingEvalLoss(), *real(*a)])
    result, run_dir = _train(store, RunConfig(
        model="demo", dataset=str(small_alpaca), max_steps=200, batch_size=2, max_length=64, validation_split=0.1,
        eval_steps=10, logging_steps=5, early_stopping_patience=2, compare_after_training=False))
    evals = [(e.step, e.data["eval_loss"]) for e in read_events(run_dir / "events.jsonl") if e.type == "eval"]
    last_step = max(p.step for p in store.metrics(result.run_id) if p.name == "loss")
    print(f"early stopping: evals {evals}; stopped at {last_step}, best {result.metrics.get('best_step')}")
    assert last_step == 40, "early stopping did not stop the run two evaluations after the best"
    assert result.metrics["best_step"] == 20
    # the model saved is the best checkpoint's
    saved = load_file(str(run_dir / "model" / "adapter_model.safetensors"))
    ckpt = load_file(str(run_dir / "checkpoints" / "checkpoint-20" / "adapter_model.safetensors"))
    last = load_file(str(run_dir / "checkpoints" / "checkpoint-40" / "adapter_model.safetensors"))
    assert all((saved[k] == ckpt[k]).all() for k in saved)
    assert any((saved[k] != last[k]).any() for k in saved)


def test_tensorboard_and_mlflow_hold_the_logged_loss(store, small_alpaca):
    pytest.importorskip("tensorboard")
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from core.trackers import mlflow_uri

    base = dict(model="demo", dataset=str(small_alpaca), max_steps=3, batch_size=2, max_length=64, logging_steps=1,
                validation_split=0.0, save_steps=50)
    result, run_dir = _train(store, RunConfig(report_to="tensorboard", **base))
    acc = EventAccumulator(str(run_dir / "tensorboard"))
    acc.Reload()
    losses = [s.value for s in acc.Scalars("train/loss")]
    assert len(losses) == 3 and all(v == v for v in losses)

    result, run_dir = _train(store, RunConfig(report_to="mlflow", **base))
    assert (run_dir / "mlruns").is_dir()
    client = MlflowClient(tracking_uri=mlflow_uri(run_dir))
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    assert len(runs) == 1
    history = client.get_metric_history(runs[0].info.run_id, "loss")
    assert [m.step for m in history] == [1, 2, 3]


def test_a_missing_tracker_is_reported_before_the_run(monkeypatch):
    import importlib.util

    from core.checks import validate_config

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    problems = validate_config(RunConfig(dataset="x.json", report_to="wandb"), check_paths=False)
    assert any(p.field == "report_to" and "wandb" in p.message for p in problems)
    problems = validate_config(RunConfig(dataset="x.json", early_stopping_patience=2, validation_split=0.0),
                               check_paths=False)
    assert any(p.field == "early_stopping_patience" for p in problems)


def test_train_more_continues_at_the_next_step_and_runs_compare_side_by_side(store, small_alpaca):
    from core.runs_compare import compare_runs
    from core.train_more import continuation_of, mark_model, prepare_more

    first, first_dir = _train(store, RunConfig(
        model="demo", dataset=str(small_alpaca), max_steps=3, batch_size=2, max_length=64, logging_steps=1,
        validation_split=0.1, save_steps=50, compare_after_training=False, name="more-test"))
    config, run_id, run_dir, ckpt = prepare_more(store, first.run_id, steps=2)
    assert ckpt.endswith("checkpoint-3") and config.max_steps == 5
    result = run_training(config, store, EventLog(run_id), run_id, run_dir, resume_from=ckpt)
    assert result.status == "completed", result.error
    link = mark_model(run_dir)
    steps = [e.step for e in read_events(run_dir / "events.jsonl") if e.type == "step"]
    assert steps[0] == 4 and steps[-1] == 5                       # continues at the next step
    assert link["run_id"] == first.run_id and continuation_of(run_dir)["from_step"] == 3
    assert store.get_model("more-test").id == result.model_id      # the newest version of the model
    assert store.get_model(first.model_id).id == first.model_id    # the first version stays

    d = compare_runs(store, [first.run_id, run_id])
    assert any(row[0] == "max_steps" and row[1:] == ["3", "5"] for row in d["config_diff"])
    assert {p["run"] for p in d["curves"]} == {h for h in d["config_headers"][1:]}
    assert any(row[0] == "train_loss" for row in d["metrics"])


def test_cli_train_more(mf_home, small_alpaca, capsys):
    from app.main import main

    common = ["--json"]
    assert main(["train", "--model", "demo", "--dataset", str(small_alpaca), "--max-steps", "3", "--batch-size", "2",
                 "--max-length", "64", "--logging-steps", "1", "--validation-split", "0", "--name", "cli-more",
                 *common]) == 0
    first = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert main(["train", "--more", first["run_id"], "--more-steps", "2", *common]) == 0
    more = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert more["status"] == "completed" and more["run_id"] != first["run_id"]
    from pathlib import Path

    steps = [e.step for e in read_events(Path(more["output_dir"]) / "events.jsonl") if e.type == "step"]
    assert steps[0] == 4 and steps[-1] == 5
    card = json.loads((Path(more["model_dir"]) / "modelforge.json").read_text())
    assert card["continues"]["run_id"] == first["run_id"] and card["continues"]["from_step"] == 3


@pytest.mark.parametrize("steps,epochs", [(0, 0.0), (-3, 0.0), (0, float("nan")), (0, float("inf")), (0, -1.0)])
def test_train_more_refuses_nothing_negative_or_non_finite_before_any_lookup(steps, epochs):
    from core.errors import ModelForgeError
    from core.train_more import prepare_more

    with pytest.raises(ModelForgeError) as err:
        prepare_more(None, "any-run", steps=steps, epochs=epochs)  # no store needed: refused first
    assert "--more-steps" in err.value.hint


def test_an_rlhf_run_s_comparison_adds_its_reward_model_s_score(store, shared_data, tmp_path):
    """After an rlhf run the comparison also scores base and tuned answers with the run's reward model."""
    rows = json.loads((shared_data / "dpo_en_demo.json").read_text())[:16]
    data = tmp_path / "dpo16.json"
    data.write_text(json.dumps(rows))
    result, run_dir = _train(store, RunConfig(
        model="demo", strategy="rlhf", dataset=str(data), max_steps=1, batch_size=2, max_length=64,
        validation_split=0.25, learning_rate=1e-3, compare_max_rows=3, compare_max_new_tokens=6, save_steps=50))
    ev = store.evaluations(run_id=result.run_id)[0]
    assert ev.kind == "preference" and ev.rows == 3
    assert {"reward", "chosen_preferred", "margin"} <= set(ev.base) & set(ev.tuned)
    assert "reward-model score" in ev.summary
    predicted = [json.loads(line) for line in open(ev.predictions, encoding="utf-8")]
    assert all(isinstance(r["tuned_scores"]["reward"], float) and "tuned_answer" in r for r in predicted)
    # the same score from the CLI's evaluate (the model folder finds RUN_DIR/reward_model)
    from core.compare_eval import evaluate_model

    again = evaluate_model(run_dir / "model", max_rows=2, max_new_tokens=6)
    assert again.rows == 2 and "reward" in again.tuned
