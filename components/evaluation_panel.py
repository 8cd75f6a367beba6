"""The Models tab's "Did the fine-tune help?" panel (issue 16): the latest base-vs-tuned evaluation
of the chosen model (summary line, metrics side by side, the rows sortable by change, the
predictions as a download), and a button to evaluate again, on the held-out rows or on an
uploaded file (batch predictions), with progress and Stop.

Handlers are plain functions of (ctx, ...) so tests call them without a browser; the evaluation
itself is core.compare_eval's.
"""

from __future__ import annotations

import threading
from typing import Any

import gradio as gr

from components.common import AppContext, guard

ROW_HEADERS = ["change", "prompt", "reference", "base answer", "tuned answer", "base score", "tuned score"]
SORTS = ("most improved first", "most worsened first", "as evaluated")
NONE_TEXT = ("No evaluation yet. One runs automatically after a run with validation rows; or press "
             "**Evaluate** (held-out rows, or a file you upload).")


def latest(ctx: AppContext, model_id: str):
    """The newest Evaluation record of a model, or None."""
    found = ctx.store.evaluations(model_id=model_id) if model_id else []
    return found[0] if found else None


def summary_markdown(rec) -> str:
    if rec is None:
        return NONE_TEXT
    d = rec.details or {}
    names = sorted(set(rec.base) | set(rec.tuned))
    lines = [f"### Did the fine-tune help?\n**{rec.summary}**",
             f"Data: {rec.dataset or 'held-out rows'} · {d.get('limits', '')} · {rec.created_at:%Y-%m-%d %H:%M}",
             "| metric | base | tuned |\n|---|---|---|"]
    lines[-1] += "".join(f"\n| {n} | {rec.base.get(n, float('nan')):.4g} | {rec.tuned.get(n, float('nan')):.4g} |"
                         for n in names)
    return "\n\n".join(lines)


def row_table(rec, sort: str = SORTS[0]) -> list[list[Any]]:
    """The evaluated rows as table rows (change first), sorted by the change of the primary score."""
    from core.compare_eval import read_predictions

    if rec is None:
        return []
    rows = read_predictions(rec.predictions)
    if sort == SORTS[0]:
        rows = sorted(rows, key=lambda r: -r.get("change", 0.0))
    elif sort == SORTS[1]:
        rows = sorted(rows, key=lambda r: r.get("change", 0.0))
    p = rec.primary
    return [[round(r.get("change", 0.0), 4), r["prompt"][:300], r["reference"][:300], r["base"][:300],
             r["tuned"][:300], round(r["base_scores"].get(p, float("nan")), 4),
             round(r["tuned_scores"].get(p, float("nan")), 4)] for r in rows]


def download_path(rec) -> str | None:
    """The predictions JSONL, copied under MODELFORGE_HOME/exports (the one folder the app serves
    files from) as <model>-<evaluation id>.jsonl."""
    import shutil
    from pathlib import Path

    from core.paths import home

    if rec is None or not rec.predictions or not Path(rec.predictions).is_file():
        return None
    out = home() / "exports" / "evaluations"
    out.mkdir(parents=True, exist_ok=True)
    target = out / f"{rec.model_id or 'model'}-{rec.id}.jsonl"
    if not target.exists():
        shutil.copyfile(rec.predictions, target)
    return str(target)


def show(ctx: AppContext, model_id: str, sort: str = SORTS[0]) -> tuple[str, list, str | None]:
    """(summary markdown, row table, path of the predictions to download) of the model's latest evaluation."""
    rec = latest(ctx, model_id)
    return summary_markdown(rec), row_table(rec, sort), download_path(rec)


def evaluate(ctx: AppContext, model_id: str, dataset: str | None = None, max_rows: int | None = None,
             stop_event: threading.Event | None = None, progress=None):
    """Evaluate the model again (held-out rows, or ``dataset``); returns the Comparison."""
    from core.compare_eval import evaluate_model
    from core.errors import NotFoundError

    if not model_id:
        raise NotFoundError("no model chosen", "pick one in the list")
    rec = ctx.store.get_model(model_id)
    return evaluate_model(rec.path, dataset=dataset or None, max_rows=max_rows or None, store=ctx.store,
                          model_id=rec.id, progress=progress, stop_event=stop_event)


def build(ctx: AppContext, choice: gr.Dropdown) -> None:
    """The panel, below the model's details; follows the model dropdown ``choice``."""
    with gr.Accordion("Did the fine-tune help? Base vs tuned", open=True, elem_id="eval-panel"):
        summary = gr.Markdown(NONE_TEXT, elem_id="eval-summary")
        with gr.Row():
            upload = gr.File(label="Evaluate on a file (optional: else the held-out rows)", file_count="single",
                             type="filepath", elem_id="eval-file", scale=2)
            max_rows = gr.Number(value=0, precision=0, minimum=0, label="Rows (0: default bound)",
                                 elem_id="eval-max-rows", scale=1)
            with gr.Column(scale=1):
                run = gr.Button("Evaluate", elem_id="btn-evaluate")
                stop = gr.Button("Stop", elem_id="btn-evaluate-stop", variant="stop")
        status = gr.Markdown("", elem_id="eval-status")
        sort = gr.Radio(list(SORTS), value=SORTS[0], label="Rows sorted by the change of the score",
                        elem_id="eval-sort")
        rows = gr.Dataframe(headers=ROW_HEADERS, value=None, interactive=False, wrap=True, elem_id="eval-rows",
                            label="Rows: prompt, reference, base and tuned answers, scores")
        download = gr.File(label="Predictions (JSONL)", interactive=False, elem_id="eval-download")
    stop_flag = {"event": threading.Event()}

    def _show(model_id, how):
        return show(ctx, model_id, how)

    def _evaluate(model_id, path, n):
        stop_flag["event"] = event = threading.Event()
        box: dict = {}
        said = {"text": "starting: loading the model"}

        def work():
            try:
                box["result"] = evaluate(ctx, model_id, path, int(n or 0) or None, event,
                                         lambda done, total, msg: said.update(text=msg))
            except BaseException as exc:  # noqa: BLE001 - shown below
                box["error"] = exc

        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        try:
            while thread.is_alive():
                yield f"⏳ {said['text']}", gr.skip(), gr.skip(), gr.skip()
                thread.join(0.5)
        finally:  # the page went away (or the event was cancelled): stop after the current batch
            if thread.is_alive():
                event.set()
        if "error" in box:
            raise box["error"]
        result = box["result"]
        text, table, file = show(ctx, model_id)
        yield f"✅ {result.summary()} ({result.limits}; {result.seconds:.0f} s)", text, table, file

    choice.change(guard(_show), [choice, sort], [summary, rows, download], api_visibility="private")
    sort.change(guard(_show), [choice, sort], [summary, rows, download], api_visibility="private")
    run.click(guard(_evaluate), [choice, upload, max_rows], [status, summary, rows, download],
              api_visibility="private")
    stop.click(lambda: stop_flag["event"].set(), None, None, api_visibility="private")
