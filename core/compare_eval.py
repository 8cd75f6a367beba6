"""Did the fine-tune help? The base model and the tuned model answer the same held-out prompts
(greedy, same settings) and each answer is scored against the reference with the task's metrics.

- conversation rows (text generation): ROUGE-L and exact match of the generated answer, and the
  perplexity of the reference answer under each model;
- summarization rows: ROUGE-1/2/L of the generated summary;
- extractive QA rows: exact match and F1 of the predicted span;
- preference rows: how often each model gives the chosen answer a higher likelihood than the
  rejected one (and the mean log-likelihood margin); after an rlhf run, also the mean score its
  reward model gives each model's own (greedy) answers to the prompts (``reward``).

One model is loaded: the tuned LoRA model, whose adapter is switched off
(``PeftModel.disable_adapter``) for the base's answers, so base and tuned share every setting
and the memory of a single model. A row counts as *better* / *worse* / *same* by the task's
primary score (ROUGE-L, F1 or the likelihood margin). Every row is written to a JSONL file
(prompt, reference, base answer, tuned answer, scores), the summary to ``summary.json`` beside
it, and both are recorded (:class:`core.records.Evaluation`).

Forgetting check: for causal models, the perplexity of base and tuned on a small bundled sample
of general text (``assets/general_text.txt``), reported as ``general_perplexity``.

Bounded on a CPU: generation dominates the time, so by default a CPU evaluates at most
:data:`CPU_ROWS` rows with answers cut at :data:`CPU_TOKENS` tokens (a GPU :data:`GPU_ROWS` /
:data:`GPU_TOKENS`), and the summary says so (``limits``).
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from core.data.validate import MAX_EVAL_ROWS  # noqa: F401 - the held-out rule's cap, imported from here too
from core.errors import DataError, ModelForgeError
from core.paths import ASSETS

# Defaults when the caller gives no bound: a CPU generates ~10-50 tokens/s with a real small model.
CPU_ROWS, CPU_TOKENS = 30, 64     # ~2 x 30 answers of 64 tokens: minutes at most on 2 cores
GPU_ROWS, GPU_TOKENS = 200, 256
# The automatic comparison at the end of a run on a CPU: smaller still, every run with validation
# rows pays it (about 2 x 16 answers of 48 tokens: seconds for the demo, a minute or two for a 0.5B model).
AFTER_RUN_CPU_ROWS, AFTER_RUN_CPU_TOKENS = 16, 48
BATCH = 8                          # prompts generated together (left-padded)
SAME_EPS = 1e-6                    # two scores closer than this count as the same
PRIMARY = {"conversation": "rougeL", "summarization": "rougeL", "qa": "f1", "preference": "margin",
           "text": "perplexity"}
LOWER_IS_BETTER = {"perplexity"}
GENERAL_TEXT = ASSETS / "general_text.txt"
METRIC_LABELS = {"rougeL": "ROUGE-L", "rouge1": "ROUGE-1", "rouge2": "ROUGE-2", "exact_match": "exact match",
                 "f1": "F1", "perplexity": "perplexity", "chosen_preferred": "chosen preferred",
                 "margin": "likelihood margin", "general_perplexity": "general-text perplexity",
                 "reward": "reward-model score"}


@dataclass
class Comparison:
    """The result of one base-vs-tuned evaluation (what ``--json`` prints, what is recorded)."""

    kind: str
    rows: int
    base: dict[str, float]
    tuned: dict[str, float]
    better: int
    worse: int
    same: int
    primary: str
    predictions: str = ""
    limits: str = ""
    seconds: float = 0.0
    stopped: bool = False
    dataset: str = ""
    held_out_rows: int = 0
    per_row: list[dict] = field(default_factory=list, repr=False)

    def summary(self) -> str:
        """One line: 'tuned better on 41 of 50 rows, ROUGE-L 0.12 -> 0.63'."""
        p = self.primary
        head = (f"tuned better on {self.better} of {self.rows} rows (worse on {self.worse}, same on {self.same})"
                if self.rows else "no rows evaluated")
        parts = [head]
        if p in self.base and p in self.tuned:
            parts.append(f"{METRIC_LABELS.get(p, p)} {self.base[p]:.3g} -> {self.tuned[p]:.3g}")
        for k in ("chosen_preferred", "reward", "perplexity", "general_perplexity"):
            if k != p and k in self.base and k in self.tuned:
                parts.append(f"{METRIC_LABELS[k]} {self.base[k]:.3g} -> {self.tuned[k]:.3g}")
        text = ", ".join(parts)
        if self.stopped:
            text += " (stopped early)"
        return text

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("per_row")
        d["summary"] = self.summary()
        return d


def default_limits(device: str) -> tuple[int, int]:
    """(rows, new tokens) evaluated by default on ``device`` ("cpu", "cuda", "mps")."""
    return (CPU_ROWS, CPU_TOKENS) if device == "cpu" else (GPU_ROWS, GPU_TOKENS)


def _device_of(model: Any) -> str:
    try:
        return next(model.parameters()).device.type
    except (StopIteration, AttributeError):
        return "cpu"


def row_kind(row: dict) -> str:
    if "messages" in row:
        return "conversation"
    if "chosen" in row and "rejected" in row:
        return "preference"
    if "document" in row and "summary" in row:
        return "summarization"
    if "question" in row and "context" in row:
        return "qa"
    if "completion" in row and "prompt" in row:
        return "conversation"
    return "text"


def _as_conversation(row: dict) -> dict:
    if "messages" in row:
        return row
    if "completion" in row:  # kto rows: only the desirable ones are references
        return {"messages": list(row["prompt"]) + list(row["completion"])}
    return row


# -- the comparison --------------------------------------------------------------------------------------
def compare(model: Any, tokenizer: Any, rows: list[dict], *, model_kind: str = "causal",
            max_rows: int | None = None, max_new_tokens: int | None = None, max_length: int = 1024,
            out_dir: str | Path | None = None, progress: Callable[[int, int, str], None] | None = None,
            stop_event: threading.Event | None = None, general_text: bool = True,
            held_out_rows: int | None = None, dataset: str = "",
            defaults: tuple[int, int] | None = None, reward_model: str | Path | None = None) -> Comparison:
    """Base (adapter off) against tuned (adapter on) on ``rows`` (canonical rows, one kind).

    Args:
        model: a peft model (the adapter is switched off for the base's turn).
        tokenizer: its tokenizer.
        rows: canonical examples (see core.data.formats): conversation, summarization, qa or
            preference rows.
        model_kind: "causal", "seq2seq" or "qa".
        max_rows / max_new_tokens: bounds; None: :func:`default_limits` for the model's device.
        max_length: longest prompt in tokens (cut from the left).
        out_dir: where predictions.jsonl and summary.json go (None: not written).
        progress: called as progress(done, total, message) after each batch.
        stop_event: set it to stop after the current batch (what was done is kept and marked).
        general_text: add the forgetting check (causal models only).
        defaults: (rows, tokens) used for a bound not given (default: :func:`default_limits`).
        reward_model: preference rows only: a reward model (an rlhf run's RUN_DIR/reward_model) that
            scores base and tuned answers to the prompts, generated greedily (``reward`` metric).

    Raises:
        ModelForgeError: the model has no adapter to switch off, or there are no rows.
    """
    if not hasattr(model, "disable_adapter"):
        raise ModelForgeError("this model has no LoRA adapter: there is no base to compare it with",
                              "evaluate a model trained by ModelForge (its folder or record id)")
    if not rows:
        raise DataError("no rows to evaluate", "give --dataset FILE, or train with validation_split > 0")
    device = _device_of(model)
    auto_rows, auto_tokens = defaults or default_limits(device)
    limit_rows = max_rows if max_rows else auto_rows
    limit_tokens = max_new_tokens if max_new_tokens else auto_tokens
    total_rows = len(rows)
    rows = rows[:limit_rows]
    kind = row_kind(rows[0])
    if kind == "conversation" or (kind == "text" and "completion" in rows[0]):
        rows = [_as_conversation(r) for r in rows if r.get("label", True)]
        kind = "conversation"
    limits = (f"{len(rows)} of {total_rows} rows" + (f", answers cut at {limit_tokens} new tokens"
                                                     if kind in ("conversation", "summarization") else ""))
    if max_rows is None or max_new_tokens is None:
        limits += f" (default bound on {'a CPU' if device == 'cpu' else device}; --max-rows to change)"
    started = time.time()
    stop_event = stop_event or threading.Event()
    was_training = model.training
    model.eval()
    try:
        scorer = {"conversation": _conversation, "summarization": _summarization, "qa": _qa,
                  "preference": _preference, "text": _text}[kind]
        per_row, stopped = scorer(model, tokenizer, rows, model_kind=model_kind, max_new_tokens=limit_tokens,
                                  max_length=max_length, progress=progress, stop_event=stop_event)
        if kind == "preference" and reward_model is not None and per_row and not stopped:
            stopped = _reward_scores(model, tokenizer, rows[:len(per_row)], per_row, reward_model,
                                     max_new_tokens=limit_tokens, max_length=max_length, progress=progress,
                                     stop_event=stop_event)
            limits += f", answers for the reward model cut at {limit_tokens} new tokens"
        base, tuned = _aggregate(kind, per_row)
        if general_text and model_kind == "causal" and not stopped and GENERAL_TEXT.is_file():
            for name, value in general_perplexity(model, tokenizer, max_length=min(max_length, 512)).items():
                (base if name == "base" else tuned)["general_perplexity"] = value
    finally:
        model.train(was_training)
    primary = PRIMARY[kind]
    better = worse = same = 0
    for r in per_row:
        b, t = r["base_scores"].get(primary), r["tuned_scores"].get(primary)
        if b is None or t is None or abs(t - b) <= SAME_EPS:
            same += 1
            r["change"] = 0.0
            continue
        change = (b - t) if primary in LOWER_IS_BETTER else (t - b)
        r["change"] = change
        better, worse = (better + 1, worse) if change > 0 else (better, worse + 1)
    result = Comparison(kind=kind, rows=len(per_row), base=base, tuned=tuned, better=better, worse=worse,
                        same=same, primary=primary, limits=limits, seconds=round(time.time() - started, 2),
                        stopped=stopped, dataset=dataset,
                        held_out_rows=total_rows if held_out_rows is None else held_out_rows, per_row=per_row)
    if out_dir is not None:
        write(result, out_dir)
    return result


def write(result: Comparison, out_dir: str | Path) -> Path:
    """predictions.jsonl (one row per line) and summary.json into ``out_dir``; returns the JSONL path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "predictions.jsonl"
    with path.open("w", encoding="utf-8") as fh:
        for r in result.per_row:
            fh.write(json.dumps(r, ensure_ascii=False) + "\n")
    result.predictions = str(path)
    (out / "summary.json").write_text(json.dumps(result.to_dict(), indent=2), encoding="utf-8")
    return path


def read_predictions(path: str | Path) -> list[dict]:
    p = Path(path)
    if not p.is_file():
        return []
    return [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]


def _aggregate(kind: str, per_row: list[dict]) -> tuple[dict, dict]:
    out = []
    for side in ("base", "tuned"):
        scores = [r[f"{side}_scores"] for r in per_row]
        agg: dict[str, float] = {}
        names = sorted({k for s in scores for k in s if not k.startswith("_")})
        for name in names:
            values = [s[name] for s in scores if name in s]
            if name == "perplexity":  # over all reference tokens, not a mean of per-row perplexities
                nll = sum(s["_nll"] for s in scores if "_nll" in s)
                n = sum(s["_tokens"] for s in scores if "_tokens" in s)
                agg[name] = math.exp(min(nll / n, 50.0)) if n else float("nan")
            elif name == "chosen_preferred":
                agg[name] = sum(values) / len(values)
            else:
                agg[name] = sum(values) / len(values) if values else 0.0
        out.append(agg)
    for r in per_row:  # the bookkeeping keys stay out of the JSONL
        for side in ("base", "tuned"):
            r[f"{side}_scores"] = {k: v for k, v in r[f"{side}_scores"].items() if not k.startswith("_")}
    return out[0], out[1]


def _batches(n: int, size: int = BATCH):
    for i in range(0, n, size):
        yield i, min(i + size, n)


def _both(model, fn):
    """(fn() with the adapter off, fn() with it on)."""
    with model.disable_adapter():
        base = fn()
    return base, fn()


def _tick(progress, done, total, what):
    if progress is not None:
        progress(done, total, f"evaluating base and tuned: {done}/{total} {what}")


# -- text generation --------------------------------------------------------------------------------------
def _chat_prompt(tokenizer, messages: list[dict]) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def _generate(model, tokenizer, prompts: list[str], *, max_new_tokens: int, max_length: int,
              seq2seq: bool = False) -> list[str]:
    import torch

    side, trunc = tokenizer.padding_side, tokenizer.truncation_side
    tokenizer.padding_side = "right" if seq2seq else "left"
    tokenizer.truncation_side = "left"
    try:
        enc = tokenizer(prompts, return_tensors="pt", padding=True, truncation=True, max_length=max_length,
                        add_special_tokens=seq2seq)
    finally:
        tokenizer.padding_side, tokenizer.truncation_side = side, trunc
    enc = {k: v.to(model.device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}
    with torch.no_grad():
        ids = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, temperature=None, top_p=None,
                             top_k=None, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    if not seq2seq:
        ids = ids[:, enc["input_ids"].shape[1]:]
    return [t.strip() for t in tokenizer.batch_decode(ids, skip_special_tokens=True)]


def _reference_nll(model, tokenizer, prompt_text: str, full_text: str, max_length: int) -> tuple[float, int]:
    """(summed negative log-likelihood, token count) of the part of ``full_text`` after ``prompt_text``."""
    import torch

    p_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    f_ids = tokenizer(full_text, add_special_tokens=False)["input_ids"]
    start = len(p_ids) if f_ids[: len(p_ids)] == p_ids else _common_prefix(p_ids, f_ids)
    if start >= len(f_ids):
        return 0.0, 0
    cut = max(0, len(f_ids) - max_length)
    ids = torch.tensor([f_ids[cut:]], device=model.device)
    start = max(start - cut, 1)
    with torch.no_grad():
        logits = model(input_ids=ids).logits.float()
    logp = torch.log_softmax(logits[0, :-1], dim=-1)
    target = ids[0, 1:]
    token_lp = logp.gather(1, target[:, None])[:, 0][start - 1:]
    return float(-token_lp.sum()), int(token_lp.numel())


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


_WORDS = re.compile(r"[\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af]|[^\W_]+")


class _Words:
    """ROUGE's tokens in any script: words of letters and digits, and each CJK character on its
    own (rouge-score's default tokenizer keeps only a-z0-9, so Chinese answers would score 0)."""

    def __init__(self):
        from nltk.stem import porter  # what rouge-score stems with (use_stemmer=True)

        self._stem = porter.PorterStemmer().stem

    def tokenize(self, text: str) -> list[str]:
        return [self._stem(w) if len(w) > 3 and w.isascii() else w for w in _WORDS.findall(text.lower())]


def _rouge_row(pred: str, ref: str, kinds=("rougeL",)) -> dict:
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(list(kinds), tokenizer=_Words())
    return {k: v.fmeasure for k, v in scorer.score(ref, pred).items()}


def _conversation(model, tokenizer, rows, *, model_kind, max_new_tokens, max_length, progress, stop_event):
    from core.evaluation import exact_match

    seq2seq = model_kind == "seq2seq"
    out: list[dict] = []
    for i, j in _batches(len(rows)):
        if stop_event.is_set():
            return out, True
        batch = rows[i:j]
        prompts_msgs = [r["messages"][:-1] for r in batch]
        refs = [r["messages"][-1]["content"] for r in batch]
        if seq2seq:
            prompts = ["\n".join(m["content"] for m in msgs if m["role"] != "system") for msgs in prompts_msgs]
        else:
            prompts = [_chat_prompt(tokenizer, msgs) for msgs in prompts_msgs]
        gen = lambda: _generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens,  # noqa: E731
                                max_length=max_length, seq2seq=seq2seq)
        base_ans, tuned_ans = _both(model, gen)
        for k, row in enumerate(batch):
            rec = {"prompt": _last_user(prompts_msgs[k]), "reference": refs[k], "base": base_ans[k],
                   "tuned": tuned_ans[k], "base_scores": {}, "tuned_scores": {}}
            for side, ans in (("base", base_ans[k]), ("tuned", tuned_ans[k])):
                s = rec[f"{side}_scores"]
                s.update(_rouge_row(ans, refs[k]))
                s["exact_match"] = exact_match(ans, refs[k])
            if not seq2seq:
                full = tokenizer.apply_chat_template(row["messages"], tokenize=False)
                nll = lambda: _reference_nll(model, tokenizer, prompts[k], full, max_length)  # noqa: E731
                (bn, bt), (tn, tt) = _both(model, nll)
                if bt:
                    rec["base_scores"].update(perplexity=math.exp(min(bn / bt, 50.0)), _nll=bn, _tokens=bt)
                    rec["tuned_scores"].update(perplexity=math.exp(min(tn / tt, 50.0)), _nll=tn, _tokens=tt)
            out.append(rec)
        _tick(progress, j, len(rows), "rows")
    return out, False


def _last_user(messages: list[dict]) -> str:
    users = [m["content"] for m in messages if m["role"] == "user"]
    return users[-1] if users else (messages[-1]["content"] if messages else "")


def _text(model, tokenizer, rows, *, model_kind, max_new_tokens, max_length, progress, stop_event):
    """Plain text rows: no prompt to answer; the perplexity of each text under base and tuned."""
    out: list[dict] = []
    for n, row in enumerate(rows):
        if stop_event.is_set():
            return out, True
        text = row.get("text", "")
        (bn, bt), (tn, tt) = _both(model, lambda: _reference_nll(model, tokenizer, "", text, max_length))
        rec = {"prompt": "", "reference": text[:500], "base": "", "tuned": "", "base_scores": {}, "tuned_scores": {}}
        if bt:
            rec["base_scores"] = {"perplexity": math.exp(min(bn / bt, 50.0)), "_nll": bn, "_tokens": bt}
            rec["tuned_scores"] = {"perplexity": math.exp(min(tn / tt, 50.0)), "_nll": tn, "_tokens": tt}
        out.append(rec)
        _tick(progress, n + 1, len(rows), "texts")
    return out, False


# -- summarization ------------------------------------------------------------------------------------
def _summarization(model, tokenizer, rows, *, model_kind, max_new_tokens, max_length, progress, stop_event):
    from core.tasks.summarization import generate_summaries

    seq2seq = model_kind == "seq2seq"
    out: list[dict] = []
    for i, j in _batches(len(rows)):
        if stop_event.is_set():
            return out, True
        batch = rows[i:j]
        docs = [r["document"] for r in batch]
        gen = lambda: generate_summaries(model, tokenizer, docs, seq2seq=seq2seq,  # noqa: E731
                                         max_length=max_length, max_new_tokens=max_new_tokens)
        base_ans, tuned_ans = _both(model, gen)
        for k, row in enumerate(batch):
            kinds = ("rouge1", "rouge2", "rougeL")
            out.append({"prompt": row["document"][:2000], "reference": row["summary"], "base": base_ans[k],
                        "tuned": tuned_ans[k], "base_scores": _rouge_row(base_ans[k], row["summary"], kinds),
                        "tuned_scores": _rouge_row(tuned_ans[k], row["summary"], kinds)})
        _tick(progress, j, len(rows), "documents")
    return out, False


# -- extractive QA ------------------------------------------------------------------------------------
def _qa(model, tokenizer, rows, *, model_kind, max_new_tokens, max_length, progress, stop_event):
    import torch

    from core.evaluation import exact_match, f1, normalize_answer
    from core.tasks.qa import best_span, encode

    limit = getattr(model.config, "max_position_embeddings", 384) or 384
    out: list[dict] = []
    for n, row in enumerate(rows):
        if stop_event.is_set():
            return out, True
        inputs, windows = encode([row], tokenizer, min(384, max_length, limit), labels=False)
        batch = tokenizer.pad(inputs, return_tensors="pt")
        batch = {k: v.to(model.device) for k, v in batch.items()}

        def ask():
            with torch.no_grad():
                o = model(**batch)
            return best_span(row["context"], windows, o.start_logits.float().cpu().numpy(),
                             o.end_logits.float().cpu().numpy())["answer"]

        base_ans, tuned_ans = _both(model, ask)
        golds = [g for g in row["answers"]["text"] if normalize_answer(g)] or [""]
        rec = {"prompt": row["question"], "context": row["context"][:2000], "reference": golds[0],
               "base": base_ans, "tuned": tuned_ans, "base_scores": {}, "tuned_scores": {}}
        for side, ans in (("base", base_ans), ("tuned", tuned_ans)):
            rec[f"{side}_scores"] = {"exact_match": max(exact_match(ans, g) for g in golds),
                                     "f1": max(f1(ans, g) for g in golds)}
        out.append(rec)
        _tick(progress, n + 1, len(rows), "questions")
    return out, False


# -- preference ---------------------------------------------------------------------------------------
def _preference(model, tokenizer, rows, *, model_kind, max_new_tokens, max_length, progress, stop_event):
    out: list[dict] = []
    for n, row in enumerate(rows):
        if stop_event.is_set():
            return out, True
        prompt = _chat_prompt(tokenizer, row["prompt"])
        chosen = tokenizer.apply_chat_template(list(row["prompt"]) + list(row["chosen"]), tokenize=False)
        rejected = tokenizer.apply_chat_template(list(row["prompt"]) + list(row["rejected"]), tokenize=False)

        def margins():
            c, _ = _reference_nll(model, tokenizer, prompt, chosen, max_length)
            r, _ = _reference_nll(model, tokenizer, prompt, rejected, max_length)
            return r - c  # log p(chosen) - log p(rejected)

        base_m, tuned_m = _both(model, margins)
        rec = {"prompt": _last_user(row["prompt"]), "reference": row["chosen"][-1]["content"],
               "rejected": row["rejected"][-1]["content"],
               "base": "chosen" if base_m > 0 else "rejected", "tuned": "chosen" if tuned_m > 0 else "rejected",
               "base_scores": {"margin": base_m, "chosen_preferred": float(base_m > 0)},
               "tuned_scores": {"margin": tuned_m, "chosen_preferred": float(tuned_m > 0)}}
        out.append(rec)
        _tick(progress, n + 1, len(rows), "pairs")
    return out, False


def reward_model_of(config: Any, run_dir: str | Path) -> Path | None:
    """The reward model of an rlhf run (its ``reward_model`` setting, else RUN_DIR/reward_model);
    None for other strategies or when it is gone."""
    from core.errors import ConfigError
    from core.strategies.rlhf import reward_dir

    if getattr(config, "strategy", "") != "rlhf":
        return None
    for where in ([config.reward_model] if config.reward_model else []) + [run_dir]:
        try:
            return reward_dir(where)
        except ConfigError:
            continue
    return None


def _reward_scores(model, tokenizer, rows, per_row, reward_path, *, max_new_tokens, max_length, progress,
                   stop_event) -> bool:
    """Base and tuned answer each preference prompt (greedy); the reward model scores both answers
    (``reward`` in each side's scores; the answers as ``base_answer``/``tuned_answer``). Returns
    whether it was stopped."""
    import torch

    from core.strategies.rlhf import load_reward_model

    reward, reward_tok = load_reward_model(reward_path)
    reward.to(model.device)
    prompts = [_chat_prompt(tokenizer, r["prompt"]) for r in rows]

    def score(prompt: list[dict], answers: list[str]) -> list[float]:
        texts = []
        for a in answers:  # rendered as the reward model saw its training pairs: through its chat template
            messages = list(prompt) + [{"role": "assistant", "content": a}]
            texts.append(reward_tok.apply_chat_template(messages, tokenize=False) if reward_tok.chat_template
                         else "\n".join(m["content"] for m in messages))
        enc = reward_tok(texts, return_tensors="pt", padding=True, truncation=True, max_length=max_length)
        with torch.no_grad():
            logits = reward(**{k: v.to(reward.device) for k, v in enc.items()
                               if k in ("input_ids", "attention_mask")}).logits
        return [float(x) for x in logits[:, 0]]

    for i, j in _batches(len(rows)):
        if stop_event.is_set():
            return True
        base, tuned = _both(model, lambda: _generate(model, tokenizer, prompts[i:j], max_new_tokens=max_new_tokens,
                                                     max_length=max_length))
        for k, (b, t) in enumerate(zip(base, tuned)):
            rec = per_row[i + k]
            rec["base_answer"], rec["tuned_answer"] = b, t
            rec["base_scores"]["reward"], rec["tuned_scores"]["reward"] = score(rows[i + k]["prompt"], [b, t])
        _tick(progress, j, len(rows), "answers scored by the reward model")
    return False


# -- forgetting ----------------------------------------------------------------------------------------
def general_paragraphs(path: str | Path | None = None) -> list[str]:
    text = Path(path or GENERAL_TEXT).read_text(encoding="utf-8")
    return [p.strip() for p in text.split("\n\n") if p.strip() and not p.lstrip().startswith("#")]


def general_perplexity(model, tokenizer, *, path: str | Path | None = None, max_length: int = 512) -> dict:
    """{"base": ppl, "tuned": ppl} of the general-text sample: did the fine-tune forget language?"""
    paragraphs = general_paragraphs(path)

    def ppl():
        nll = n = 0
        for p in paragraphs:
            a, b = _reference_nll(model, tokenizer, "", p, max_length)
            nll, n = nll + a, n + b
        return math.exp(min(nll / n, 50.0)) if n else float("nan")

    base, tuned = _both(model, ppl)
    return {"base": base, "tuned": tuned}


# -- from a model folder: the CLI, the Models tab --------------------------------------------------------
def held_out_rows(config: Any, tokenizer: Any) -> list[dict]:
    """The run's validation rows again: the same data, shuffle seed and split as in training."""
    from core.checks import validate_data
    from core.data import split_train_eval

    report = validate_data(config, tokenizer)
    if not report.ok:
        raise DataError(f"{config.dataset} cannot be read for evaluation", "give --dataset FILE",
                        problems=report.errors or report.problems)
    examples = report.examples[: config.max_samples] if config.max_samples else report.examples
    return split_train_eval(examples, config.validation_split, config.seed)[1][:MAX_EVAL_ROWS]


def file_rows(config: Any, path: str, tokenizer: Any) -> list[dict]:
    """Every row of ``path``, read as the run's task and strategy read their data."""
    from core.checks import validate_data

    cfg = config.replace(dataset=str(path), dataset_format="auto", column_map={}, max_samples=0)
    report = validate_data(cfg, tokenizer)
    if not report.ok:
        raise DataError(f"{path} cannot be used to evaluate this model",
                        "give a file in the format the model was trained on",
                        problems=report.errors or report.problems)
    return report.examples


def evaluate_model(model_dir: str | Path, *, dataset: str | None = None, max_rows: int | None = None,
                   max_new_tokens: int | None = None, store: Any = None, model_id: str | None = None,
                   progress: Callable[[int, int, str], None] | None = None,
                   stop_event: threading.Event | None = None) -> Comparison:
    """Load a ModelForge model folder and compare it with its base on the run's held-out rows (or
    on ``dataset``); write the predictions into RUN_DIR/evaluations/<id>/ and record the result.

    Raises:
        ModelForgeError: no model card, no held-out rows and no dataset, unreadable data.
    """
    from core.config import RunConfig
    from core.inference import load_model, read_card
    from core.limits import int_in_range

    # Bounds come from the CLI, the Models tab and scripts: refuse nonsense before loading anything
    # (0 or -1 rows used to mean "the default", and -5 tokens failed inside generate()).
    if max_rows is not None:
        max_rows = int_in_range(max_rows, "max_rows", 1, 100_000)
    if max_new_tokens is not None:
        max_new_tokens = int_in_range(max_new_tokens, "max_new_tokens", 1, 2048)
    model_dir = Path(model_dir)
    card = read_card(model_dir)
    if not card.get("config"):
        raise ModelForgeError(f"{model_dir} is not a ModelForge model folder (no modelforge.json)",
                              "give a model record id or name from `modelforge models`, or its folder")
    config = RunConfig.from_dict(card["config"], source=str(model_dir / "modelforge.json"))
    lm = load_model(str(model_dir))
    if dataset:
        rows = file_rows(config, dataset, lm.tokenizer)
    else:
        rows = held_out_rows(config, lm.tokenizer) if config.validation_split != 0 else []
        if not rows:
            raise DataError("this run held out no validation rows",
                            "give --dataset FILE with rows like the training data")
    from core.records import new_id

    eval_id = new_id("eval")
    out_dir = model_dir.parent / "evaluations" / eval_id
    result = compare(lm.model, lm.tokenizer, rows, model_kind=lm.kind, max_rows=max_rows,
                     max_new_tokens=max_new_tokens, max_length=config.max_length, out_dir=out_dir,
                     progress=progress, stop_event=stop_event, dataset=dataset or "held-out rows",
                     reward_model=reward_model_of(config, model_dir.parent))
    if store is not None:
        record(store, result, eval_id=eval_id, model_id=model_id or card.get("model_id"), run_id=card.get("run_id"))
    return result


def record(store: Any, result: Comparison, *, eval_id: str | None = None, model_id: str | None = None,
           run_id: str | None = None) -> str:
    """Store ``result`` as an Evaluation record; returns its id."""
    from core.records import Evaluation, new_id

    rec = Evaluation(id=eval_id or new_id("eval"), model_id=model_id or "", run_id=run_id or "",
                     dataset=result.dataset, kind=result.kind, rows=result.rows, better=result.better,
                     worse=result.worse, same=result.same, base=result.base, tuned=result.tuned,
                     primary=result.primary, predictions=result.predictions, summary=result.summary(),
                     details=result.to_dict())
    store.add_evaluation(rec)
    return rec.id


def after_run(ctx: Any, store: Any, events: Any, model_id: str) -> dict | None:
    """The automatic comparison at the end of a completed run with validation rows (the engine
    calls it). Uses the trained model still in memory; a failure or a Stop only skips it (the run
    and its model are recorded already). Returns the summary dict, or None when skipped."""
    import logging

    config = ctx.config
    trainer_model = getattr(ctx.trainer, "model", None)
    if not ctx.eval_rows or not getattr(config, "compare_after_training", True):
        return None
    if trainer_model is None or not hasattr(trainer_model, "disable_adapter") or ctx.stopped():
        return None
    from core.records import new_id

    eval_id = new_id("eval")

    def progress(done: int, total: int, message: str) -> None:
        events.emit("log", message=message)

    events.emit("log", message="comparing the base and the tuned model on the held-out rows "
                               f"({len(ctx.eval_rows)} rows; bounded: see compare_max_rows)")
    try:
        kind = "seq2seq" if getattr(trainer_model.config, "is_encoder_decoder", False) else (
            "qa" if config.task == "extractive-qa" else "causal")
        result = compare(trainer_model, ctx.tokenizer, list(ctx.eval_rows), model_kind=kind,
                         max_rows=config.compare_max_rows or None,
                         max_new_tokens=config.compare_max_new_tokens or None, max_length=config.max_length,
                         out_dir=ctx.run_dir / "evaluations" / eval_id, progress=progress,
                         stop_event=ctx.stop_event, dataset="held-out rows",
                         defaults=(AFTER_RUN_CPU_ROWS, AFTER_RUN_CPU_TOKENS) if ctx.device == "cpu" else None,
                         reward_model=reward_model_of(config, ctx.run_dir))
        record(store, result, eval_id=eval_id, model_id=model_id, run_id=ctx.run_id)
    except Exception as exc:  # noqa: BLE001 - the run is done; its evaluation is extra
        logging.getLogger("modelforge.compare").warning("comparison after run %s failed", ctx.run_id, exc_info=True)
        events.emit("log", message=f"the base-vs-tuned comparison failed: {type(exc).__name__}: {exc}"[:300])
        return None
    events.emit("log", message=f"evaluation: {result.summary()} [{result.limits}]")
    return result.to_dict()
