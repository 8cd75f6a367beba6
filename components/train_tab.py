"""Train tab: start, stop and resume runs, and watch them live.

The page holds no training state: a small ``gr.State`` remembers which run it shows and how
many of its events it has drawn. A ``gr.Timer`` asks the job manager for the run's events about
once a second and rebuilds the plots (loss, eval loss, learning rate, tokens/s), the progress
line and the log tail from them. Because the events live in the job manager (and in the run's
``events.jsonl``), a reloaded page or a second browser shows the same run.

One run trains at a time per device (the job manager's rule): a second Start is queued behind
it with a clear message, or refused when the queue is full.
"""

from __future__ import annotations

import html
import time
from dataclasses import dataclass, field
from typing import Any

import gradio as gr

from components.common import (AppContext, check_public, endpoint, fmt_bytes, fmt_duration, guard, icon, info,
                               problems_markdown, resolve_dataset, warn)
from core.config import RunConfig
from core.errors import BusyError, ModelForgeError, NotFoundError
from core.limits import clip

TERMINAL = ("completed", "failed", "cancelled", "interrupted")
RESUMABLE = ("cancelled", "interrupted", "failed")
LOG_LINES = 14
# What view_outputs() returns, in order (TrainTab.outputs holds the widgets).
OUTPUT_NAMES = ("state", "status", "done", "open_playground", "open_models", "loss", "eval_loss", "eval_note",
                "learning_rate", "tokens_per_second", "log", "runs", "stop", "resume")
# What a status is called on the page: a run the user stopped is "stopped" in the badge and the text.
STATUS_WORDS = {"cancelled": "stopped"}


# -- the view of one run -----------------------------------------------------------------------------
@dataclass
class RunView:
    run_id: str | None = None
    name: str = ""
    status: str = "none"
    step: int = 0
    total: int = 0
    loss: float | None = None
    learning_rate: float | None = None
    tokens_per_second: float | None = None
    memory_mb: float | None = None
    eta_s: float | None = None
    elapsed_s: float | None = None
    eval_loss: float | None = None
    perplexity: float | None = None
    model_id: str | None = None
    metrics: dict = field(default_factory=dict)
    error: str | None = None
    hint: str | None = None
    problems: list = field(default_factory=list)
    queue_position: int | None = None
    message: str = ""
    validation_split: float = 0.0
    resumable: bool = False   # stopped/interrupted/failed with a checkpoint: Resume applies
    validation: str = ""  # the held-out choice in words ("validation: none (auto: 91 rows is too few...)")
    compiling: str = ""  # "compiling, ~N s ..." until the first step: a minute without a step is no hang
    n_events: int = 0
    series: dict = field(default_factory=lambda: {"loss": [], "eval_loss": [], "learning_rate": [],
                                                  "tokens_per_second": []})
    log: list[str] = field(default_factory=list)

    # -- rendering ------------------------------------------------------------------------------
    def frame(self, metric: str):
        import pandas as pd

        points = self.series[metric]
        # Explicit dtypes: an empty frame would be "object", which the plot draws as categories.
        return pd.DataFrame({"step": pd.Series([p[0] for p in points], dtype="int64"),
                             metric: pd.Series([p[1] for p in points], dtype="float64")})

    def status_html(self) -> str:
        if not self.run_id:
            return ("<div class='mf-status mf-status-none'><b>No run yet.</b> The identity demo is set up: "
                    "press <b>Start training</b>.</div>")
        e = html.escape
        pct = int(100 * self.step / self.total) if self.total else 0
        bits = [f"step <b>{self.step}</b>/{self.total or '?'}"]
        if self.loss is not None:
            bits.append(f"loss <b>{self.loss:.4f}</b>")
        if self.eval_loss is not None:
            bits.append(f"eval loss {self.eval_loss:.4f}")
        if self.status == "running" and self.eta_s is not None:
            bits.append(f"ETA {fmt_duration(self.eta_s)}")
        if self.elapsed_s is not None:
            bits.append(f"elapsed {fmt_duration(self.elapsed_s)}")
        if self.tokens_per_second:
            bits.append(f"{self.tokens_per_second:,.0f} tokens/s")
        if self.memory_mb:
            bits.append(f"memory {fmt_bytes(self.memory_mb * 2**20)}")
        label = STATUS_WORDS.get(self.status, self.status) + (
            f" (position {self.queue_position} in the queue)" if self.queue_position else "")
        out = [f"<div class='mf-status mf-status-{e(self.status)}'>",
               f"<div class='mf-status-head'><span class='mf-badge'>{e(label)}</span> <b>{e(self.name)}</b> "
               f"<code>{e(self.run_id)}</code></div>",
               f"<div class='mf-progress'><div class='mf-progress-bar' style='width:{pct}%'></div></div>",
               f"<div class='mf-status-line'>{' · '.join(bits)}</div>"]
        if self.message and self.status == "queued":
            out.append(f"<div class='mf-status-msg'>{e(self.message)}</div>")
        if self.compiling and self.status == "running":
            out.append(f"<div class='mf-status-msg'>{e(self.compiling)}</div>")
        if self.error and self.status not in ("cancelled", "interrupted"):  # said once, below the card
            out.append(f"<div class='mf-status-error'>{e(self.error)}"
                       + (f"<br><b>Fix:</b> {e(self.hint)}" if self.hint else "") + "</div>")
        out.append("</div>")
        return "".join(out)

    def done_markdown(self) -> str:
        if self.status == "completed":
            shown = {k: v for k, v in self.metrics.items()
                     if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("train_runtime_s",
                                                                                              "train_loss")}
            # The trainer's train_loss is the mean over the last session only: after a resume it
            # sits below every logged loss. Show the last logged loss and the mean of all of them.
            losses = [v for _, v in self.series["loss"]]
            if losses:
                shown = {"last logged loss": losses[-1], "mean logged loss (whole run)": sum(losses) / len(losses),
                         **shown}
            metrics = " · ".join(f"{METRIC_LABELS.get(k, k.replace('_', ' '))} {v:.4g}" for k, v in shown.items())
            return (f"### {icon('ok')} Finished: model **{self.name}** (`{self.model_id}`)\n{metrics}\n\n"
                    "Find it in the **Models** tab, or talk to it in the **Playground**.")
        if self.status == "failed":
            text = (f"### {icon('error')} The run failed\n{self.error or ''}"
                    + (f"\n\n**Fix:** {self.hint}" if self.hint else ""))
            if self.problems:
                text += "\n\n" + problems_markdown(self.problems)  # dicts, as the events file holds them
            return text
        if self.status in ("cancelled", "interrupted"):
            word = STATUS_WORDS.get(self.status, self.status)
            then = ("Press **Resume** to continue from its last checkpoint." if self.resumable else
                    "It has no checkpoint to resume from: start it again as a new run.")
            return f"### {icon('pause')} Run {word} at step {self.step}\n{then}"
        return ""

    def to_dict(self) -> dict:
        keys = ("run_id", "name", "status", "step", "total", "loss", "learning_rate", "tokens_per_second",
                "memory_mb", "eta_s", "elapsed_s", "eval_loss", "perplexity", "model_id", "metrics", "error",
                "hint", "problems", "queue_position", "message", "n_events", "log")
        out = {k: getattr(self, k) for k in keys}
        out["total_steps"] = out.pop("total")
        out["done"] = self.status in TERMINAL
        return out


# What a finished run's metrics are called on the page (others: their key, with spaces).
METRIC_LABELS = {"train_loss": "mean training loss", "eval_loss": "validation loss", "perplexity": "perplexity",
                 "exact_match": "exact match", "f1": "F1", "rouge1": "ROUGE-1", "rouge2": "ROUGE-2",
                 "rougeL": "ROUGE-L"}


def _clock(t: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(t)) if t else "--:--:--"


def event_line(ev) -> str | None:
    d = ev.data
    t = ev.type
    if t == "queued":
        text = f"queued: {d.get('message', '')}"
    elif t == "started":
        text = f"started '{d.get('name', '')}'"
    elif t == "log":
        text = d.get("message", "")
    elif t == "step":
        text = f"step {ev.step}/{ev.total_steps} loss {d.get('loss', 0):.4f}"
        if d.get("learning_rate") is not None:
            text += f" lr {d['learning_rate']:.2e}"
        if d.get("tokens_per_second"):
            text += f" {d['tokens_per_second']:.0f} tok/s"
    elif t == "eval":
        text = f"eval at step {ev.step}: loss {d.get('eval_loss', 0):.4f} perplexity {d.get('perplexity', 0):.2f}"
    elif t == "checkpoint":
        text = f"checkpoint saved at step {ev.step}"
    elif t == "finished":
        text = f"finished: model {d.get('model_id')}"
    elif t == "failed":
        text = f"failed: {d.get('message', '')}" + (f" (fix: {d['hint']})" if d.get("hint") else "")
    elif t == "cancelled":
        text = f"stopped at step {ev.step}: {d.get('message', '')}"
    else:
        return None
    return f"[{_clock(ev.time)}] {text}"


def run_view(ctx: AppContext, run_id: str | None) -> RunView:
    """Everything known about a run, rebuilt from its record and its events."""
    if not run_id:
        return RunView()
    try:
        run = ctx.store.get_run(run_id)
    except NotFoundError:
        shown = clip(run_id, 80)  # never echo a huge id back
        return RunView(run_id=shown, status="unknown", error=f"no run with id {shown}")
    live = ctx.jobs.events(run_id, 0)
    # A resumed run's live events start at the resume: the sessions before it are in its
    # events.jsonl, so the curves are drawn from step 1.
    events = (earlier_events(run.output_dir, live) if (run.attempts or 0) > 1 else []) + live
    v = RunView(run_id=run_id, name=run.name, status=run.status, step=run.last_step, total=run.total_steps,
                model_id=run.model_id, n_events=len(live),
                validation_split=float((run.config or {}).get("validation_split") or 0.0))
    if run.error and run.status != "completed":
        v.error = run.error
    started = None
    for ev in events:
        d = ev.data
        if ev.total_steps:
            v.total = ev.total_steps
        if ev.step:
            v.step = max(v.step, ev.step) if ev.type != "started" else v.step
        if ev.type == "started":
            started = ev.time  # elapsed counts the latest session
        elif ev.type == "queued" and ev is not events[0] and any(p for p in v.series.values()):
            # A resume restarts from a checkpoint that may be older than the last logged step:
            # drop the points it will log again, keep the whole curve before it.
            restart = _checkpoint_before(events, ev)
            if restart is not None:
                v.series = {k: [p for p in pts if p[0] <= restart] for k, pts in v.series.items()}
            v.message = d.get("message", "")
        elif ev.type == "queued":
            v.message = d.get("message", "")
        elif ev.type == "step":
            v.step = ev.step
            v.loss = d.get("loss")
            v.learning_rate = d.get("learning_rate")
            v.tokens_per_second = d.get("tokens_per_second") or v.tokens_per_second
            v.memory_mb = d.get("memory_mb")
            v.eta_s = d.get("eta_s")
            if d.get("loss") is not None:
                v.series["loss"].append((ev.step, d["loss"]))
            if d.get("learning_rate") is not None:
                v.series["learning_rate"].append((ev.step, d["learning_rate"]))
            if d.get("tokens_per_second"):
                v.series["tokens_per_second"].append((ev.step, d["tokens_per_second"]))
        elif ev.type == "eval":
            v.eval_loss, v.perplexity = d.get("eval_loss"), d.get("perplexity")
            v.series["eval_loss"].append((ev.step, d.get("eval_loss")))
        elif ev.type == "finished":
            v.model_id = d.get("model_id") or v.model_id
            v.metrics = d.get("metrics") or {}
            v.step = ev.step or v.step
        elif ev.type == "failed":
            v.error, v.hint, v.problems = d.get("message"), d.get("hint"), d.get("problems") or []
        elif ev.type == "cancelled":
            v.message = d.get("message", "")
        elif ev.type == "log" and d.get("validation"):
            v.validation = d["validation"]
        elif ev.type == "log" and d.get("compiling"):
            v.compiling = d.get("message", "")
        if ev.type in ("step", "finished", "failed", "cancelled") or (ev.type == "log" and d.get("compile_failed")):
            v.compiling = ""  # the first step came (or the run ended, or it trains eager now)
        line = event_line(ev)
        if line:
            v.log.append(line)
    if started is not None and events:
        v.elapsed_s = (time.time() if run.status == "running" else events[-1].time) - started
    if run.status not in TERMINAL and events and events[-1].type in ("finished", "failed", "cancelled"):
        v.status = {"finished": "completed", "failed": "failed", "cancelled": "cancelled"}[events[-1].type]
    # Jobs ahead of it on the device, an evaluation too (waiting()/current list runs only).
    v.queue_position = ctx.jobs.ahead(run_id)[0] or None
    v.log = v.log[-LOG_LINES:]
    v.resumable = _can_resume(ctx, run_id, v.status)
    return v


def earlier_events(run_dir: str | None, live: list) -> list:
    """The events of a run's earlier sessions (before a resume) from its events.jsonl: those
    older than the first live event. Empty when the live list is the whole file already."""
    from pathlib import Path

    from core.events import read_events

    if not run_dir or not live or live[0].type != "queued":
        return []
    try:
        return [ev for ev in read_events(Path(run_dir) / "events.jsonl") if ev.time < live[0].time]
    except OSError:
        return []


def _checkpoint_before(events: list, resume_event) -> int | None:
    """The step of the newest checkpoint logged before ``resume_event`` (a resume restarts there);
    None when none was logged (then nothing is dropped)."""
    step = None
    for ev in events:
        if ev is resume_event:
            break
        if ev.type == "checkpoint":
            step = ev.step
        elif ev.type == "cancelled" and (ev.data or {}).get("checkpoint"):
            step = ev.step
    return step


def _can_resume(ctx: AppContext, run_id: str, status: str) -> bool:
    """Resume applies: the run stopped, was interrupted or failed, and has a checkpoint."""
    if status not in RESUMABLE:
        return False
    from core.run import resumable

    try:
        resumable(ctx.store, run_id)
    except ModelForgeError:
        return False
    return True


def run_choices(ctx: AppContext, limit: int = 30) -> list[tuple[str, str]]:
    from components.common import run_label  # issue 17: name, time and status tell runs apart

    return [(run_label(r), r.id) for r in ctx.store.list_runs(limit=limit)]


def default_run(ctx: AppContext) -> str | None:
    """The run a fresh page shows: the one training, else the first waiting, else the newest."""
    if ctx.jobs.current:
        return ctx.jobs.current
    waiting = ctx.jobs.waiting()
    if waiting:
        return waiting[0]
    runs = ctx.store.list_runs(limit=1)
    return runs[0].id if runs else None


# -- actions ----------------------------------------------------------------------------------------
def start_training(ctx: AppContext, config: RunConfig) -> dict:
    """Check and submit a run (each check once: :func:`core.service.start`). Returns {run_id,
    queued, message, memory_ok}.

    Raises:
        ConfigError: every problem with the config and its data (nothing is recorded).
        BusyError: the same configuration is already training or waiting, or the queue is full.
    """
    from core.service import start

    config = check_public(ctx, config.replace(dataset=resolve_dataset(config.dataset, ctx.restrict_paths)))
    started = start(ctx.jobs, config)
    run_id, pos, busy = started.run_id, started.position, started.behind
    if pos:
        # What really holds the device: a run, or an evaluation (Models tab) with its progress.
        holder = ctx.jobs.holding(busy)
        message = (f"{holder[0].upper()}{holder[1:]}. Yours ({run_id}) waits in the queue (position {pos}) and "
                   "starts when it ends: one job at a time per device. Stop it to start yours sooner.")
    else:
        message = f"Run {run_id} started."
    fit_ok = started.memory.ok
    if fit_ok is False:
        message += " Warning: " + started.memory.verdict
    return {"run_id": run_id, "queued": bool(busy), "message": message, "memory_ok": fit_ok}


def stop_training(ctx: AppContext, run_id: str | None = None) -> dict:
    """Ask a run (default: the one training) to stop after this step; it saves a checkpoint.

    Raises:
        ModelForgeError: nothing to stop.
    """
    run_id = run_id or ctx.jobs.current
    if not run_id:
        raise ModelForgeError("no run is training", "start one first")
    if ctx.jobs.stop(run_id):
        return {"run_id": run_id, "message": f"Stopping {run_id} after this step; a checkpoint is saved so you "
                                             "can resume it."}
    status = ctx.store.get_run(run_id).status
    raise ModelForgeError(f"run {run_id} is not training (it is {status})",
                          "Stop works on a queued or running run")


def train_more(ctx: AppContext, run_id: str | None, steps: int) -> dict:
    """Continue a completed run ``steps`` more steps from its last checkpoint, as a new run (issue 16).

    Raises:
        ModelForgeError: no run chosen, not completed, no checkpoint.
    """
    from core.errors import NotFoundError

    if not run_id:
        raise NotFoundError("no run chosen", "pick a completed run in the Run list")
    new_id = ctx.jobs.train_more(run_id, steps=steps)
    return {"run_id": new_id, "message": f"Run {run_id} trains {steps} more steps as run {new_id}."}


def resume_training(ctx: AppContext, run_id: str | None) -> dict:
    """Continue a stopped, interrupted or failed run from its last checkpoint.

    Raises:
        ModelForgeError: no run chosen, nothing to resume from, or it is active/completed.
    """
    if not run_id:
        raise ModelForgeError("no run chosen", "pick a stopped or interrupted run in the list")
    busy = ctx.jobs.busy  # a run or an evaluation
    ctx.jobs.resume(run_id)
    message = (f"Run {run_id} resumes from its last checkpoint." if not busy else
               f"Run {run_id} will resume when the device is free: {ctx.jobs.holding(busy)} (one job at a "
               "time per device).")
    return {"run_id": run_id, "queued": bool(busy), "message": message}


def training_status(ctx: AppContext, run_id: str | None = None) -> dict:
    """The state of a run (default: the one training, else the newest) as a dict."""
    return run_view(ctx, run_id or default_run(ctx)).to_dict()


# -- polling (the Timer) ------------------------------------------------------------------------------
def new_state(run_id: str | None = None, follow: bool = True) -> dict:
    return {"run_id": run_id, "follow": follow, "n": -1, "status": None}


def poll(ctx: AppContext, state: dict | None, force: bool = False) -> tuple[dict, RunView | None, bool]:
    """Decide what the page should show now: (new state, view or None when unchanged, relist?).

    ``relist`` is True when the run list needs redrawing (another run, or a new status).

    Cheap when nothing happened (one SQL read), so many pages can poll every second.
    """
    state = dict(state or new_state())
    run_id = state.get("run_id")
    changed = False
    if state.get("follow", True):
        active = ctx.jobs.current or next(iter(ctx.jobs.waiting()), None)
        target = active or run_id or default_run(ctx)
        if target != run_id:
            run_id, changed = target, True
    if not run_id:
        if force or state.get("n", -1) != 0:
            state.update(run_id=None, n=0, status="none")
            return state, RunView(), True
        return state, None, False
    try:
        status = ctx.store.get_run(run_id).status
    except NotFoundError:
        status = "unknown"
    unchanged_run = not (force or changed) and status == state.get("status")
    if unchanged_run and status in TERMINAL:
        return state, None, False  # an ended run's events do not change (a resume changes its status)
    since = max(state.get("n", 0), 0)
    if unchanged_run and since + len(ctx.jobs.events(run_id, since)) == state.get("n"):
        return state, None, False
    view = run_view(ctx, run_id)
    relist = changed or force or status != state.get("status")  # the run list shows statuses
    state.update(run_id=run_id, n=view.n_events, status=status)
    if status in TERMINAL and not ctx.jobs.current:
        state["follow"] = True  # a finished run stays on screen until another one starts
    return state, view, relist


# -- widgets --------------------------------------------------------------------------------------
@dataclass
class TrainTab:
    state: gr.State
    start: gr.Button
    stop: gr.Button
    resume: gr.Button
    runs: gr.Dropdown
    timer: gr.Timer
    open_playground: gr.Button
    open_models: gr.Button
    done: gr.Markdown
    outputs: list  # what view_outputs() fills
    attach: Any = None  # page-load handler, set by wire()
    more: Any = None        # issue 16: "Train more" button and its steps
    more_steps: Any = None


def _plot(y: str, title: str, elem_id: str, color: str, visible: bool = True) -> gr.LinePlot:
    import pandas as pd

    # Slanted step labels: level ones ran into each other ("280300") on a half-width plot.
    return gr.LinePlot(value=pd.DataFrame({"step": [], y: []}), x="step", y=y, title=title, elem_id=elem_id,
                       height=230, color_map={y: color}, x_title="step", y_title=title, label=title,
                       show_label=False, x_label_angle=-40, visible=visible)


EVAL_NOTE_NONE = ("No eval loss for this run: set **validation_split** in Configure (e.g. 0.1) to hold rows "
                  "out and plot an eval loss.")
EVAL_NOTE_LATER = "Eval loss: the first one comes at the end of an epoch (or every eval_steps)."


def eval_plot(view: RunView, title: str, visible: bool = True) -> gr.LinePlot:
    """The eval-loss curve; with early stopping, the kept (best) step as a vertical line beside it
    (issue 16: the model is that checkpoint's, not the last step's, and the plot should say so)."""
    import pandas as pd

    frame = view.frame("eval_loss").assign(series="eval loss")
    best = view.metrics.get("best_step")
    if best is None or frame.empty:
        return gr.LinePlot(value=frame, title=title, color="series", color_map={"eval loss": "#d97706"},
                           caption=None, visible=visible)
    label = f"best: step {best}"
    low, high = float(frame["eval_loss"].min()), float(frame["eval_loss"].max())
    marker = pd.DataFrame({"step": pd.Series([best, best], dtype="int64"),
                           "eval_loss": pd.Series([low, high], dtype="float64"), "series": label})
    at = frame.loc[frame["step"] == best, "eval_loss"]
    caption = (f"Early stopping kept step {best}" + (f" (eval loss {float(at.iloc[0]):.4g})" if len(at) else "")
               + " as the model.")
    return gr.LinePlot(value=pd.concat([frame, marker], ignore_index=True), title=f"{title} · {label}",
                       color="series", color_map={"eval loss": "#d97706", label: "#16a34a"}, caption=caption,
                       visible=visible)


def build(ctx: AppContext) -> TrainTab:
    gr.Markdown("Start the run set up in **Configure** (the identity demo by default). The plots follow the "
                "run live; reload the page or open a second browser and you see the same run.",
                elem_classes=["mf-help"])
    state = gr.State(new_state())
    with gr.Row(equal_height=True):
        # Icons are CSS shapes (assets/style.css), not font glyphs that a machine may lack.
        start = gr.Button("Start training", variant="primary", elem_id="btn-start", scale=2,
                          elem_classes=["mf-ib", "mf-ib-play"])
        # Enabled only when they apply (view_outputs): Stop while a run is active, Resume for a
        # stopped run with a checkpoint.
        stop = gr.Button("Stop", variant="stop", elem_id="btn-stop", scale=1, interactive=False,
                         elem_classes=["mf-ib", "mf-ib-stop"])
        resume = gr.Button("Resume", elem_id="btn-resume", scale=1, interactive=False,
                           elem_classes=["mf-ib", "mf-ib-resume"])
        runs = gr.Dropdown(choices=[], value=None, label="Run", elem_id="train-run", scale=4, allow_custom_value=True,
                           info="Shows the run training now; pick another to inspect it")
    with gr.Row(equal_height=True):  # issue 16: continue a completed run from its last checkpoint
        more_steps = gr.Number(value=50, precision=0, minimum=1, label="More steps", elem_id="train-more-steps",
                               scale=1)
        more = gr.Button("Train more (completed run, from its last checkpoint)", elem_id="btn-train-more", scale=3,
                         elem_classes=["mf-ib", "mf-ib-more"])
    status = gr.HTML(RunView().status_html(), elem_id="train-status")
    done = gr.Markdown("", elem_id="train-done")
    with gr.Row():
        open_playground = gr.Button("Try it in the Playground", visible=False, elem_id="btn-open-playground",
                                    variant="primary", elem_classes=["mf-ib", "mf-ib-chat"])
        open_models = gr.Button("Open its record in Models", visible=False, elem_id="btn-open-models")
    with gr.Row():
        loss = _plot("loss", "train loss", "plot-loss", "#2563eb")
        # Hidden until the run has an eval loss (an empty plot took a quarter of the tab).
        eval_loss = _plot("eval_loss", "eval loss", "plot-eval-loss", "#d97706", visible=False)
    eval_note = gr.Markdown("", elem_id="train-eval-note", elem_classes=["mf-help"])
    with gr.Row():
        lr = _plot("learning_rate", "learning rate", "plot-lr", "#7c3aed")
        tps = _plot("tokens_per_second", "tokens/s", "plot-tokens", "#059669")
    log_box = gr.Textbox(label="Log", lines=8, max_lines=14, interactive=False, elem_id="train-log",
                         autoscroll=True)
    timer = gr.Timer(1.0)
    outputs = [state, status, done, open_playground, open_models, loss, eval_loss, eval_note, lr, tps, log_box, runs,
               stop, resume]
    assert len(outputs) == len(OUTPUT_NAMES)
    return TrainTab(state=state, start=start, stop=stop, resume=resume, runs=runs, timer=timer,
                    open_playground=open_playground, open_models=open_models, done=done, outputs=outputs,
                    more=more, more_steps=more_steps)


def view_outputs(ctx: AppContext, state: dict, view: RunView | None, relist: bool) -> list:
    """Values for TrainTab.outputs (gr.skip() where nothing changed)."""
    if view is None:
        return [state] + [gr.skip()] * (len(OUTPUT_NAMES) - 1)
    runs = gr.Dropdown(choices=run_choices(ctx), value=view.run_id) if relist else gr.skip()
    has_eval = bool(view.series["eval_loss"])
    note = ""
    if view.run_id and not has_eval:
        if view.validation.startswith("validation: none (auto"):  # the held-out rule's words (issue 16)
            note = "No eval loss for this run " + view.validation.removeprefix("validation: none ") + "."
        elif view.validation.startswith("validation: none") or (not view.validation and not view.validation_split):
            note = EVAL_NOTE_NONE  # none held out by choice (or a run recorded before the rule)
        else:
            note = EVAL_NOTE_LATER
    finished = view.status == "completed" and bool(view.model_id)
    # A run that just ended is still the job manager's current one for a moment: not active.
    ended = view.status in TERMINAL and ctx.jobs.current == view.run_id
    active = bool(ctx.jobs.waiting()) or (ctx.jobs.current is not None and not ended)
    return [state, view.status_html(), view.done_markdown(), gr.Button(visible=finished),
            gr.Button(visible=finished), view.frame("loss"),
            eval_plot(view, "eval loss", visible=has_eval), note, view.frame("learning_rate"),
            view.frame("tokens_per_second"), "\n".join(view.log), runs,
            gr.Button(interactive=active), gr.Button(interactive=view.resumable)]


def wire(tab: TrainTab, ctx: AppContext, config_inputs: list, values_to_config) -> None:
    """Start needs the Configure form, so it is wired once both tabs exist."""

    def _tick(state):
        s, view, changed = poll(ctx, state)
        return view_outputs(ctx, s, view, changed)

    def _attach(state):
        s, view, _ = poll(ctx, new_state(), force=True)
        return view_outputs(ctx, s, view, True)

    def _start(state, *vals):
        try:
            result = start_training(ctx, values_to_config(vals))
        except BusyError as exc:  # a double click, or a full queue: a warning, the view stays
            warn(str(exc))
            s, view, changed = poll(ctx, state)
            return view_outputs(ctx, s, view, changed)
        (warn if result["queued"] or result.get("memory_ok") is False else info)(result["message"])
        s, view, _ = poll(ctx, new_state(result["run_id"], follow=not result["queued"]), force=True)
        if result["queued"]:
            s["follow"] = False
        return view_outputs(ctx, s, view, True)

    def _stop(state):
        if not (ctx.jobs.current or ctx.jobs.waiting()):  # a stale button: say so, not an error
            info("Nothing is training now: there is nothing to stop.")
        else:
            result = stop_training(ctx, (state or {}).get("run_id")
                                   if (state or {}).get("status") in ("queued", "running") else None)
            info(result["message"])
        s, view, _ = poll(ctx, state, force=True)
        return view_outputs(ctx, s, view, False)

    def _resume(state, chosen):
        run_id = chosen or (state or {}).get("run_id")
        result = resume_training(ctx, run_id)
        (warn if result["queued"] else info)(result["message"])
        s, view, _ = poll(ctx, new_state(run_id, follow=False), force=True)
        return view_outputs(ctx, s, view, True)

    def _more(state, chosen, steps):
        run_id = chosen or (state or {}).get("run_id")
        result = train_more(ctx, run_id, int(steps or 0))
        info(result["message"])
        s, view, _ = poll(ctx, new_state(result["run_id"], follow=True), force=True)
        return view_outputs(ctx, s, view, True)

    def _pick(chosen):
        s, view, _ = poll(ctx, new_state(chosen, follow=chosen == ctx.jobs.current), force=True)
        return view_outputs(ctx, s, view, False)

    out = tab.outputs
    # show_progress hidden: the outputs are the whole tab, and a failed event would cover them
    # with red "Error" pills (the toast says what went wrong; the status card shows the run).
    quiet = dict(api_visibility="private", show_progress="hidden")
    tab.timer.tick(guard(_tick), tab.state, out, show_progress="hidden", api_visibility="private",
                   concurrency_limit=None, trigger_mode="always_last")
    tab.start.click(guard(_start), [tab.state, *config_inputs], out, **quiet)
    tab.stop.click(guard(_stop), tab.state, out, concurrency_limit=None, **quiet)
    tab.resume.click(guard(_resume), [tab.state, tab.runs], out, **quiet)
    tab.runs.input(guard(_pick), tab.runs, out, concurrency_limit=None, **quiet)
    if tab.more is not None:
        tab.more.click(guard(_more), [tab.state, tab.runs, tab.more_steps], out, **quiet)
    tab.attach = guard(_attach)  # run by app/ui.py on page load


def register_api(ctx: AppContext, default_config) -> None:
    def start(config: dict | None = None, preset: str = "") -> dict:
        """Start a run. `config`: run settings (see RunConfig) over the app defaults (the identity demo)
        or over `preset`. Returns run_id, queued and a message."""
        from components.common import load_preset
        from components.configure_tab import config_from_mapping

        base = load_preset(preset) if preset else default_config()
        return start_training(ctx, config_from_mapping(config, base))

    def stop(run_id: str = "") -> dict:
        """Stop a run (default: the one training) after the current step; a checkpoint is kept."""
        return stop_training(ctx, run_id or None)

    def resume(run_id: str) -> dict:
        """Resume a stopped, interrupted or failed run from its last checkpoint."""
        return resume_training(ctx, run_id)

    def status(run_id: str = "") -> dict:
        """Status of a run (default: the one training, else the newest): step, loss, ETA, model_id..."""
        return training_status(ctx, run_id or None)

    def runs() -> list[dict]:
        """All runs, newest first."""
        from core.records import record_to_dict

        return [record_to_dict(r) for r in ctx.store.list_runs()]

    gr.api(endpoint(start), api_name="start_training")
    gr.api(endpoint(stop), api_name="stop_training", concurrency_limit=None)
    gr.api(endpoint(resume), api_name="resume_training")
    gr.api(endpoint(status), api_name="training_status", concurrency_limit=None)
    gr.api(endpoint(runs), api_name="list_runs", concurrency_limit=None)
