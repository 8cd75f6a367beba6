"""The offline metrics on hand-made inputs: SQuAD EM/F1 (F1 must differ from EM on a partial
span), ROUGE, span post-processing from logits, and the callback that stores every eval metric."""

from __future__ import annotations

import math
import threading

import numpy as np
import pytest

from core.evaluation import exact_match, f1, normalize_answer, perplexity, quality_metrics, rouge, squad_metrics


def test_normalisation_follows_squad():
    assert normalize_answer("The  Eiffel Tower!") == "eiffel tower"
    assert normalize_answer("an apple, a pear") == "apple pear"


def test_exact_match_and_f1_on_spans():
    assert exact_match("the France", "France") == 1.0 and f1("France", "france.") == 1.0
    # A partly overlapping span: not an exact match, but most of its words are right.
    assert exact_match("in northern France", "France") == 0.0
    assert f1("in northern France", "France") == pytest.approx(0.5)       # P 1/3, R 1 -> 2*(1/3)/(4/3)
    assert f1("10th and 11th centuries", "10th century") == pytest.approx(2 * 0.25 * 0.5 / 0.75)
    assert f1("Rollo", "France") == 0.0
    # Unanswerable: only the empty answer is right.
    assert f1("", "") == 1.0 and f1("France", "") == 0.0 and f1("", "France") == 0.0


def test_squad_metrics_take_the_best_gold_and_differ_where_they_must():
    predictions = {"q1": "France", "q2": "in the 10th and 11th centuries", "q3": "", "q4": "Norway"}
    references = {"q1": ["France", "France"],
                  "q2": ["10th and 11th centuries", "in the 10th and 11th centuries"],
                  "q3": [],                      # unanswerable, predicted as such
                  "q4": ["Denmark, Iceland and Norway"]}
    scores = squad_metrics(predictions, references)
    assert scores["exact_match"] == pytest.approx(75.0)                   # q1, q2 (2nd gold), q3
    assert scores["f1"] == pytest.approx(100 * (1 + 1 + 1 + 0.4) / 4)      # q4: P 1, R 1/4 -> 0.4
    assert scores["f1"] > scores["exact_match"]
    assert scores["no_answer_f1"] == 100.0 and scores["has_answer_f1"] == pytest.approx(100 * 2.4 / 3)


def test_rouge_scores_overlap():
    same = rouge(["the cat sat on the mat"], ["the cat sat on the mat"])
    assert same == pytest.approx({"rouge1": 1.0, "rouge2": 1.0, "rougeL": 1.0})
    part = rouge(["the cat sat"], ["the cat sat on the mat"])
    assert 0 < part["rouge2"] < part["rouge1"] < 1
    assert rouge(["dogs bark"], ["the cat sat"])["rouge1"] == 0.0
    with pytest.raises(ValueError):
        rouge(["a"], [])


def test_perplexity_and_quality_metrics():
    assert perplexity(math.log(10)) == pytest.approx(10.0)
    assert perplexity(1e6) == pytest.approx(math.exp(50))  # capped, never inf
    got = quality_metrics({"eval_loss": 1.0, "eval_runtime": 2.0, "eval_samples_per_second": 3.0, "epoch": 1.0,
                           "eval_num_tokens": 9.0, "eval_f1": 50, "flag": True, "eval_nan": float("nan")})
    assert got == {"eval_loss": 1.0, "eval_f1": 50.0}


def test_best_span_maps_logits_to_characters_and_knows_no_answer():
    from core.tasks.qa import Window, best_span

    context = "Normandy is a region in France."
    # tokens: <cls> q <sep> Normandy is a region in France . <sep>
    offsets = [None, None, None, (0, 8), (9, 11), (12, 13), (14, 20), (21, 23), (24, 30), (30, 31), None]
    w = Window(example=0, offsets=offsets, cls_index=0)
    start, end = np.full(11, -5.0), np.full(11, -5.0)
    start[8], end[8] = 4.0, 4.0           # "France"
    span = best_span(context, [w], [start], [end])
    assert span["answer"] == "France" and context[span["start"]:span["end"]] == "France"
    assert 0 < span["score"] <= 1
    start[0], end[0] = 9.0, 9.0           # the classifier token wins: no answer
    assert best_span(context, [w], [start], [end])["answer"] == ""
    # An end before the start is never chosen, even with the highest logits.
    start2, end2 = np.full(11, -5.0), np.full(11, -5.0)
    start2[8], end2[3], end2[8] = 4.0, 9.0, 1.0
    assert best_span(context, [w], [start2], [end2])["answer"] == "France"


def test_qa_windows_label_answers_and_unanswerables(demo_model):
    from transformers import AutoTokenizer

    from core.demo_model import demo_for
    from core.tasks.qa import encode

    tok = AutoTokenizer.from_pretrained(demo_for("demo", "extractive-qa"))
    context = " ".join(f"word{i}" for i in range(120)) + " The answer is Paris. " + " ".join(
        f"tail{i}" for i in range(120))
    start = context.index("Paris")
    rows = [{"id": "a", "question": "Where?", "context": context,
             "answers": {"text": ["Paris"], "answer_start": [start]}},
            {"id": "b", "question": "Who?", "context": context, "answers": {"text": [], "answer_start": []}}]
    inputs, windows = encode(rows, tok, max_length=96)
    assert len(windows) > 2                         # long contexts are split into windows
    labelled = [i for i, w in enumerate(windows) if w.example == 0 and inputs["start_positions"][i] != 0]
    assert labelled                                 # the window(s) holding the answer point at it
    for i in labelled:
        s, e = inputs["start_positions"][i], inputs["end_positions"][i]
        assert context[windows[i].offsets[s][0]:windows[i].offsets[e][1]] == "Paris"
    assert all(inputs["start_positions"][i] == 0 for i, w in enumerate(windows) if w.example == 1)


def test_callback_stores_every_eval_metric(store):
    from core.callback import EventCallback
    from core.events import EventLog

    run = store.create_run("m", {})
    events = EventLog(run.id)
    cb = EventCallback(events, store, run.id, threading.Event())

    class State:
        global_step = 3

    cb.on_evaluate(None, State(), None, metrics={"eval_loss": 2.0, "eval_rouge1": 12.5, "eval_perplexity": 7.4,
                                                 "eval_runtime": 1.0, "epoch": 1.0})
    cb.on_evaluate(None, State(), None, metrics={"eval_loss": 0.69, "eval_rewards/accuracies": 0.75})
    cb.on_evaluate(None, State(), None, metrics={"eval_loss": math.log(4)})  # a plain LM evaluation
    names = [(p.name, round(p.value, 3)) for p in store.metrics(run.id)]
    assert ("eval_rouge1", 12.5) in names and ("perplexity", 7.4) in names
    assert ("eval_rewards/accuracies", 0.75) in names
    assert ("perplexity", 4.0) in names and not any(n == "eval_runtime" for n, _ in names)
    evals = [e for e in events.events if e.type == "eval"]
    assert len(evals) == 3 and "perplexity" not in evals[1].data  # a preference loss has none
