"""Extractive question answering: an encoder with a span head, trained and scored SQuAD-style.

Preprocessing (as in the SQuAD v2 recipe): each question is paired with its context; a context
longer than ``max_length`` is split into overlapping windows (``stride`` tokens shared between
neighbours) so no answer is lost at a cut. A window is labelled with the token span of the
answer when the whole answer lies inside it, and with the first token (the classifier token:
"no answer") otherwise, which is also the label of unanswerable questions.

Prediction: for every window, the best start/end pair among the ``N_BEST`` highest logits that
lies inside the context, ends after it starts and is at most ``MAX_ANSWER_TOKENS`` long; the
best over all windows wins unless the "no answer" score (start and end on the classifier token)
is higher. The span maps back to characters of the context through the offsets. Exact match and
F1 are then computed on those texts (core.evaluation.squad_metrics), at every evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass

N_BEST = 20             # start/end candidates per window; more finds rarer spans, costs little
MAX_ANSWER_TOKENS = 30  # longest answer predicted; SQuAD answers are short


def stride_for(max_length: int) -> int:
    """Tokens shared by neighbouring windows: a quarter of the window (128 for 512)."""
    return max(max_length // 4, 8)


@dataclass
class Window:
    """Where one tokenised window came from, for mapping predicted tokens back to characters."""

    example: int                         # index of its question in the example list
    offsets: list[tuple[int, int] | None]  # per token: its characters in the context, None outside it
    cls_index: int = 0


def encode(rows: list[dict], tokenizer, max_length: int, *, labels: bool = True) -> tuple[dict, list[Window]]:
    """Tokenise question/context pairs into windows; with ``labels``, their start/end positions.

    Returns:
        (the model inputs, one list per key, one entry per window; a Window per window).
    """
    pad_right = tokenizer.padding_side == "right"
    questions = [_cut(r["question"].lstrip(), tokenizer, max_length // 2) for r in rows]
    contexts = [r["context"] for r in rows]
    enc = tokenizer(questions if pad_right else contexts, contexts if pad_right else questions,
                    truncation="only_second" if pad_right else "only_first", max_length=max_length,
                    stride=stride_for(max_length), return_overflowing_tokens=True, return_offsets_mapping=True)
    context_id = 1 if pad_right else 0
    windows: list[Window] = []
    starts: list[int] = []
    ends: list[int] = []
    for i in range(len(enc["input_ids"])):
        seq_ids = enc.sequence_ids(i)
        ids = enc["input_ids"][i]
        cls_index = ids.index(tokenizer.cls_token_id) if tokenizer.cls_token_id in ids else 0
        offsets = [tuple(o) if s == context_id else None for o, s in zip(enc["offset_mapping"][i], seq_ids)]
        example = enc["overflow_to_sample_mapping"][i]
        windows.append(Window(example, offsets, cls_index))
        if labels:
            start, end = _label(rows[example]["answers"], offsets, cls_index)
            starts.append(start)
            ends.append(end)
    inputs = {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc}
    if labels:
        inputs.update(start_positions=starts, end_positions=ends)
    return inputs, windows


def _cut(text: str, tokenizer, max_tokens: int) -> str:
    """``text`` cut to ``max_tokens`` tokens: a question longer than half the window would leave
    no room for the context windows to overlap (the tokenizer refuses that)."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return text if len(ids) <= max_tokens else tokenizer.decode(ids[:max_tokens])


def _label(answers: dict, offsets: list, cls_index: int) -> tuple[int, int]:
    """Token positions of the (first) answer when it lies wholly inside this window, else cls."""
    if not answers["text"]:
        return cls_index, cls_index  # unanswerable
    start_char = answers["answer_start"][0]
    end_char = start_char + len(answers["text"][0])
    inside = [i for i, o in enumerate(offsets) if o is not None]
    if not inside or offsets[inside[0]][0] > start_char or offsets[inside[-1]][1] < end_char:
        return cls_index, cls_index  # the answer is (partly) outside this window
    start = next(i for i in inside if offsets[i][1] > start_char)
    end = next(i for i in reversed(inside) if offsets[i][0] < end_char)
    return start, end


def best_span(context: str, windows: list[Window], start_logits, end_logits) -> dict:
    """The predicted answer of one question from its windows' logits.

    Returns:
        {"answer": text ("" for no answer), "start", "end" (character offsets, -1 for no answer),
        "score": the probability of that answer (or of "no answer") under its window's start and
        end softmax, "null_score": the no-answer logit sum}.
    """
    import numpy as np

    best = None
    null, null_prob = None, 0.0
    for w, s_log, e_log in zip(windows, start_logits, end_logits):
        n = len(w.offsets)
        s_log, e_log = np.asarray(s_log[:n], dtype=np.float64), np.asarray(e_log[:n], dtype=np.float64)
        p_s, p_e = _softmax(s_log), _softmax(e_log)
        null_here = s_log[w.cls_index] + e_log[w.cls_index]
        if null is None or null_here < null:  # the window most sure there is an answer decides
            null, null_prob = null_here, float(p_s[w.cls_index] * p_e[w.cls_index])
        for s in np.argsort(s_log)[::-1][:N_BEST]:
            if w.offsets[s] is None:
                continue
            for e in np.argsort(e_log)[::-1][:N_BEST]:
                if w.offsets[e] is None or e < s or e - s + 1 > MAX_ANSWER_TOKENS:
                    continue
                score = s_log[s] + e_log[e]
                if best is None or score > best[0]:
                    best = (score, w.offsets[s][0], w.offsets[e][1], float(p_s[s] * p_e[e]))
    if best is None or (null is not None and null > best[0]):
        return {"answer": "", "start": -1, "end": -1, "score": null_prob,
                "null_score": float(null) if null is not None else 0.0}
    _, start, end, prob = best
    text = context[start:end]
    lead = len(text) - len(text.lstrip())
    return {"answer": text.strip(), "start": start + lead, "end": start + lead + len(text.strip()),
            "score": prob, "null_score": float(null)}


def _softmax(x):
    import numpy as np

    z = np.exp(x - x.max())
    return z / z.sum()


def predict(rows: list[dict], windows: list[Window], start_logits, end_logits) -> dict[str, dict]:
    """Question id -> best_span(...) for every row, from the logits of all windows."""
    by_example: dict[int, list[int]] = {}
    for i, w in enumerate(windows):
        by_example.setdefault(w.example, []).append(i)
    out = {}
    for k, row in enumerate(rows):
        idx = by_example.get(k, [])
        out[row["id"]] = best_span(row["context"], [windows[i] for i in idx],
                                   [start_logits[i] for i in idx], [end_logits[i] for i in idx])
    return out


def squad_scorer(rows: list[dict], windows: list[Window]):
    """A scorer for :func:`core.strategies.common.with_eval_metrics`: predicts spans from the
    evaluation's start/end logits and scores exact match and F1 against ``rows`` (whose windows,
    from :func:`encode`, are in the order of the eval dataset)."""

    def score(trainer, output, prefix: str) -> dict:
        from core.evaluation import squad_metrics

        if not rows or output.predictions is None:
            return {}
        start_logits, end_logits = output.predictions[:2]
        preds = predict(rows, windows, start_logits, end_logits)
        return squad_metrics({q: p["answer"] for q, p in preds.items()},
                             {r["id"]: r["answers"]["text"] for r in rows})

    return score


# The final metrics worth reporting (every eval metric is stored as a curve anyway).
REPORTED = ("eval_loss", "eval_exact_match", "eval_f1", "eval_has_answer_f1", "eval_no_answer_f1")


def train(ctx) -> dict:
    """Fine-tune an encoder's span head and LoRA on SQuAD-style rows; return loss, EM and F1."""
    from datasets import Dataset
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

    from core.strategies.common import train_save_evaluate, training_kwargs, with_eval_metrics, with_lora

    c, tokenizer = ctx.config, ctx.tokenizer
    # An encoder's window cannot exceed its position table (BERT-style models: 512).
    window = min(c.max_length, getattr(ctx.model.config, "max_position_embeddings", None) or c.max_length)
    # 1. adapt: LoRA on the encoder; the span head (qa_outputs) is trained fully and saved with it
    model = with_lora(ctx, "QUESTION_ANS")
    # 2. data: windows over long contexts, labelled with the answer's tokens (or "no answer")
    train_inputs, _ = encode(ctx.train_rows, tokenizer, window)
    train_ds = Dataset.from_dict(train_inputs)
    eval_ds, eval_windows = None, []
    if ctx.eval_rows:
        eval_inputs, eval_windows = encode(ctx.eval_rows, tokenizer, window)
        eval_ds = Dataset.from_dict(eval_inputs)
    # 3. trainer, with span prediction, exact match and F1 at every evaluation
    args = TrainingArguments(**training_kwargs(ctx), label_names=["start_positions", "end_positions"])
    trainer = with_eval_metrics(Trainer, squad_scorer(ctx.eval_rows, eval_windows), predictions=True)(
        model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds, processing_class=tokenizer,
        data_collator=DataCollatorWithPadding(tokenizer), callbacks=ctx.callbacks)
    # 4-6. train, save, evaluate: exact match and F1 of the predicted spans on the validation split
    return train_save_evaluate(trainer, ctx, eval_ds, keep=REPORTED)
