"""Hardware tab: what this machine has, which back-ends work, and which models fit for training.

The probe (:func:`core.checks.hardware_report`) and the advice (:func:`core.memory.recommend`) are
cheap and never import torch. A recommendation can be applied to the Configure form.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr

from components.common import AppContext, endpoint, guard, log, state_icon
from core.config import TASKS, RunConfig
from core.errors import ModelForgeError

REC_HEADERS = ["model", "settings", "note"]


def probe_report():
    from core.checks import hardware_report as probe

    return probe()


def hardware_markdown(report) -> str:
    """The report as two short lists (lists, not tables: on a phone a two-column table broke its
    first column's words letter by letter)."""
    from core.hardware import precision_advice

    cpu = report.cpu
    disk = (report.disk.reason or f"{report.disk.free_gib:.1f} GiB free of {report.disk.total_gib:.1f} GiB "
                                  f"(`{report.disk.path}`)")
    lines = [f"**{report.summary}**", "",
             f"- **System:** {report.os}, Python {report.python}",
             f"- **CPU:** {cpu.model} ({cpu.arch}), {cpu.physical_cores} physical / {cpu.logical_cores} logical "
             f"cores, bf16 {'yes' if cpu.bf16 else 'no'}",
             f"- **RAM:** {report.ram_available_gib:.1f} GiB available of {report.ram_total_gib:.1f} GiB",
             f"- **Disk:** {disk}"]
    if report.gpus:
        for g in report.gpus:
            cc = ".".join(str(x) for x in g.compute_capability)
            lines.append(f"- **GPU {g.index}:** {g.name}: {g.memory_free_gib:.1f} GiB free of "
                         f"{g.memory_total_gib:.1f} GiB, "
                         f"compute capability {cc}, bf16 {'yes' if g.bf16 else 'no'}, driver "
                         f"{g.driver_version or '?'}, CUDA {g.cuda_driver_version or '?'}")
    else:
        lines.append(f"- **GPU:** none ({report.gpu_reason or 'not found'})")
    lines.append(f"- **Apple MPS:** {'available' if report.mps_available else (report.mps_reason or 'no')}")
    lines.append(f"- **Training:** on **{report.device}**, {precision_advice(report)}")
    lines += ["", "**Back-ends**", ""]
    for b in report.backends:
        # An SVG icon, not an emoji: emoji are empty boxes on a machine without an emoji font.
        status = (state_icon("ok") if b.available else "— ") + (b.reason or ("ok" if b.available else "not available"))
        lines.append(f"- **{b.name}** {b.version or ''} {status}".replace("  ", " "))
    for p in report.problems:
        lines.append(f"\n{state_icon('warn')} {p}")
    return "\n".join(lines)


def recommendations(report, task: str) -> tuple[list, str]:
    """(Recommendation objects, a note) for ``task``; empty with a reason when unavailable."""
    try:
        from core.memory import recommend
    except ImportError as exc:
        return [], f"Recommendations are not available in this version ({exc})."
    try:
        recs = recommend(report, task=task)
    except ModelForgeError as exc:
        return [], f"No recommendations: {exc.message}"
    except Exception as exc:  # noqa: BLE001 - advice must never break the tab
        log.warning("recommend failed: %s", exc)
        return [], f"No recommendations ({type(exc).__name__})."
    if not recs:
        return [], f"No model of the catalog fits this machine for {task}."
    return recs, ""


def recommendation_rows(recs: list) -> list[list[Any]]:
    """Rows of (model, settings, note): three columns fit a phone; seven broke their headers."""
    return [[r.model_id, f"{r.method} · batch {r.batch_size} · length {r.max_length} · "
                         f"accum. {r.gradient_accumulation_steps} · ~{r.estimated_gib:.2f} GiB", r.note]
            for r in recs]


def hardware_view(task: str = "text-generation") -> dict:
    """Everything the tab shows (also the `hardware` API's answer)."""
    report = probe_report()
    recs, note = recommendations(report, task)
    return {"report": report.to_dict(), "markdown": hardware_markdown(report),
            "recommendations": [r.to_dict() for r in recs], "note": note, "task": task,
            "_recs": recs}


def apply_recommendation(recs: list, model_id: str, task: str, config: RunConfig) -> RunConfig:
    """``config`` with the settings of the recommendation for ``model_id`` (and ``task``).

    Raises:
        ModelForgeError: no such recommendation.
    """
    for r in recs:
        if r.model_id == model_id:
            return config.replace(task=task, **r.config_changes())
    raise ModelForgeError(f"no recommendation for '{model_id}'", "press Refresh and pick one from the list")


def changes_text(old: RunConfig, new: RunConfig) -> str:
    """What applying a recommendation changed, in one line ('field a → b, ...'), or '' for nothing."""
    parts = [f"{name.replace('_', ' ')} {getattr(old, name)} → {getattr(new, name)}"
             for name in old.to_dict() if getattr(old, name) != getattr(new, name)]
    return ", ".join(parts)


def apply_message(choice: str, old: RunConfig, new: RunConfig) -> str:
    """The one line Apply shows: what it changed in Configure, or that nothing needed changing."""
    changed = changes_text(old, new)
    if not changed:
        return f"{choice}: Configure already has these settings; nothing changed."
    return f"Applied {choice} to Configure: {changed}."


@dataclass
class HardwareTab:
    refresh: gr.Button
    task: gr.Dropdown
    choice: gr.Dropdown
    apply: gr.Button
    outputs: list


def build(ctx: AppContext) -> HardwareTab:
    gr.Markdown("What this machine can train. Pick a recommendation and **Apply** it to fill the model, "
                "batch size and sequence length in Configure.", elem_classes=["mf-help"])
    with gr.Row():
        task = gr.Dropdown(choices=list(TASKS), value="text-generation", label="Task", elem_id="hw-task", scale=2)
        refresh = gr.Button("Refresh", elem_id="btn-hw-refresh", scale=1)
    with gr.Row():
        with gr.Column(scale=1):
            gr.Markdown("#### Models that fit here, best first")
            # max_height well above the catalog's rows (~10, notes wrapped): the table grows with the
            # page instead of scrolling inside itself with its last row cut off.
            table = gr.Dataframe(headers=REC_HEADERS, value=None, interactive=False, wrap=True,
                                 elem_id="hw-recommendations", show_label=False, max_height=4000,
                                 column_widths=["24%", "30%", "46%"])
            note = gr.Markdown("", elem_id="hw-note")
            with gr.Row(equal_height=True):
                choice = gr.Dropdown(choices=[], label="Recommendation", elem_id="hw-choice", scale=3,
                                     allow_custom_value=True)
                apply = gr.Button("Apply to Configure", variant="primary", elem_id="btn-hw-apply", scale=1)
    gr.Markdown("#### This machine")
    summary = gr.Markdown("Loading…", elem_id="hw-summary")
    outputs = [summary, table, note, choice]

    refresh.click(guard(refresh_outputs), task, outputs, api_visibility="private")
    task.input(guard(refresh_outputs), task, outputs, api_visibility="private")
    return HardwareTab(refresh=refresh, task=task, choice=choice, apply=apply, outputs=outputs)


def refresh_outputs(task_name: str = "text-generation") -> tuple:
    """Values for HardwareTab.outputs."""
    view = hardware_view(task_name or "text-generation")
    ids = [r.model_id for r in view["_recs"]]
    return (view["markdown"], recommendation_rows(view["_recs"]) or None, view["note"],
            gr.Dropdown(choices=ids, value=ids[0] if ids else None))


def limits_brief(value) -> str:
    from core.limits import brief

    return brief(value)


def register_api(ctx: AppContext) -> None:
    def hardware(task: str = "text-generation") -> dict:
        """This machine (CPU, RAM, disk, GPUs, back-ends) and the models that fit it for `task`."""
        from core.config import TASKS
        from core.errors import ConfigError

        if task not in TASKS:
            raise ConfigError(f"unknown task {limits_brief(task)}", f"use one of: {', '.join(TASKS)}")
        view = hardware_view(task)
        view.pop("_recs")
        return view

    gr.api(endpoint(hardware), api_name="hardware")
