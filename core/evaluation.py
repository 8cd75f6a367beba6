"""Metrics, computed offline: perplexity, ROUGE-1/2/L, SQuAD exact match and F1.

No hub access at run time: ``evaluate.load("rouge")`` / ``("squad")`` fetch their scripts from
the hub, so ROUGE comes from ``rouge-score`` directly and EM/F1 are the official SQuAD v2
definitions, written out here (normalise: lower case, drop punctuation and the articles a/an/the,
collapse whitespace; F1 over the bag of tokens; an unanswerable question scores 1 only for an
empty prediction). Every function is pure: lists in, a dict of floats out.
"""

from __future__ import annotations

import collections
import math
import re
import string

# Keys of a trainer's metrics that describe speed or bookkeeping, not quality: not worth a curve.
SPEED_SUFFIXES = ("_runtime", "_samples_per_second", "_steps_per_second", "_model_preparation_time",
                  "num_tokens", "total_flos")


def perplexity(loss: float) -> float:
    """exp(loss), capped so that a diverged loss gives a large number rather than inf."""
    return math.exp(min(float(loss), 50.0))


def rouge(predictions: list[str], references: list[str]) -> dict[str, float]:
    """Mean ROUGE-1/2/L F-measure (0..1) of ``predictions`` against ``references``.

    Args:
        predictions: generated summaries.
        references: the reference summaries, same length.

    Raises:
        ValueError: the two lists differ in length.
    """
    from rouge_score import rouge_scorer

    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    if not predictions:
        return {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    totals = collections.Counter()
    for pred, ref in zip(predictions, references):
        for name, score in scorer.score(ref, pred).items():
            totals[name] += score.fmeasure
    return {name: totals[name] / len(predictions) for name in ("rouge1", "rouge2", "rougeL")}


def normalize_answer(text: str) -> str:
    """SQuAD's normalisation: lower case, no punctuation, no articles, single spaces."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def f1(prediction: str, gold: str) -> float:
    """Token-overlap F1 between a predicted and a gold answer (SQuAD definition).

    Empty vs empty (both say "unanswerable") is 1; empty vs non-empty is 0.
    """
    pred_tokens, gold_tokens = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not pred_tokens or not gold_tokens:
        return float(pred_tokens == gold_tokens)
    common = collections.Counter(pred_tokens) & collections.Counter(gold_tokens)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred_tokens), same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def squad_metrics(predictions: dict[str, str], references: dict[str, list[str]]) -> dict[str, float]:
    """Exact match and F1 in percent, each the best over a question's gold answers, averaged.

    Args:
        predictions: question id -> predicted answer text ("" for "no answer").
        references: question id -> its gold answer texts (empty list: unanswerable).

    Returns:
        {"exact_match", "f1"} over all questions, plus "has_answer_f1" / "no_answer_f1" when the
        set has both kinds (as the SQuAD v2 script reports them).
    """
    em_of: dict[str, float] = {}
    f1_of: dict[str, float] = {}
    for qid, golds in references.items():
        golds = [g for g in golds if normalize_answer(g)] or [""]
        pred = predictions.get(qid, "")
        em_of[qid] = max(exact_match(pred, g) for g in golds)
        f1_of[qid] = max(f1(pred, g) for g in golds)
    n = len(references) or 1
    out = {"exact_match": 100.0 * sum(em_of.values()) / n, "f1": 100.0 * sum(f1_of.values()) / n}
    has = [q for q, g in references.items() if any(normalize_answer(x) for x in g)]
    no = [q for q in references if q not in has]
    if has and no:
        out["has_answer_f1"] = 100.0 * sum(f1_of[q] for q in has) / len(has)
        out["no_answer_f1"] = 100.0 * sum(f1_of[q] for q in no) / len(no)
    return out


def quality_metrics(metrics: dict) -> dict[str, float]:
    """The numeric metrics of a trainer's output, without speed figures, token counts and the epoch."""
    return {k: float(v) for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "epoch"
            and not k.endswith(SPEED_SUFFIXES) and v == v}


def select(metrics: dict, keep: tuple[str, ...]) -> dict:
    """The entries of ``metrics`` named in ``keep`` (a name ending in "/" keeps a whole group)."""
    return {k: v for k, v in metrics.items()
            if k in keep or any(n.endswith("/") and k.startswith(n) for n in keep)}
