"""Dataset tab: pick or upload data, see how the model will see it, and fix it before training.

Shows the detected format (with an override and a column map), the first rows rendered through
the chat template of the chosen model's tokenizer (the part the loss is computed on marked
"trained", the prompt "masked"), every validation problem with its file/line/field and fix, a
token-length histogram against ``max_length`` and the train/validation split.

The checking itself is :func:`core.checks.validate_file`; this module only renders it.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr
from gradio.data_classes import FileData

from components.common import (DEFAULT_EXAMPLE, AppContext, check_public, dataset_label, endpoint, example_names,
                               file_path_of, guard, log, mapping_to_text, parse_mapping_text, problems_rows,
                               resolve_dataset, state_icon, store_upload, warn)
from core.config import DATA_FORMATS, RunConfig
from core.errors import DataError, ModelForgeError

PREVIEW_ROWS = 3
PREVIEW_CHARS = 600
HIST_SAMPLE = 2000
HIST_BINS = 16
PROBLEM_ROWS = 500
COLOR_MAP = {"trained": "#16a34a", "masked": "#94a3b8", "rejected": "#dc2626"}
# Three columns: a fourth, narrow "severity" column broke its header letter by letter on a phone.
PROBLEM_HEADERS = ["where", "problem", "fix"]
# Uploads larger than this are refused (MODELFORGE_MAX_UPLOAD_MB; 0: no limit). 200 MB holds a
# few hundred thousand chat examples; a bigger data set is better read from disk (the CLI, or a
# path on a private app) than sent through a browser, and a public app must not let a visitor
# fill its disk.
DEFAULT_MAX_UPLOAD_MB = 200.0


def max_upload_mb() -> float:
    """The upload limit in MB from ``MODELFORGE_MAX_UPLOAD_MB`` (default 200; 0 or less: none)."""
    raw = os.environ.get("MODELFORGE_MAX_UPLOAD_MB", "").strip()
    if not raw:
        return DEFAULT_MAX_UPLOAD_MB
    try:
        return float(raw)
    except ValueError:
        log.warning("MODELFORGE_MAX_UPLOAD_MB=%r is not a number; using %g", raw, DEFAULT_MAX_UPLOAD_MB)
        return DEFAULT_MAX_UPLOAD_MB


def max_upload_bytes() -> int | None:
    """The upload limit in bytes, or None for no limit (what Gradio's ``max_file_size`` takes)."""
    mb = max_upload_mb()
    return int(mb * 2**20) if mb > 0 else None


def check_upload_size(path: str | Path) -> None:
    """Refuse an uploaded file over the limit, before it is copied or read.

    Raises:
        DataError: naming the file, its size and the limit, and how to raise it.
    """
    limit = max_upload_bytes()
    try:
        size = Path(path).stat().st_size
    except OSError:
        return  # a missing file is reported by the next step, with its own message
    if limit is not None and size > limit:
        name = Path(path).name
        raise DataError(
            f"{name} is {size / 2**20:.1f} MB, over this app's upload limit of {max_upload_mb():g} MB",
            "upload a smaller file (split it, or keep the rows you need), or start ModelForge with a "
            "higher MODELFORGE_MAX_UPLOAD_MB; `modelforge train --dataset FILE` reads files of any size")


@dataclass
class DatasetView:
    """Everything the tab shows for one validation (also the API's answer, via to_dict)."""

    dataset: str
    report: Any
    status: str
    preview: list[tuple[str, str | None]] = field(default_factory=list)
    histogram: Any = None  # pandas DataFrame: tokens, examples, fits
    bins: list[str] = field(default_factory=list)
    split: dict = field(default_factory=dict)
    split_text: str = ""
    tokenizer_note: str = ""
    max_length: int = 0

    def problem_rows(self) -> list[list[str]]:
        return problems_rows(self.report.problems[:PROBLEM_ROWS])

    def to_dict(self) -> dict:
        return {"ok": self.report.ok, "dataset": self.dataset, "report": self.report.to_dict(),
                "summary": self.report.summary(), "split": dict(self.split),
                "tokenizer_note": self.tokenizer_note}


# -- rendering ------------------------------------------------------------------------------------
def _render(tokenizer, messages: list[dict], generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def _count(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def preview_segments(examples: list[dict], lines: list, kind: str | None, tokenizer=None,
                     loss_on: str = "completion", rows: int = PREVIEW_ROWS, unit: str = "row",
                     samples: list | None = None) -> list:
    """The first examples as the trainer sees them, as (text, label) pairs for HighlightedText.

    Conversations and plain text come from ``samples`` (the report's rendered segments, see
    core.data.chat: the chat template with its tool schemas, tool calls and results and
    reasoning; every trained assistant turn "trained", the rest "masked"), the same data that
    ``modelforge validate --json`` prints. Without them (no tokenizer) the messages are listed
    with the assistant turns trained.
    """
    out: list[tuple[str, str | None]] = []
    by_index = {s["index"]: s for s in samples or []}
    for i, ex in enumerate(examples[:rows]):
        where = f"{unit} {lines[i]}" if i < len(lines) and lines[i] is not None else f"example {i + 1}"
        segs: list[tuple[str, str | None]] = []
        sample = by_index.get(i)
        if sample is not None and "segments" in sample:
            n_train = sample["trained_tokens"]
            where += f" · {sample['tokens'] - n_train} masked + {n_train} trained tokens"
            segs += [(s["text"], None if s.get("note") else "trained" if s["trained"] else "masked")
                     for s in sample["segments"]]
        elif sample is not None and "error" in sample:
            segs.append((f"(the chat template rejects this example: {sample['error'][:160]})", None))
        elif kind == "conversation" and "messages" in ex and tokenizer is None:
            for m in ex["messages"]:
                trained = m["role"] == "assistant" and m.get("train", True) is not False
                segs.append((f"{m['role']}: {_message_text(m)}\n",
                             "trained" if trained or loss_on == "all" else "masked"))
        elif kind == "conversation" and "messages" in ex:
            msgs = ex["messages"]
            if tokenizer is not None:
                try:
                    full = _render(tokenizer, msgs)
                    prompt = _render(tokenizer, msgs[:-1], generation_prompt=True) if len(msgs) > 1 else ""
                except Exception as exc:  # noqa: BLE001 - a template that rejects the roles
                    full, prompt = "", ""
                    segs.append((f"(the chat template rejects this example: {str(exc)[:120]})", None))
                if full:
                    if loss_on == "all" or not prompt or not full.startswith(prompt):
                        segs.append((full, "trained"))
                        n_mask, n_train = 0, _count(tokenizer, full)
                    else:
                        segs += [(prompt, "masked"), (full[len(prompt):], "trained")]
                        n_mask, n_train = _count(tokenizer, prompt), _count(tokenizer, full[len(prompt):])
                    where += f" · {n_mask} masked + {n_train} trained tokens"
            else:
                for m in msgs[:-1]:
                    segs.append((f"{m['role']}: {m['content']}\n", "masked" if loss_on != "all" else "trained"))
                segs.append((f"{msgs[-1]['role']}: {msgs[-1]['content']}", "trained"))
        elif kind == "text" and "text" in ex:
            segs.append((ex["text"], "trained"))
        elif kind == "summarization" and "document" in ex:
            segs += [(f"document: {ex['document']}\n", "masked"), (f"summary: {ex.get('summary', '')}", "trained")]
        elif kind == "qa" and "context" in ex:
            answers = ex.get("answers") or {}
            starts, texts = answers.get("answer_start") or [], answers.get("text") or []
            segs.append((f"question: {ex.get('question', '')}\ncontext: ", "masked"))
            ctx_text = ex["context"]
            if starts and texts and 0 <= starts[0] <= len(ctx_text):
                a, b = starts[0], starts[0] + len(texts[0])  # the span whose start/end are trained
                segs += [(ctx_text[:a], "masked"), (ctx_text[a:b], "trained"), (ctx_text[b:], "masked")]
            else:
                segs.append((ctx_text + "\n(no answer in the context)", "masked"))
        elif kind in ("preference", "kto") and "prompt" in ex:
            prompt = "\n".join(f"{m['role']}: {m['content']}" for m in ex["prompt"])
            segs.append((prompt + "\n", "masked"))
            for key in ("chosen", "rejected", "completion"):
                if key in ex:
                    text = "\n".join(m["content"] for m in ex[key])
                    label = "trained" if key != "rejected" else "rejected"
                    segs.append((f"{key}: {text}\n", label))
        else:
            import json

            segs.append((json.dumps(ex, ensure_ascii=False, indent=1)[:2000], None))
        out.append((f"── {where} ──\n", None))
        out += [(_clip(text), label) for text, label in segs]
        out.append(("\n\n", None))
    return out


def _message_text(m: dict) -> str:
    import json

    parts = [f"<think>{m['reasoning_content']}</think> "] if m.get("reasoning_content") else []
    parts.append(m.get("content", ""))
    parts += [" [calls " + json.dumps(c["function"], ensure_ascii=False) + "]" for c in m.get("tool_calls", ())]
    return "".join(parts)


def _clip(text: str, limit: int = PREVIEW_CHARS) -> str:
    """Long examples shortened for the preview (the token counts above stay exact)."""
    return text if len(text) <= limit else f"{text[:limit]} … [{len(text) - limit} more characters]"


def token_lengths(examples: list[dict], kind: str | None, tokenizer, sample: int = HIST_SAMPLE,
                  seed: int = 42) -> list[int]:
    """Token length of each example (a seeded sample of at most ``sample``), as training sees it."""
    idx = list(range(len(examples)))
    if len(idx) > sample:
        idx = sorted(random.Random(seed).sample(idx, sample))
    templ = bool(getattr(tokenizer, "chat_template", None))
    texts = []
    for i in idx:
        ex = examples[i]
        try:
            if kind == "conversation" and templ:
                texts.append(_render(tokenizer, ex["messages"]))
            elif kind == "conversation":
                texts.append("\n".join(m["content"] for m in ex["messages"]))
            elif kind == "text":
                texts.append(ex["text"])
            elif kind == "summarization":
                texts.append(ex["document"])
            elif kind == "qa":
                texts.append(ex["question"] + "\n" + ex["context"])
            elif kind == "preference" and templ:
                texts.append(_render(tokenizer, ex["prompt"] + ex["chosen"]))
            elif kind == "kto" and templ:
                texts.append(_render(tokenizer, ex["prompt"] + ex["completion"]))
        except Exception:  # noqa: BLE001 - the report already names rows the template rejects
            continue
    if not texts:
        return []
    return [len(t) for t in tokenizer(texts, add_special_tokens=not templ)["input_ids"]]


def histogram(lengths: list[int], max_length: int, bins: int = HIST_BINS):
    """(DataFrame[tokens, examples, fits], ordered bin labels) for a BarPlot."""
    import pandas as pd

    if not lengths:
        return pd.DataFrame({"tokens": [], "examples": [], "fits": []}), []
    top = max(max(lengths), max_length)
    width = max(1, -(-top // bins))
    counts: dict[tuple[int, bool], int] = {}
    for n in lengths:
        b = min(n // width, bins - 1)
        counts[(b, n > max_length)] = counts.get((b, n > max_length), 0) + 1
    rows, labels = [], []
    for b in range(bins):
        label = f"{b * width}–{(b + 1) * width - 1}"
        labels.append(label)
        # Empty bins too, so the axis always reaches max_length: the headroom shows.
        rows.append({"tokens": label, "examples": counts.get((b, False), 0), "fits": "fits max_length"})
        if counts.get((b, True)):
            rows.append({"tokens": label, "examples": counts[(b, True)], "fits": "truncated"})
    return pd.DataFrame(rows, columns=["tokens", "examples", "fits"]), labels


WARNINGS_SHOWN = 3  # beside "Ready, with warnings": the rest are in the report table


def status_markdown(dataset: str, report, tokenizer_note: str = "") -> str:
    L = report.lengths
    name = dataset_label(dataset)
    if report.ok and report.warnings:
        head = f"### {state_icon('warn')} Ready, with warnings — {name}"
    elif report.ok:
        head = f"### {state_icon('ok')} Ready to train — {name}"
    else:
        head = f"### {state_icon('error')} Not ready — {name}: {len(report.errors)} error(s) to fix"
    fmt = (f"**Format:** {report.format} → {report.kind}" if report.format else "**Format:** not detected")
    if "converted" in report.details:
        fmt += f" ({report.details['converted']})"
    parts = [head]
    if report.ok and report.warnings:  # the warnings next to the verdict, not only in the table below
        parts.append("\n".join(f"- {_short(w)}" for w in report.warnings[:WARNINGS_SHOWN])
                     + (f"\n- … {len(report.warnings) - WARNINGS_SHOWN} more in the report below"
                        if len(report.warnings) > WARNINGS_SHOWN else ""))
    parts.append(f"{fmt} · **Rows:** {report.rows} read, {report.usable_rows} usable{report.broken_text()}"
                 + (f" · **Warnings:** {len(report.warnings)}" if report.warnings else ""))
    if L:
        parts.append(f"**Tokens** ({'sample of ' + str(L['count']) if L.get('sampled') else L['count']} examples): "
                     f"min {L['min']}, mean {L['mean']}, p95 {L['p95']}, max {L['max']} · "
                     f"**{L['over_max_length']} over max_length {L['max_length']}** "
                     f"({L['truncated_share']:.1%} truncated, red in the chart)")
    if tokenizer_note:
        parts.append(f"*{tokenizer_note}*")
    if not report.ok and report.requirement and not report.details.get("broken_lines"):  # a format problem
        parts.append(f"<small>{report.requirement}</small>")
    return "\n\n".join(parts)


def _short(problem, limit: int = 160) -> str:
    """One problem in one line: where (the file's name only, never the upload folder) and what."""
    where = f"{problem.unit} {problem.line}: " if problem.line is not None else ""
    text = f"{where}{problem.message}"
    return text if len(text) <= limit else text[: limit - 1] + "…"


def refused_markdown(view: "DatasetView", in_use: str) -> str:
    """The one line shown when a file does not validate: it was not taken, why, and what trains instead."""
    first = view.report.errors[0] if view.report.errors else None
    why = _short(first) if first else f"fewer than {view.report.min_rows} usable rows"
    return f"### {state_icon('error')} {dataset_label(view.dataset)} was not used: {why}\n\n{in_use_line(in_use)}"


def in_use_line(in_use: str | None) -> str:
    return f"Still in use: **{dataset_label(in_use)}**." if in_use else "No dataset is in use yet."


def in_use_markdown(dataset: str | None) -> str:
    """The one place that says which file Start will train on."""
    if not dataset:
        return "**Dataset in use:** none yet: upload a file or pick a bundled example."
    return f"**Dataset in use:** {dataset_label(dataset)}"


# -- the handler ------------------------------------------------------------------------------------
def validate_dataset(ctx: AppContext, dataset: str, config: RunConfig, *, with_tokenizer: bool = True) -> DatasetView:
    """Validate ``dataset`` for ``config`` (task, strategy, format, column map, model, lengths).

    Args:
        ctx: the app context.
        dataset: a bundled example's name, an uploaded file's path, or a path/hub id.
        config: the run configuration (its dataset field is ignored; ``dataset`` is used).
        with_tokenizer: load the model's tokenizer for the preview and token lengths.

    Raises:
        ModelForgeError: no dataset, or a path the app may not read.
    """
    from core.checks import validate_file
    from core.data import held_out, split_train_eval

    path = resolve_dataset(dataset, ctx.restrict_paths)
    check_public(ctx, config.replace(dataset=path))  # a public app: no server folder as model, etc.
    tokenizer, note = None, ""
    if with_tokenizer:
        try:
            tokenizer = ctx.models.tokenizer(config.model, config.task)
        except ModelForgeError as exc:
            note = f"Token lengths and the template preview need the tokenizer of '{config.model}': {exc.message}"
    from core.data.chat import options_of

    try:
        render = options_of(config)
    except ModelForgeError as exc:  # an unknown chat_template: the model's own, and say so
        render, note = None, (note + " " if note else "") + exc.message
    report = validate_file(path, task=config.task, strategy=config.strategy,
                           dataset_format=config.dataset_format, column_map=config.column_map,
                           template_vars=config.template_vars, system_prompt=config.system_prompt,
                           tokenizer=tokenizer, max_length=config.max_length, seed=config.seed, render=render,
                           text_chunk_chars=config.text_chunk_chars)
    examples = report.examples[: config.max_samples] if config.max_samples else report.examples
    train, evaluation = split_train_eval(examples, config.validation_split, config.seed)
    split = {"train": len(train), "validation": len(evaluation), "usable": report.usable_rows,
             "validation_split": config.validation_split}
    choice = held_out(len(examples), config.validation_split)  # the rule the run applies, in its words
    split_text = (f"**Split:** {len(train)} training rows · {choice.text}"
                  + (f" (max_samples {config.max_samples})" if config.max_samples else ""))
    if report.usable_rows and not evaluation:
        split_text += " — no eval loss: set validation_split > 0 in Configure to get one."
    lengths = token_lengths(report.examples, report.kind, tokenizer, seed=config.seed) if tokenizer else []
    hist, bins = histogram(lengths, config.max_length)
    preview = preview_segments(report.examples, report.lines, report.kind, tokenizer, config.loss_on,
                               unit=report.unit, samples=report.samples)
    return DatasetView(dataset=path, report=report, status=status_markdown(path, report, note), preview=preview,
                       histogram=hist, bins=bins, split=split, split_text=split_text, tokenizer_note=note,
                       max_length=config.max_length)


def source_of(upload: Any, example: str | None, restrict: bool = False) -> str:
    """The dataset the tab points at: an upload (copied into the data folder) wins over an example.

    Raises:
        ModelForgeError: with ``restrict``, an "upload" that names a file outside Gradio's upload
            folder, the examples or the data folder (an API caller can send any path).
        DataError: the upload is larger than :func:`max_upload_mb` (nothing is copied).
    """
    path = file_path_of(upload)
    if path:
        resolved = resolve_dataset(path, restrict, from_upload=True)
        check_upload_size(resolved)
        return str(store_upload(resolved))
    return example or ""


# -- widgets --------------------------------------------------------------------------------------
@dataclass
class DatasetTab:
    upload: gr.File
    example: gr.Dropdown
    dataset_format: gr.Dropdown
    column_map: gr.Textbox
    validate: gr.Button
    status: gr.Markdown
    in_use: gr.Markdown  # "Dataset in use": the Configure form's dataset, what Start trains
    outputs: list  # what a validation updates, in view_outputs() order


def build(ctx: AppContext, initial: RunConfig) -> DatasetTab:
    gr.Markdown("Upload a data file (**.json, .jsonl, .csv, .parquet, .txt**) or pick a bundled example. "
                "A file is used for training only once it passes the check; until then the dataset in use "
                "stays as it was (at first the **identity** example, which teaches the demo model its name).",
                elem_classes=["mf-help"])
    in_use = gr.Markdown(in_use_markdown(initial.dataset), elem_id="dataset-in-use")
    with gr.Row():
        with gr.Column(scale=2):
            upload = gr.File(label="Upload a data file", file_types=[".json", ".jsonl", ".csv", ".parquet", ".txt"],
                             type="filepath", elem_id="upload-dataset", height=170)
        with gr.Column(scale=2):
            example = gr.Dropdown(choices=example_names(), value=DEFAULT_EXAMPLE, label="…or a bundled example",
                                  elem_id="dataset-example")
            with gr.Row():
                fmt = gr.Dropdown(choices=list(DATA_FORMATS), value=initial.dataset_format, label="Format",
                                  info="'auto' detects it from the columns", elem_id="dataset-format",
                                  min_width=180)
                # The placeholder has spaces: a long a=b,c=d word would wrap mid-word in a narrow box.
                cmap = gr.Textbox(value=mapping_to_text(initial.column_map), label="Column map",
                                  placeholder="e.g. question=instruction, answer=output",
                                  info="Rename columns before detection: old=new, old2=new2", elem_id="dataset-column-map",
                                  min_width=220)
            validate = gr.Button("Validate", variant="primary", elem_id="btn-validate")
    status = gr.Markdown("Press **Validate** (or upload a file) to check the data against the task, the "
                         "strategy and the model chosen in Configure.", elem_id="dataset-status")
    split = gr.Markdown("", elem_id="dataset-split")
    with gr.Row():
        with gr.Column(scale=3):
            preview = gr.HighlightedText(label="How the model sees the first rows, rendered by the chat "
                                               "template with tools, tool calls and reasoning (grey: context, "
                                               "not in the loss; green: trained)", color_map=COLOR_MAP, show_legend=True,
                                         combine_adjacent=False, elem_id="dataset-preview")
        with gr.Column(scale=2):
            hist = gr.BarPlot(value=None, x="tokens", y="examples", color="fits", label="Token lengths",
                              color_map={"fits max_length": "#2563eb", "truncated": "#dc2626"},
                              x_title="tokens per example", y_title="examples", elem_id="dataset-histogram",
                              # No legend: Gradio puts it under the chart, where the plot's height cut
                              # it off; the status's Tokens line says what the red bars are.
                              height=320, x_label_angle=-45, colors_in_legend=[])
    problems = gr.Dataframe(headers=PROBLEM_HEADERS, value=None, label="Validation report",
                            interactive=False, wrap=True, elem_id="dataset-problems",
                            column_widths=["24%", "44%", "32%"])
    return DatasetTab(upload=upload, example=example, dataset_format=fmt, column_map=cmap, validate=validate,
                      status=status, in_use=in_use, outputs=[status, split, preview, hist, problems])


def table_rows(rows: list[list[str]]) -> list[list[str]]:
    """problem_rows() for the report table: the severity goes in front of the place."""
    return [[f"{sev} · {where}" if where else sev, msg, fix] for sev, where, msg, fix in rows]


def _no_lengths():
    """An empty histogram. Not None: a plot set to None drops its chart while Gradio's resize
    observer still measures it ("Cannot read properties of null (reading 'offsetWidth')" in the
    page after a good file then a broken one)."""
    import pandas as pd

    return pd.DataFrame({"tokens": pd.Series([], dtype="str"), "examples": pd.Series([], dtype="int64"),
                         "fits": pd.Series([], dtype="str")})


def view_outputs(view: DatasetView) -> list:
    """Values for DatasetTab.outputs."""
    rows = table_rows(view.problem_rows()) or [["", "no problems found", ""]]
    # A one-line label, also on a phone: a second line pushed the axis out of the plot's height.
    # What the red bars are is said in the status's Tokens line (Gradio clips the x-axis title).
    hist = (gr.BarPlot(value=view.histogram, sort=view.bins, label="Token lengths", visible=True) if view.bins else
            gr.BarPlot(value=_no_lengths(), label="Token lengths (need the model's tokenizer)", visible=True))
    # The preview, chart and report start hidden (app/ui.py: no empty panels before a check) and
    # show with the first result.
    return [view.status, view.split_text, gr.HighlightedText(value=view.preview, visible=True), hist,
            gr.Dataframe(value=rows, visible=True)]


def run_name_for(name: str, old_dataset: str, new_dataset: str) -> Any:
    """The form's run name once ``new_dataset`` is in use: a name made from the old data file
    ("identity-demo" for identity.json) is emptied, so that the run is named after the new data
    when it starts (core.run.default_run_name); a name of the user's own is kept (gr.skip)."""
    old_stem = Path(old_dataset or "").stem
    if new_dataset != old_dataset and (not name or (old_stem and name.startswith(old_stem))):
        return ""
    return gr.skip()


def checking_outputs(upload: Any, example: str | None) -> list:
    """Values for DatasetTab.outputs while a file is being checked: the previous file's figures,
    chart and preview are cleared at once, so they never stand beside the new file's name."""
    path = file_path_of(upload)
    name = Path(path).name if path else (example or "")
    return [f"Checking **{name}**…" if name else "Checking…", "", None,
            gr.BarPlot(value=_no_lengths(), label="Token lengths"), None]


def wire(tab: DatasetTab, ctx: AppContext, config_inputs: list, config_by_name: dict, values_to_config) -> None:
    """Events that need the Configure form (task, model, max_length...): built after both tabs exist.

    A validation that passes also writes the chosen dataset, format and column map into the form,
    so that Start trains exactly what was checked. One that fails leaves the form (and so the
    dataset in use) as it was and says in one line which file failed and why.
    """
    targets = [config_by_name["dataset"], config_by_name["dataset_format"], config_by_name["column_map"],
               config_by_name["name"]]

    def _validate(upload, example, fmt, cmap, *vals):
        column_map = parse_mapping_text(cmap)
        config = values_to_config(vals).replace(dataset_format=fmt or "auto", column_map=column_map)
        in_use = config.dataset  # what Start trains until a new file passes
        uploaded = bool(file_path_of(upload))
        try:
            dataset = source_of(upload, example, ctx.restrict_paths)
            view = validate_dataset(ctx, dataset, config)
        except ModelForgeError as exc:  # too big, gone, not allowed here: nothing is taken either
            name = Path(file_path_of(upload) or example or "").name or "the file"
            text = exc.message.replace(str(file_path_of(upload) or ""), name)
            status = (f"### {state_icon('error')} {name} was not used: {text}"
                      + (f" — {exc.hint}" if exc.hint else "") + f"\n\n{in_use_line(in_use)}")
            return [status, "", None, gr.BarPlot(value=_no_lengths(), label="Token lengths"), None, *[gr.skip()] * 5]
        if view.tokenizer_note:
            warn(view.tokenizer_note)
        outputs = view_outputs(view)
        if not view.report.ok:
            outputs[0] = refused_markdown(view, in_use) + "\n\n" + view.status.split("\n\n", 1)[-1]
            return [*outputs, *[gr.skip()] * 5]
        # An upload in use: the example chooser shows nothing, so one file reads as chosen.
        chooser = gr.Dropdown(value=None) if uploaded else gr.skip()
        return [*outputs, view.dataset, fmt or "auto", mapping_to_text(column_map),
                run_name_for(config.name, in_use, view.dataset), chooser]

    def _pick_example(example, fmt, cmap, *vals):  # choosing an example drops the upload
        return [*_validate(None, example, fmt, cmap, *vals), None]

    inputs = [tab.upload, tab.example, tab.dataset_format, tab.column_map, *config_inputs]
    outputs = [*tab.outputs, *targets, tab.example]
    quick = dict(api_visibility="private", queue=False, show_progress="hidden")
    tab.validate.click(checking_outputs, [tab.upload, tab.example], tab.outputs, **quick).then(
        guard(_validate), inputs, outputs, api_visibility="private")
    tab.upload.upload(checking_outputs, [tab.upload, tab.example], tab.outputs, **quick).then(
        guard(_validate), inputs, outputs, api_visibility="private")
    tab.example.input(lambda example: checking_outputs(None, example), tab.example, tab.outputs, **quick).then(
        guard(_pick_example), inputs[1:], [*outputs, tab.upload], api_visibility="private")
    # The form's dataset is the one in use, whoever sets it (a check, a preset, a YAML file, a hand edit).
    config_by_name["dataset"].change(in_use_markdown, config_by_name["dataset"], tab.in_use, **quick)


def register_api(ctx: AppContext, default_config) -> None:
    def validate(file: FileData | None = None, dataset: str = "", config: dict | None = None) -> dict:
        """Validate a data file: upload it as `file` (gradio_client.handle_file) or name it in `dataset`
        (a bundled example such as 'identity.json'). `config`: run settings over the app defaults
        (task, strategy, model, dataset_format, column_map, max_length, validation_split...)."""
        from components.configure_tab import config_from_mapping

        cfg = config_from_mapping(config, default_config())
        source = source_of(file, dataset or (None if file else cfg.dataset), ctx.restrict_paths)
        return validate_dataset(ctx, source, cfg).to_dict()

    def examples() -> list[str]:
        """The bundled example data files (names usable as `dataset`)."""
        return example_names()

    gr.api(endpoint(validate), api_name="validate_dataset")
    gr.api(endpoint(examples), api_name="examples")
    log.debug("dataset API registered")
