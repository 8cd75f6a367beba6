"""What this installation offers: providers, strategies and tasks, each with whether it works here."""

from __future__ import annotations

from core.config import TASKS

TASK_DESCRIPTIONS = {
    "text-generation": "chat / instruction following with a causal LM; metrics: eval loss, perplexity",
    "summarization": "document -> summary with a seq2seq model; metrics: ROUGE-1/2/L",
    "extractive-qa": "answer spans from a context with an encoder; metrics: exact match, F1",
}


def describe() -> dict:
    from core.providers import registry as providers
    from core.strategies import registry as strategies

    out: dict = {"providers": [], "strategies": [], "tasks": []}
    for name in providers.names():
        p = providers._REGISTRY[name]()
        ok, why = p.available()
        out["providers"].append({"name": name, "description": p.description, "available": ok, "reason": why})
    available_tasks: set[str] = set()
    for name in strategies.names():
        s = strategies.get(name)
        ok, why = s.available()
        if ok:
            available_tasks.update(s.tasks)
        out["strategies"].append({"name": name, "description": s.description, "available": ok, "reason": why,
                                  "tasks": list(s.tasks), "data": list(s.data_kinds)})
    for task in TASKS:
        ok = task in available_tasks
        out["tasks"].append({"name": task, "description": TASK_DESCRIPTIONS[task], "available": ok,
                             "reason": "" if ok else "not built yet in this version of ModelForge"})
    return out
