"""Runs side by side (issue 16), in the Models tab: pick several runs; their loss and eval-loss
curves overlaid, the config fields in which they differ, and their final and evaluation metrics
(core.runs_compare does the work)."""

from __future__ import annotations

from typing import Any

import gradio as gr

from components.common import AppContext, guard, run_label


def run_choices(ctx: AppContext) -> list[tuple[str, str]]:
    return [(run_label(r), r.id) for r in ctx.store.list_runs()]


def side_by_side(ctx: AppContext, run_ids: list[str]) -> tuple[Any, Any, Any]:
    """(curves frame, config-diff frame, metrics frame) for the LinePlot and the two tables."""
    import pandas as pd

    from core.errors import ModelForgeError
    from core.runs_compare import compare_runs

    if not run_ids or len(run_ids) < 2:
        raise ModelForgeError("pick at least two runs to compare", "choose them in the list")
    d = compare_runs(ctx.store, list(run_ids))
    frame = pd.DataFrame(d["curves"] or [], columns=["run", "metric", "step", "value", "series"])
    diff = pd.DataFrame(d["config_diff"], columns=d["config_headers"])
    metrics = pd.DataFrame(d["metrics"], columns=d["metrics_headers"]).astype(str)
    return frame, diff, metrics


def build(ctx: AppContext) -> None:
    with gr.Accordion("Runs side by side", open=False, elem_id="runs-compare"):
        with gr.Row():
            runs = gr.Dropdown(choices=[], multiselect=True, label="Runs", elem_id="runs-compare-choice", scale=4,
                               allow_custom_value=True)
            refresh = gr.Button("Refresh list", scale=0, min_width=120, elem_id="btn-runs-compare-refresh")
            go = gr.Button("Compare", scale=0, min_width=120, elem_id="btn-runs-compare")
        plot = gr.LinePlot(value=None, x="step", y="value", color="series", title="Loss and eval loss",
                           height=280, elem_id="runs-compare-curves")
        diff = gr.Dataframe(value=None, interactive=False, wrap=True, label="Config fields that differ",
                            elem_id="runs-compare-config")
        metrics = gr.Dataframe(value=None, interactive=False, wrap=True, label="Final and evaluation metrics",
                               elem_id="runs-compare-metrics")
    refresh.click(lambda: gr.Dropdown(choices=run_choices(ctx)), None, runs, api_visibility="private")
    go.click(guard(lambda ids: side_by_side(ctx, ids)), runs, [plot, diff, metrics], api_visibility="private")
