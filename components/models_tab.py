"""Models tab: the trained models, their details, and what can be done with them.

Lists the model records; shows one model's config, metrics and loss curve (from the metric
points the run stored); deletes a model (record and files, after a confirmation, and only files
inside the data folder); merges a LoRA adapter into its base and offers the result as a zip; and
pushes a model to the Hugging Face Hub with a token typed for that one upload (never stored,
never logged), with its newest GGUF export and Modelfile when there is one; exports a model to
GGUF / Ollama or a merged folder (core.export), showing the verification table.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr

from components.common import AppContext, endpoint, fmt_bytes, guard, icon, info
from core.errors import ModelForgeError, NotFoundError, OfflineError
from core.paths import home, inside_home

TABLE_HEADERS = ["name", "id", "base model", "task", "strategy", "provider", "created", "metrics", "size"]
EMPTY_TEXT = "No models yet: train one on the **Train** tab (the identity demo is preselected)."
# Column widths in pixels, wide enough for each column's usual content ("445.1 KB" was cut to
# "445.1 KE", "strategy" wrapped): on a phone the table scrolls sideways instead of squeezing
# every column to a letter.
COLUMN_WIDTHS = ["140px", "215px", "100px", "140px", "85px", "120px", "110px", "170px", "95px"]


def exports_dir() -> Path:
    p = home() / "exports"
    p.mkdir(parents=True, exist_ok=True)
    return p


def _metrics_text(metrics: dict) -> str:
    return ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()
                     if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "train_runtime_s")


def rounded(metrics: dict | None) -> dict:
    """Metrics with numbers to 4 significant digits, for the page (2.810632022221883 -> 2.811)."""
    return {k: (float(f"{v:.4g}") if isinstance(v, float) else v) for k, v in (metrics or {}).items()}


def models_table(ctx: AppContext) -> list[list[Any]]:
    """One row per model record, newest first (empty list: none)."""
    return [[m.name, m.id, m.base_model, m.task, m.strategy, m.provider, f"{m.created_at:%Y-%m-%d %H:%M}",
             _metrics_text(m.metrics), fmt_bytes(m.size_bytes)] for m in ctx.store.list_models()]


def model_choices(ctx: AppContext) -> list[tuple[str, str]]:
    return [(f"{m.name} · {m.id}", m.id) for m in ctx.store.list_models()]


def list_models(ctx: AppContext) -> list[dict]:
    from core.records import record_to_dict  # SQLAlchemy is not imported at start-up (issue 18)

    return [record_to_dict(m) for m in ctx.store.list_models()]


def model_details(ctx: AppContext, model_id: str) -> dict:
    """Record, run config, metrics and the loss curve of a model.

    Raises:
        NotFoundError: no such model.
    """
    from core.records import record_to_dict

    if not model_id:
        raise NotFoundError("no model chosen", "pick one in the list")
    rec = ctx.store.get_model(model_id)
    config: dict = {}
    try:
        config = ctx.store.get_run(rec.run_id).config
    except NotFoundError:
        card = Path(rec.path) / "modelforge.json"
        if card.is_file():
            config = json.loads(card.read_text(encoding="utf-8")).get("config", {})
    curves: dict[str, list] = {}
    for p in ctx.store.metrics(rec.run_id):
        curves.setdefault(p.name, []).append((p.step, p.value))
    return {"model": record_to_dict(rec), "config": config, "metrics": rec.metrics, "curves": curves,
            "files_exist": Path(rec.path).exists()}


def loss_frame(curves: dict):
    import pandas as pd

    rows = [{"step": s, "value": v, "metric": "train loss"} for s, v in curves.get("loss", [])]
    rows += [{"step": s, "value": v, "metric": "eval loss"} for s, v in curves.get("eval_loss", [])]
    return pd.DataFrame({"step": pd.Series([r["step"] for r in rows], dtype="int64"),
                         "value": pd.Series([r["value"] for r in rows], dtype="float64"),
                         "metric": pd.Series([r["metric"] for r in rows], dtype="str")})


def details_markdown(d: dict) -> str:
    m = d["model"]
    lines = [f"### {m['name']}", f"`{m['id']}` · base **{m['base_model']}** · {m['task']} · {m['strategy']} · "
             f"{m['provider']} · {fmt_bytes(m['size_bytes'])}",
             f"Folder: `{m['path']}`" + ("" if d["files_exist"] else " (**missing**)"),
             f"Metrics: {_metrics_text(m['metrics']) or '-'}"]
    return "\n\n".join(lines)


def delete_model(ctx: AppContext, model_id: str, confirm: bool) -> str:
    """Delete a model record and its files (adapter folder and exports), inside the data folder only.

    Raises:
        ModelForgeError: not confirmed, or the files lie outside the data folder (then nothing,
            not even the record, is deleted).
    """
    if not model_id:
        raise NotFoundError("no model chosen", "pick one in the list")
    if not confirm:
        raise ModelForgeError("deleting needs a confirmation", "tick 'Yes, delete it' and press Delete again")
    rec = ctx.store.get_model(model_id)
    # Both checked before anything is deleted. Depth 2: a record whose path is the data folder or
    # one of its main folders (or whose id is "..") must not take everything with it.
    folder = inside_home(rec.path, min_depth=2)
    export = inside_home(exports_dir() / rec.id, min_depth=2)
    # The record goes first, in one transaction: of two browsers deleting the same model at
    # once, exactly one gets past this line (the other is told it is gone) and removes the files.
    ctx.store.delete_model(rec.id)
    ctx.models.evict(rec.id)
    for path in (folder, export):
        if path.exists():
            shutil.rmtree(path, onerror=_ignore_missing)
    return f"Deleted {rec.name} ({rec.id}) and its files."


def _ignore_missing(func, path, exc_info) -> None:
    """rmtree's error handler: a file someone else removed meanwhile is fine; anything else is not."""
    if not issubclass(exc_info[0], FileNotFoundError):
        raise exc_info[1]


def merge_model(ctx: AppContext, model_id: str) -> str:
    """Merge the LoRA adapter into its base and zip the full model; return the zip's path.

    Raises:
        ModelForgeError: no such model, files outside the data folder, or not an adapter.
    """
    from core.inference import load_model

    if not model_id:
        raise NotFoundError("no model chosen", "pick one in the list")
    rec = ctx.store.get_model(model_id)
    src = inside_home(rec.path)
    if not (src / "adapter_config.json").exists():
        raise ModelForgeError(f"{rec.name} is not a LoRA adapter (nothing to merge)",
                              "its folder is already a full model")
    # The export folder is rebuilt (rmtree) each time: it must be this model's own folder under
    # exports/, whatever the record's id and name hold (a name is a file name here, never a path).
    safe = "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in rec.name).strip("._")[:64] or "model"
    out = inside_home(exports_dir() / rec.id / f"{safe}-merged", min_depth=3)
    if out.parent.parent != exports_dir().resolve():
        raise ModelForgeError(f"refusing to export model '{rec.id}': its id is not a plain name",
                              "re-create the record, or merge the folder yourself")
    zip_base = out.parent / f"{safe}-merged"
    if out.exists():
        shutil.rmtree(out)
    lm = load_model(str(src))  # a fresh copy: merging changes the weights of the model it is given
    merged = lm.model.merge_and_unload()
    merged.save_pretrained(str(out))
    lm.tokenizer.save_pretrained(str(out))
    card = dict(lm.card, merged=True)
    (out / "modelforge.json").write_text(json.dumps(card, indent=2, default=str), encoding="utf-8")
    return shutil.make_archive(str(zip_base), "zip", root_dir=str(out))


def push_to_hub(ctx: AppContext, model_id: str, repo_id: str, token: str, private: bool = True) -> str:
    """Upload a model folder to the Hub. The token is used for this call only: never stored or logged.

    Raises:
        OfflineError: the Hub cannot be reached. ModelForgeError: missing input or a refused upload
            (the token never appears in the message).
    """
    from core.models import hub_reachable

    if not model_id:
        raise NotFoundError("no model chosen", "pick one in the list")
    if not (repo_id or "").strip() or "/" not in repo_id:
        raise ModelForgeError("give the repository as user/name", "e.g. your-name/identity-demo")
    if not (token or "").strip():
        raise ModelForgeError("paste a Hugging Face token with write access",
                              "create one at huggingface.co/settings/tokens; it is used for this upload only")
    rec = ctx.store.get_model(model_id)
    folder = inside_home(rec.path)
    if os.environ.get("HF_HUB_OFFLINE") == "1" or not hub_reachable():
        raise OfflineError("cannot push: the Hugging Face Hub is not reachable from this machine (offline)",
                           "connect to the network and try again, or Merge & download and upload it yourself")
    try:
        from huggingface_hub import HfApi

        api = HfApi(token=token.strip())
        api.create_repo(repo_id.strip(), private=bool(private), exist_ok=True)
        url = api.upload_folder(folder_path=str(folder), repo_id=repo_id.strip(),
                                commit_message=f"Upload {rec.name} from ModelForge")
        gguf = newest_gguf_export(rec.id)
        if gguf is not None:  # the GGUF and its Modelfile, under gguf/ in the same repository
            url = api.upload_folder(folder_path=str(gguf), repo_id=repo_id.strip(), path_in_repo="gguf",
                                    allow_patterns=["*.gguf", "Modelfile", "export.json"],
                                    commit_message=f"Upload the GGUF export of {rec.name} from ModelForge")
    except Exception as exc:  # noqa: BLE001 - say why, without the token
        text = (str(exc).splitlines()[0] if str(exc) else type(exc).__name__).replace(token.strip(), "***")
        raise ModelForgeError(f"push to {repo_id} failed: {text[:300]}",
                              "check the token's write access and the repository name") from None
    with_gguf = f" with its GGUF export ({gguf.name}) under gguf/" if gguf is not None else ""
    return (f"Pushed {rec.name}{with_gguf} to https://huggingface.co/{repo_id.strip()} "
            f"({getattr(url, 'commit_url', url)})")


def newest_gguf_export(model_id: str) -> Path | None:
    """The folder of the model's newest GGUF export (gguf or lora-gguf), if any."""
    found = []
    for meta in (exports_dir() / model_id).glob("*/export.json"):
        try:
            fmt = json.loads(meta.read_text(encoding="utf-8")).get("format")
        except (OSError, ValueError):
            continue
        if fmt in ("gguf", "lora-gguf"):
            found.append((meta.stat().st_mtime, meta.parent))
    return max(found)[1] if found else None


VERIFY_HEADERS = ["prompt", "transformers", "llama.cpp", "same text", "token agreement"]


def export_model_ui(ctx: AppContext, model_id: str, fmt: str = "gguf", quantization: str = "f16",
                    progress=None) -> tuple[list[str], str, list[list[Any]]]:
    """Export a model (core.export) for the page: the files to download, a summary and the
    verification table (one row per prompt: both answers, same text, token agreement).

    Raises:
        ModelForgeError: refused (unsupported model, missing export extra, disk), with why.
    """
    from core.export import export_model

    if not model_id:
        raise NotFoundError("no model chosen", "pick one in the list")
    say = (lambda f, m: progress(f, desc=m)) if progress is not None else None
    r = export_model(ctx.store, model_id, fmt, quantization, progress=say)
    files = [f for f in r.files if Path(f).is_file()]
    if r.format == "merged":  # a folder: offered as one zip
        files = [shutil.make_archive(r.folder, "zip", root_dir=r.folder)]
    v = r.verification
    rows = [[row["prompt"], row["transformers"], row["llama_cpp"], "yes" if row["same_text"] else "no",
             row["token_agreement"]] for row in v.get("rows", [])]
    what = r.format + (f" {r.quantization}" if r.quantization else "")
    lines = [f"{icon('ok')} **Exported {what}** · {fmt_bytes(r.bytes)} · {r.seconds:.0f} s · `{r.path}`"]
    if v.get("rows"):
        lines.append(f"Verification ({v.get('runtime')}): **{v['same_text']}/{v['prompts']}** answers identical to "
                     f"transformers, mean token agreement **{v['mean_token_agreement']:.2f}**.")
    if r.modelfile:
        lines.append(f"Ollama: download the files into one folder, then `ollama create {Path(r.path).stem} -f Modelfile`.")
    for w in r.warnings:
        lines.append(f"{icon('warning')} **Warning:** {w}")
    return files, "\n\n".join(lines), rows


# -- widgets --------------------------------------------------------------------------------------
@dataclass
class ModelsTab:
    refresh: gr.Button
    table: gr.Dataframe
    choice: gr.Dropdown
    empty: gr.Markdown
    outputs: list  # refresh outputs: table, empty, choice, body


def refresh_outputs(ctx: AppContext, selected: str | None = None) -> list:
    rows = models_table(ctx)
    choices = model_choices(ctx)
    ids = [c[1] for c in choices]
    value = selected if selected in ids else (ids[0] if ids else None)
    # Before the first model: one line, and no panels or Merge/Push/Delete controls (body hidden).
    return [gr.Dataframe(value=rows or None, visible=bool(rows)), gr.Markdown(visible=not rows),
            gr.Dropdown(choices=choices, value=value), gr.Column(visible=bool(rows))]


def build(ctx: AppContext) -> ModelsTab:
    with gr.Row():
        gr.Markdown("Your trained models. Pick one for its details, to export it (GGUF, Ollama), to merge it "
                    "into a full model, to push it to the Hub, or to delete it.", elem_classes=["mf-help"])
        refresh = gr.Button("Refresh", elem_id="btn-models-refresh", scale=0, min_width=120)
    empty = gr.Markdown(EMPTY_TEXT, elem_id="models-empty", visible=True)
    table = gr.Dataframe(headers=TABLE_HEADERS, value=None, interactive=False, wrap=True, visible=False,
                         elem_id="models-table", label="Models", column_widths=COLUMN_WIDTHS)
    with gr.Column(visible=False, elem_id="models-body") as body:
        # allow_custom_value: API callers send ids this session's (empty) choice list has not seen.
        choice = gr.Dropdown(choices=[], label="Model", elem_id="models-choice", allow_custom_value=True)
        with gr.Row():
            with gr.Column(scale=3):
                summary = gr.Markdown("", elem_id="models-summary")
                curve = gr.LinePlot(value=None, x="step", y="value", color="metric", title="Loss", height=240,
                                    elem_id="models-loss", color_map={"train loss": "#2563eb", "eval loss": "#d97706"},
                                    x_label_angle=-40)
            with gr.Column(scale=2):
                with gr.Accordion("Run configuration", open=False):
                    config = gr.Code(language="yaml", interactive=False, elem_id="models-config")
                metrics = gr.JSON(label="Metrics", elem_id="models-metrics")
        with gr.Row():
            with gr.Column():
                with gr.Group():
                    gr.Markdown("**Merge & download** — the adapter merged into its base, as a full model (zip).")
                    merge = gr.Button("Merge & download", elem_id="btn-merge")
                    # Shown once there is a merged file (an empty box was large and said nothing).
                merged_file = gr.File(label="Merged model", interactive=False, elem_id="models-merged-file",
                                      visible=False)
            with gr.Column():
                with gr.Group():
                    gr.Markdown("**Push to the Hugging Face Hub** — with the newest GGUF export and its Modelfile, "
                                "if any. The token is used for this upload only; it is never stored or logged.")
                    repo = gr.Textbox(label="Repository", placeholder="your-name/identity-demo", elem_id="hub-repo")
                    token = gr.Textbox(label="Token (write access)", type="password", elem_id="hub-token")
                    private = gr.Checkbox(value=True, label="Private repository", elem_id="hub-private")
                    push = gr.Button("Push to Hub", elem_id="btn-push")
            with gr.Column():
                with gr.Group():
                    gr.Markdown("**Delete** — the record and its files (inside the data folder only).")
                    confirm = gr.Checkbox(value=False, label="Yes, delete it", elem_id="delete-confirm")
                    delete = gr.Button("Delete model", variant="stop", elem_id="btn-delete")
        with gr.Group():
            gr.Markdown("**Export to GGUF / Ollama** — converted with llama.cpp's own tools, with an Ollama Modelfile, "
                        "and verified: llama.cpp answers the model's prompts and is compared with transformers.")
            with gr.Row(elem_id="export-row"):  # laid out in assets/style.css (no grey block beside Export)
                export_format = gr.Radio(["gguf", "lora-gguf", "merged"], value="gguf", label="Format",
                                         info="gguf: one file · lora-gguf: base + adapter · merged: transformers folder",
                                         elem_id="export-format")
                export_quant = gr.Radio(["f16", "q8_0", "q4_k_m"], value="f16", label="Quantization",
                                        info="f16: exact · q8_0: half the size · q4_k_m: a quarter, some drift",
                                        elem_id="export-quant")
                export_btn = gr.Button("Export", variant="primary", elem_id="btn-export", scale=0, min_width=140)
            export_summary = gr.Markdown("", elem_id="export-summary")
            # The files and the verification table show once an export made them (no empty boxes before).
            export_files = gr.File(label="Exported files", file_count="multiple", interactive=False,
                                   elem_id="export-files", visible=False)
            export_table = gr.Dataframe(headers=VERIFY_HEADERS, value=None, interactive=False, wrap=True,
                                        label="Verification: llama.cpp vs transformers", elem_id="export-verification",
                                        visible=False)
        message = gr.Markdown("", elem_id="models-message")
        from components import evaluation_panel  # issue 16: base vs tuned, rows, predictions download

        evaluation_panel.build(ctx, choice)
        from components import runs_panel  # issue 16: several runs' curves, config diff and metrics

        runs_panel.build(ctx)

    outputs = [table, empty, choice, body]

    def _details(model_id):
        if not model_id:
            return "", None, "", None
        d = model_details(ctx, model_id)
        import yaml

        return (details_markdown(d), loss_frame(d["curves"]),
                yaml.safe_dump(d["config"], sort_keys=False, allow_unicode=True), rounded(d["metrics"]))

    def _select_row(evt: gr.SelectData, rows):
        try:
            row = evt.index[0]
            return rows.iloc[row, 1] if hasattr(rows, "iloc") else rows[row][1]
        except (IndexError, TypeError, KeyError):
            return gr.skip()

    def _delete(model_id, ok):
        text = delete_model(ctx, model_id, ok)
        info(text)
        return [*refresh_outputs(ctx), f"{icon('trash')} {text}", False]

    def _merge(model_id):
        path = merge_model(ctx, model_id)
        return path, f"Merged into `{Path(path).name}`: download it above."

    def _export(model_id, fmt, quant, progress=gr.Progress()):
        files, text, rows = export_model_ui(ctx, model_id, fmt, quant, progress=progress)
        return files, text, rows or None

    def _push(model_id, repo_id, tok, priv):
        text = push_to_hub(ctx, model_id, repo_id, tok, priv)
        return f"{icon('ok')} {text}", ""  # clears the token box

    details_out = [summary, curve, config, metrics]
    # show_progress hidden: a failed event marks its outputs with a red "Error" pill, and these
    # outputs hold the whole panel (the toast says what went wrong).
    refresh.click(guard(lambda sel: refresh_outputs(ctx, sel)), choice, outputs, api_visibility="private",
                  show_progress="hidden")
    choice.change(guard(_details), choice, details_out, api_visibility="private")
    table.select(_select_row, table, choice, api_visibility="private")
    delete.click(guard(_delete), [choice, confirm], [*outputs, message, confirm], api_visibility="private",
                 show_progress="hidden")
    # The API endpoints answer plain values; the boxes are shown by a private step after success.
    merge.click(guard(_merge), choice, [merged_file, message], api_name="merge_model").success(
        lambda: gr.File(visible=True), None, merged_file, api_visibility="private", show_progress="hidden")
    export_btn.click(guard(_export), [choice, export_format, export_quant], [export_files, export_summary, export_table],
                     api_name="export_model").success(
        lambda files, rows: (gr.File(visible=bool(files)), gr.Dataframe(visible=rows is not None and len(rows) > 0)),
        [export_files, export_table], [export_files, export_table], api_visibility="private", show_progress="hidden")
    # .then runs after an error too: the token leaves the page whatever happened.
    push.click(guard(_push), [choice, repo, token, private], [message, token], api_visibility="private").then(
        lambda: "", None, token, api_visibility="private", show_progress="hidden")
    return ModelsTab(refresh=refresh, table=table, choice=choice, empty=empty, outputs=outputs)


def register_api(ctx: AppContext) -> None:
    def models() -> list[dict]:
        """Every trained model record, newest first."""
        return list_models(ctx)

    def details(model_id: str) -> dict:
        """A model's record, run config, metrics and metric curves."""
        return model_details(ctx, model_id)

    def delete(model_id: str, confirm: bool = False) -> dict:
        """Delete a model and its files; `confirm` must be true."""
        return {"message": delete_model(ctx, model_id, confirm)}

    def push(model_id: str, repo_id: str, token: str, private: bool = True) -> dict:
        """Push a model folder to the Hugging Face Hub (the token is used once, never stored)."""
        return {"message": push_to_hub(ctx, model_id, repo_id, token, private)}

    gr.api(endpoint(models), api_name="list_models", concurrency_limit=None)
    gr.api(endpoint(details), api_name="model_details", concurrency_limit=None)
    gr.api(endpoint(delete), api_name="delete_model")
    gr.api(endpoint(push), api_name="push_to_hub")
