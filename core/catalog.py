"""What this installation offers: providers, strategies and tasks, each with whether it works here.

A task is available when at least one available strategy trains it; the entry lists those
strategies, and the demo model that ``--model demo`` means for it.
"""

from __future__ import annotations

from core.config import TASKS

TASK_DESCRIPTIONS = {
    "text-generation": "chat / instruction following with a causal LM; metrics: eval loss, perplexity "
                       "(sft, qlora), reward accuracy and margins (dpo, orpo, kto), reward and KL (rlhf)",
    "summarization": "document -> summary with a seq2seq model (T5, BART) or a causal LM with a summarization "
                     "prompt; metrics: ROUGE-1/2/L on generated summaries, eval loss, perplexity",
    "extractive-qa": "answer spans from a context with an encoder and a span head (SQuAD v2 style, "
                     "unanswerable questions included); metrics: exact match, F1",
}
DEMO_MODELS = {
    "text-generation": "a 2-layer Llama (demo-causal)",
    "summarization": "a 2-layer T5 (demo-seq2seq); demo-causal for a causal LM with a prompt",
    "extractive-qa": "a 2-layer BERT with a span head (demo-qa)",
}


def describe() -> dict:
    from core.registry import PROVIDERS, STRATEGIES

    out: dict = {"providers": [], "strategies": [], "tasks": []}
    for name in PROVIDERS.names():
        p = PROVIDERS.get(name)
        ok, why = p.available()
        out["providers"].append({"name": name, "description": p.description, "available": ok, "reason": why})
    trains: dict[str, list[str]] = {task: [] for task in TASKS}
    for name in STRATEGIES.names():
        s = STRATEGIES.get(name)
        ok, why = s.available()
        if ok:
            for task in s.tasks:
                trains.setdefault(task, []).append(name)
        out["strategies"].append({"name": name, "description": s.description, "available": ok, "reason": why,
                                  "tasks": list(s.tasks), "data": list(s.data_kinds)})
    for task in TASKS:
        ok = bool(trains.get(task))
        out["tasks"].append({"name": task, "description": TASK_DESCRIPTIONS.get(task, ""), "available": ok,
                             "reason": "" if ok else "no strategy that trains it is available here",
                             "strategies": trains.get(task, []), "demo_model": DEMO_MODELS.get(task, "")})
    return out
