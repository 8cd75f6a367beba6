"""Runs side by side: several runs' loss and eval curves on one set of axes, the config fields in
which they differ, and their final and base-vs-tuned evaluation metrics (issue 16).

Pure functions of the record store; the Models tab draws what they return.
"""

from __future__ import annotations

from typing import Any

CURVES = ("loss", "eval_loss")
# Fields that differ between any two runs without saying anything about the training.
IGNORED = ("name", "output_dir")


def curves(store: Any, run_ids: list[str], names: tuple[str, ...] = CURVES) -> list[dict]:
    """One point per (run, metric, step): {"run", "metric", "step", "value"} (the LinePlot's rows)."""
    out = []
    for rid in run_ids:
        label = _label(store, rid)
        for p in store.metrics(rid):
            if p.name in names:
                out.append({"run": label, "metric": p.name, "step": p.step, "value": p.value,
                            "series": f"{label} · {p.name}"})
    return out


def config_diff(store: Any, run_ids: list[str]) -> tuple[list[str], list[list[Any]]]:
    """(headers, rows): one row per config field whose value differs between the runs."""
    configs = [store.get_run(rid).config for rid in run_ids]
    keys = sorted({k for c in configs for k in c} - set(IGNORED))
    rows = [[k, *[_text(c.get(k)) for c in configs]] for k in keys
            if len({_text(c.get(k)) for c in configs}) > 1]
    return ["field", *[_label(store, rid) for rid in run_ids]], rows


def metrics_table(store: Any, run_ids: list[str]) -> tuple[list[str], list[list[Any]]]:
    """(headers, rows): final metrics of each run's model and its latest base-vs-tuned evaluation."""
    per_run: list[dict] = []
    for rid in run_ids:
        run = store.get_run(rid)
        found: dict[str, Any] = {"status": run.status, "steps": run.last_step}
        final = {}
        for p in store.metrics(rid):
            if p.name.startswith("final_"):
                final[p.name.removeprefix("final_")] = round(p.value, 4)
        found.update(final)
        evals = store.evaluations(run_id=rid)
        if evals:
            ev = evals[0]
            found["evaluation"] = ev.summary
            for k in sorted(set(ev.base) & set(ev.tuned)):
                found[f"{k} (base -> tuned)"] = f"{ev.base[k]:.3g} -> {ev.tuned[k]:.3g}"
        per_run.append(found)
    keys: list[str] = []
    for d in per_run:
        keys += [k for k in d if k not in keys]
    return ["metric", *[_label(store, rid) for rid in run_ids]], [[k, *[d.get(k, "") for d in per_run]] for k in keys]


def compare_runs(store: Any, run_ids: list[str]) -> dict:
    """Everything the side-by-side view shows, as plain data (also the API's answer)."""
    ids = [r for r in dict.fromkeys(run_ids) if r]
    headers, diff = config_diff(store, ids)
    m_headers, metrics = metrics_table(store, ids)
    return {"runs": ids, "curves": curves(store, ids), "config_headers": headers, "config_diff": diff,
            "metrics_headers": m_headers, "metrics": metrics}


def _label(store: Any, run_id: str) -> str:
    run = store.get_run(run_id)
    return f"{run.name} ({run_id[-6:]})"


def _text(value: Any) -> str:
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items())
    return "" if value is None else str(value)
