"""The Models tab's "Did the fine-tune help?" panel (issue 16): the latest base-vs-tuned evaluation
of the chosen model (summary line, metrics side by side, the rows sortable by change, the
predictions as a download), and a button to evaluate again, on the held-out rows or on an
uploaded file (batch predictions), with progress and Stop (the evaluation this page started, not
another page's: the task id is per browser session). The evaluation is a task of the job
manager (core.service.evaluate): it waits while a run trains, one thing on the device at a time.

Handlers are plain functions of (ctx, ...) so tests call them without a browser; the evaluation
itself is core.compare_eval's.
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from components.common import AppContext, guard, icon, info
from core.errors import ModelForgeError

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


def evaluate(ctx: AppContext, model_id: str, dataset: str | None = None, max_rows: int | None = None) -> str:
    """Queue an evaluation of the model (held-out rows, or ``dataset``) on the job manager, so it
    never runs beside a training run on the device; returns the task id to follow."""
    from core.errors import NotFoundError
    from core.service import evaluate as queue_evaluation

    if not model_id:
        raise NotFoundError("no model chosen", "pick one in the list")
    return queue_evaluation(ctx.jobs, model_id, dataset=dataset or None, max_rows=max_rows or None)


def stop_evaluation(ctx: AppContext, task_id: str | None) -> str:
    """Stop the evaluation ``task_id`` (the one this page started; None: none) after its current
    batch; what was done is kept. Returns what happened, in a sentence for the page.

    Another page's evaluation is never reached: each browser session keeps its own task id.
    """
    if task_id and ctx.jobs.stop(task_id):
        return "Stopping the evaluation after the current batch (what was done is kept)."
    if task_id:
        return "The evaluation this page started has already ended: nothing to stop."
    return "No evaluation was started from this page: nothing to stop."


def follow(ctx: AppContext, task_id: str, poll_s: float = 0.5):
    """Yield a status line for each change of the task, until it ends; the last item is
    ("finished" | "cancelled" | "failed", its event data)."""
    from core.events import TERMINAL

    seen = 0
    while True:
        events = ctx.jobs.events(task_id, seen)
        seen += len(events)
        for ev in events:
            if ev.type in TERMINAL:
                yield ev.type, ev.data
                return
            if ev.type == "queued" and ev.data.get("message", "").startswith("waiting"):
                yield "status", f"{icon('wait')} {ev.data['message']} (an evaluation waits for the run training)"
            elif ev.type == "progress":
                yield "status", f"{icon('wait')} {ev.data.get('message', '')}"
        if not events:
            import time

            time.sleep(poll_s)


def build(ctx: AppContext, choice: gr.Dropdown) -> None:
    """The panel, below the model's details; follows the model dropdown ``choice``."""
    with gr.Accordion("Did the fine-tune help? Base vs tuned", open=True, elem_id="eval-panel"):
        summary = gr.Markdown(NONE_TEXT, elem_id="eval-summary")
        with gr.Row():
            upload = gr.File(label="Evaluate on a file (optional: else the held-out rows)", file_count="single",
                             type="filepath", elem_id="eval-file", scale=2)
            # No Gradio minimum: its bound check prints a traceback; core.compare_eval refuses a
            # negative count by name.
            max_rows = gr.Number(value=0, precision=0, label="Rows (0: default bound)",
                                 elem_id="eval-max-rows", scale=1)
            with gr.Column(scale=1):
                run = gr.Button("Evaluate", elem_id="btn-evaluate")
                stop = gr.Button("Stop", elem_id="btn-evaluate-stop", variant="stop")
        status = gr.Markdown("", elem_id="eval-status")
        sort = gr.Radio(list(SORTS), value=SORTS[0], label="Rows sorted by the change of the score",
                        elem_id="eval-sort")
        # Pixel widths: on a phone the table scrolls sideways instead of squeezing words to letters.
        # The table and the download appear once there is an evaluation (no empty boxes before).
        rows = gr.Dataframe(headers=ROW_HEADERS, value=None, interactive=False, wrap=True, elem_id="eval-rows",
                            label="Rows: prompt, reference, base and tuned answers, scores", visible=False,
                            column_widths=["80px", "220px", "200px", "200px", "200px", "90px", "90px"])
        download = gr.File(label="Predictions (JSONL)", interactive=False, elem_id="eval-download", visible=False)
    # The evaluation this page started (per browser session: Stop on one page must not reach an
    # evaluation another page started). It is a job of the manager: it outlives a closed page.
    started = gr.State(None)

    def _shown(text, table, file):
        return text, gr.Dataframe(value=table or None, visible=bool(table)), gr.File(value=file, visible=bool(file))

    def _show(model_id, how):
        return _shown(*show(ctx, model_id, how))

    def _evaluate(model_id, path, n):
        task_id = evaluate(ctx, model_id, path, int(n or 0) or None)
        # The first update stores the task id in this session's state, so Stop can reach it now.
        yield f"{icon('wait')} queued", gr.skip(), gr.skip(), gr.skip(), task_id
        for kind, data in follow(ctx, task_id):
            if kind == "status":
                yield data, gr.skip(), gr.skip(), gr.skip(), gr.skip()
            elif kind == "failed":
                raise ModelForgeError(data.get("message", "the evaluation failed"), data.get("hint", ""))
            else:
                text, table, file = _shown(*show(ctx, model_id))
                mark = f"{icon('pause')} stopped: " if kind == "cancelled" else f"{icon('ok')} "
                if "summary" not in data:
                    yield f"{icon('pause')} stopped before it started", gr.skip(), gr.skip(), gr.skip(), gr.skip()
                else:
                    yield (f"{mark}{data['summary']} ({data.get('limits', '')}; {data.get('seconds', 0):.0f} s)",
                           text, table, file, gr.skip())

    def _stop(task_id):
        info(stop_evaluation(ctx, task_id))

    choice.change(guard(_show), [choice, sort], [summary, rows, download], api_visibility="private")
    sort.change(guard(_show), [choice, sort], [summary, rows, download], api_visibility="private")
    run.click(guard(_evaluate), [choice, upload, max_rows], [status, summary, rows, download, started],
              api_visibility="private")
    stop.click(guard(_stop), started, None, api_visibility="private", concurrency_limit=None)
