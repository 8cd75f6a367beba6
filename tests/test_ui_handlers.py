"""The app's tab handlers as plain functions: no browser, no server, a temporary database.

Each tab module keeps its logic in functions that take an AppContext and return values; the
Gradio wiring only passes widget values in and out. These tests call those functions.
"""

from __future__ import annotations

import json
import shlex
import time
from pathlib import Path

import gradio as gr
import pytest

from components import configure_tab, dataset_tab, hardware_tab, models_tab, playground_tab, train_tab
from components.common import (AppContext, default_config, guard, load_preset, mapping_to_text, parse_mapping_text,
                               resolve_dataset)
from components.dataset_tab import source_of
from core.config import RunConfig
from core.errors import ConfigError, DataError, ModelForgeError, NotFoundError, OfflineError
from core.paths import EXAMPLES, home


@pytest.fixture()
def ctx(tmp_path):
    from core.jobs import JobManager
    from core.records import RecordStore

    store = RecordStore(f"sqlite:///{tmp_path / 'ui.db'}")
    return AppContext(store=store, jobs=JobManager(store))


def _add_model(ctx, path: Path, name: str = "m1") -> str:
    """A model record (and its completed run) pointing at ``path``; returns the model id."""
    from core.records import ModelRecord, new_id

    run = ctx.store.create_run(name, {})
    model_id = new_id("model")
    rec = ModelRecord(id=model_id, name=name, base_model="demo", task="text-generation", strategy="sft",
                      provider="huggingface", path=str(path), run_id=run.id, metrics={"train_loss": 1.5},
                      size_bytes=1234)
    ctx.store.finish_run(run.id, "completed", model=rec)
    return model_id


# -- dataset tab ---------------------------------------------------------------------------------------
def test_validate_identity_example(ctx, demo_model):
    view = dataset_tab.validate_dataset(ctx, "identity.json", default_config())
    r = view.report
    assert r.ok and r.format == "alpaca" and r.kind == "conversation"
    assert r.rows == r.usable_rows == 91
    assert view.split == {"train": 91, "validation": 0, "usable": 91, "validation_split": 0.0}
    labels = {label for _, label in view.preview}
    assert {"trained", "masked"} <= labels
    # the placeholder was filled in, and the answer is what is trained
    trained = "".join(t for t, label in view.preview if label == "trained")
    assert "Forge" in trained and "{{name}}" not in trained
    assert r.lengths["count"] == 91 and r.lengths["truncated_share"] == 0
    assert view.histogram["examples"].sum() == 91 and view.bins
    assert "Ready to train" in view.status
    assert view.to_dict()["ok"] is True


def test_dataset_preview_shows_tools_weights_and_every_trained_turn(ctx, tmp_path, demo_model):
    """The preview draws the report's segments: tool schemas and the weight-0 turn as context,
    the tool call and every weight-1 answer as trained (the same data as validate --json)."""
    tool = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
    row = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!", "weight": 0},
                        {"role": "user", "content": "Weather in Paris?"},
                        {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function", "function": {
                            "name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
                        {"role": "tool", "tool_call_id": "c1", "content": "21 C"},
                        {"role": "assistant", "content": "It is 21 C."}], "tools": [tool]}
    path = tmp_path / "tools.jsonl"
    path.write_text("\n".join(json.dumps(row) for _ in range(2)))
    config = default_config().replace(chat_template="qwen", validation_split=0.0)
    view = dataset_tab.validate_dataset(ctx, str(path), config)
    assert view.report.ok, view.report.summary()
    trained = [t for t, label in view.preview if label == "trained"]
    masked = "".join(t for t, label in view.preview if label == "masked")
    assert trained[:2] == ['<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>',
                           "It is 21 C.<|im_end|>"]
    assert "Hello!" in masked and "get_weather" in masked and "<tool_response>\n21 C" in masked
    assert view.report.to_dict()["samples"][0]["segments"][1]["trained"] is True


def test_malformed_upload_names_the_line(ctx, tmp_path):
    bad = tmp_path / "upload.jsonl"
    good = json.dumps({"instruction": "hi", "input": "", "output": "hello"})
    torn = '{"instruction": "oops", "output": '
    bad.write_text("\n".join([good, good.replace("hi", "hey"), torn, good.replace("hi", "yo")]))
    path = source_of(str(bad), None)
    assert Path(path).parent.parent.name == "uploads"  # copied into the data folder
    view = dataset_tab.validate_dataset(ctx, path, default_config(), with_tokenizer=False)
    assert not view.report.ok
    rows = view.problem_rows()
    assert any("line 3" in where for _, where, _, _ in rows), rows
    assert all(fix for sev, _, _, fix in rows if sev == "error")
    assert "Not ready" in view.status


def test_missing_column_names_field_and_fix(ctx, tmp_path):
    f = tmp_path / "qa.csv"
    f.write_text("question,reply\nwhat?,that\nwho?,me\n")
    view = dataset_tab.validate_dataset(ctx, str(f), default_config(), with_tokenizer=False)
    assert not view.report.ok
    # the column map fixes it, as the tab's override would
    cfg = default_config().replace(column_map=parse_mapping_text("question=instruction,reply=output"))
    assert dataset_tab.validate_dataset(ctx, str(f), cfg, with_tokenizer=False).report.ok


def test_dataset_paths_are_restricted_on_public_apps(tmp_path):
    assert resolve_dataset("identity.json") == str(EXAMPLES / "identity.json")
    outside = tmp_path / "secret.json"
    outside.write_text("[]")
    assert resolve_dataset(str(outside), restrict=False) == str(outside)
    with pytest.raises(ModelForgeError, match="does not read files"):
        resolve_dataset(str(outside), restrict=True)
    with pytest.raises(ModelForgeError):
        source_of({"path": "/etc/passwd"}, None, restrict=True)  # a forged API "upload"
    with pytest.raises(DataError):
        resolve_dataset("")


def test_histogram_marks_truncated():
    df, bins = dataset_tab.histogram([10, 20, 300, 400], max_length=256, bins=8)
    assert set(df["fits"]) == {"fits max_length", "truncated"}
    assert df[df.fits == "truncated"]["examples"].sum() == 2 and len(bins) == 8


# -- configure tab -------------------------------------------------------------------------------------
def test_form_round_trip():
    cfg = load_preset("identity-demo")
    values = configure_tab.config_to_values(cfg)
    assert len(values) == len(configure_tab.FIELDS)
    assert configure_tab.values_to_config(values) == cfg
    d = configure_tab.values_to_dict(values)
    d.update(lora_r=32.0, learning_rate=0.001, packing=True, column_map="q=instruction", template_vars="name=Ada")
    back = configure_tab.values_to_config(list(d.values()))
    assert back.lora_r == 32 and isinstance(back.lora_r, int)
    assert back.packing is True and back.column_map == {"q": "instruction"}
    assert back.template_vars == {"name": "Ada"}


def test_form_reports_every_bad_field_at_once():
    d = configure_tab.values_to_dict(configure_tab.config_to_values(RunConfig()))
    d.update(lora_r=1.5, max_steps=None, column_map="nonsense")
    with pytest.raises(ConfigError) as err:
        configure_tab.values_to_config(list(d.values()))
    fields = {p.field for p in err.value.problems}
    assert {"lora_r", "max_steps", "column_map"} <= fields


def test_form_widgets_follow_the_metadata():
    with gr.Blocks():
        widgets = {f.name: configure_tab.field_component(f, v)
                   for f, v in zip(configure_tab.FIELDS, configure_tab.config_to_values(RunConfig()))}
    assert isinstance(widgets["strategy"], gr.Dropdown) and "qlora" in [c[1] for c in widgets["strategy"].choices]
    assert isinstance(widgets["packing"], gr.Checkbox)
    assert isinstance(widgets["lora_r"], gr.Number)
    # Bounds are checked by core.config (the form marks the field), not by Gradio (issue 17: its
    # own refusal named no field and printed a traceback).
    assert widgets["lora_r"].minimum is None and widgets["lora_r"].precision == 0
    assert isinstance(widgets["validation_split"], gr.Number) and widgets["validation_split"].maximum is None
    assert isinstance(widgets["template_vars"], gr.Textbox)
    assert widgets["template_vars"].value == "name=Forge,author=ModelForge"


def test_presets():
    from components.common import preset_names

    assert "identity-demo" in preset_names()
    cfg = configure_tab.values_to_config(configure_tab.preset_values("identity-demo"))
    assert cfg.model == "demo" and cfg.max_steps == 300 and cfg.name == "identity-demo"
    assert Path(cfg.dataset).is_file() and Path(cfg.dataset).name == "identity.json"
    assert default_config() == cfg  # what the app opens with
    with pytest.raises(ConfigError, match="no preset"):
        configure_tab.preset_values("nope")


def test_command_text_runs_the_same_config():
    from app.main import build_parser, config_from_args

    cfg = load_preset("identity-demo").replace(template_vars={"name": "Ada Lovelace", "author": "Me"})
    text = configure_tab.command_text(cfg)
    assert text.startswith("modelforge train") and "--max-steps 300" in text
    assert "--template-vars 'name=Ada Lovelace,author=Me'" in text
    argv = shlex.split(text.replace(" \\\n", " "))[1:]
    assert config_from_args(build_parser().parse_args(argv)) == cfg


def test_yaml_save_and_load(tmp_path):
    cfg = load_preset("identity-demo").replace(lora_r=4)
    path = configure_tab.save_yaml_file(cfg)
    assert configure_tab.load_yaml_file(path) == cfg
    bad = tmp_path / "bad.yaml"
    bad.write_text("lora_r: [1\n")
    with pytest.raises(ConfigError):
        configure_tab.load_yaml_file(str(bad))


def test_preflight_lists_all_problems(ctx, tmp_path):
    cfg = default_config().replace(dataset=str(tmp_path / "missing.json"), learning_rate=5.0, strategy="nope")
    result = configure_tab.run_preflight(ctx, cfg, with_memory=False)
    assert not result.ok and {"dataset", "learning_rate", "strategy"} <= {p.field for p in result.problems}
    ok = configure_tab.run_preflight(ctx, default_config())
    assert ok.ok, ok.markdown()
    assert "Ready to train" in ok.markdown() or "memory" in ok.markdown().lower()


def test_the_memory_verdict_is_words_from_core_and_an_icon_drawn_by_the_form(ctx, monkeypatch):
    """core says the state ("ok"/"too big"/"unknown") and a plain sentence; only the form draws the
    icon (components.common.state_icon), so the CLI and the API get no emoji."""
    import re

    import core.hardware as hardware
    from core.checks import memory_check

    emoji = re.compile("[\u2600-\u27bf\U0001f300-\U0001faff\ufe0f]")
    fits = memory_check(default_config())
    if fits.estimate is None:
        pytest.skip(fits.note)
    assert fits.state == "ok" and fits.verdict.startswith("Fits: needs about")
    assert fits.markdown().startswith(fits.verdict) and not emoji.search(fits.markdown())
    shown = configure_tab.run_preflight(ctx, default_config())
    assert shown.memory_state == "ok" and shown.to_dict()["memory_state"] == "ok"
    assert not emoji.search(shown.markdown()) and not emoji.search(str(shown.to_dict()))
    assert "mf-icon-ok" in shown.markdown().split(fits.verdict)[0].split("Ready to train")[-1]  # drawn beside it

    real = hardware.probe()  # a machine with 4 GiB free: a 7B model in fp32 does not fit
    monkeypatch.setattr(hardware, "probe", lambda *a, **k: real.__class__(
        **{**real.__dict__, "ram_total_gib": 8.0, "ram_available_gib": 4.0}))
    big = default_config().replace(model="mistralai/Mistral-7B-Instruct-v0.3", precision="fp32", max_length=2048)
    too_big = memory_check(big)
    assert too_big.state == "too big" and too_big.verdict.startswith("Does not fit:")
    assert not emoji.search(too_big.markdown())
    refused = configure_tab.run_preflight(ctx, big)
    assert refused.memory_state == "too big" and "mf-icon-warn" in refused.markdown()
    assert not emoji.search(refused.markdown())


# -- train tab -----------------------------------------------------------------------------------------
def test_start_refuses_bad_config_and_records_nothing(ctx, tmp_path):
    cfg = default_config().replace(dataset=str(tmp_path / "missing.json"), lora_r=0)
    with pytest.raises(ConfigError) as err:
        train_tab.start_training(ctx, cfg)
    assert len(err.value.problems) >= 2
    assert ctx.store.list_runs() == []


def test_train_view_empty_state(ctx):
    assert train_tab.training_status(ctx)["status"] == "none"
    state, view, changed = train_tab.poll(ctx, None, force=True)
    assert view.status == "none" and "No run yet" in view.status_html()
    assert train_tab.poll(ctx, state)[1] is None  # nothing changed: nothing redrawn
    with pytest.raises(ModelForgeError, match="no run is training"):
        train_tab.stop_training(ctx)
    with pytest.raises(ModelForgeError):
        train_tab.resume_training(ctx, None)


def test_train_view_replays_events(ctx, tmp_path):
    from core.events import EventLog

    cfg = default_config()
    run = ctx.store.create_run("r", cfg.to_dict(), output_dir=str(tmp_path / "run"))
    log = EventLog(run.id)
    log.attach_file(tmp_path / "run" / "events.jsonl")
    log.emit("started", name="r")
    for step, loss in ((1, 3.0), (5, 2.0)):
        log.emit("step", step=step, total_steps=10, loss=loss, learning_rate=1e-3, tokens_per_second=100.0,
                 memory_mb=50.0, eta_s=9.0)
    log.emit("eval", step=5, total_steps=10, eval_loss=2.5, perplexity=12.2)
    ctx.store.update_run(run.id, status="running")
    view = train_tab.run_view(ctx, run.id)  # not in the job manager: replayed from the file
    assert view.step == 5 and view.total == 10 and view.loss == 2.0
    assert list(view.frame("loss")["loss"]) == [3.0, 2.0]
    assert list(view.frame("eval_loss")["eval_loss"]) == [2.5]
    assert "step <b>5</b>/10" in view.status_html()
    assert any("eval at step 5" in line for line in view.log)


def test_train_view_says_it_compiles_until_the_first_step(ctx, tmp_path):
    """A compiled run's first step holds a minute of compiling: the status card says so (the
    engine's own callback writes the event) until the first step is logged, so it is no hang."""
    import threading
    from types import SimpleNamespace

    from core.callback import EventCallback
    from core.events import EventLog

    run = ctx.store.create_run("r", default_config().to_dict(), output_dir=str(tmp_path / "run"))
    log = EventLog(run.id)
    log.attach_file(tmp_path / "run" / "events.jsonl")
    log.emit("started", name="r")
    ctx.store.update_run(run.id, status="running")
    callback = EventCallback(log, ctx.store, run.id, threading.Event())
    callback.compile_s = 70.4
    callback.on_train_begin(None, SimpleNamespace(global_step=0, max_steps=10, is_world_process_zero=True), None)
    view = train_tab.run_view(ctx, run.id)
    assert "compiling, ~70 s before the first step" in view.status_html()
    log.emit("step", step=1, total_steps=10, loss=3.0)
    assert "compiling" not in train_tab.run_view(ctx, run.id).status_html()


def test_train_view_after_a_resume_draws_the_whole_run(ctx, tmp_path):
    """A resumed run's live events start at the resume; the curve still starts at step 1, the
    steps after the checkpoint it resumed from are not drawn twice, and the summary figures mean
    what they say."""
    from core.events import EventLog

    cfg = default_config()
    run = ctx.store.create_run("r", cfg.to_dict(), output_dir=str(tmp_path / "run"))
    first = EventLog(run.id)
    first.attach_file(tmp_path / "run" / "events.jsonl")
    first.emit("queued", message="starting")
    first.emit("started", name="r")
    for step, loss in ((1, 4.0), (2, 3.0), (3, 2.5)):
        first.emit("step", step=step, total_steps=6, loss=loss)
    first.emit("checkpoint", step=2, total_steps=6)
    first.emit("cancelled", step=3, total_steps=6, message="stopped; a checkpoint was saved")
    ctx.store.finish_run(run.id, "cancelled", error="stopped by the user; resume to continue")
    stopped = train_tab.run_view(ctx, run.id)
    assert "<span class='mf-badge'>stopped</span>" in stopped.status_html()  # the badge and the text agree
    assert "mf-status-error" not in stopped.status_html()  # said once, in the text below
    assert "stopped at step 3" in stopped.done_markdown()

    time.sleep(0.01)  # the resumed session's events are newer than the file's
    live = EventLog(run.id)  # what JobManager.resume holds in memory
    ctx.store.mark_running(run.id, resumed=True)  # as the engine records a resume (attempt 2)
    live.emit("queued", message="starting")
    live.attach_file(tmp_path / "run" / "events.jsonl")
    live.emit("started", name="r")
    for step, loss in ((3, 2.4), (4, 2.0), (5, 1.5), (6, 1.0)):
        live.emit("step", step=step, total_steps=6, loss=loss)
    live.emit("finished", step=6, total_steps=6, model_id="m1", metrics={"train_loss": 0.3})
    ctx.store.update_run(run.id, status="completed")
    ctx.jobs._logs[run.id] = live
    try:
        view = train_tab.run_view(ctx, run.id)
    finally:
        ctx.jobs._logs.pop(run.id, None)
    assert view.n_events == len(live.events)  # the poller counts live events only
    assert list(view.frame("loss")["step"]) == [1, 2, 3, 4, 5, 6]
    assert list(view.frame("loss")["loss"]) == [4.0, 3.0, 2.4, 2.0, 1.5, 1.0]
    done = view.done_markdown()
    assert "last logged loss 1 " in done and "mean logged loss (whole run) 2.317" in done, done
    assert "0.3" not in done  # the last session's mean would read as below every logged loss
    # Replayed from the file alone (not in memory): the same curve.
    assert list(train_tab.run_view(ctx, run.id).frame("loss")["step"]) == [1, 2, 3, 4, 5, 6]


def test_stop_and_resume_buttons_follow_the_state(ctx):
    view = train_tab.RunView()
    out = dict(zip(train_tab.OUTPUT_NAMES, train_tab.view_outputs(ctx, train_tab.new_state(), view, False)))
    assert out["stop"].interactive is False and out["resume"].interactive is False
    assert out["eval_loss"].visible is False and out["eval_note"] == ""


def test_toasts_put_the_fix_on_its_own_line():
    from components.common import to_gradio_error
    from core.errors import ConfigError

    err = to_gradio_error(ConfigError("learning_rate: -1 is below 0", "use a positive number such as 3e-3"))
    assert err.message.startswith("learning_rate: -1 is below 0<br>")
    assert "<span class='mf-toast-fix'>Fix: use a positive number such as 3e-3</span>" in err.message
    assert "Hint:" not in err.message and err.duration <= 10


def test_the_browser_opens_only_on_a_desktop():
    from app.ui import should_open_browser

    assert should_open_browser({"DISPLAY": ":0"}, "linux")
    assert should_open_browser({"WAYLAND_DISPLAY": "wayland-0"}, "linux")
    assert not should_open_browser({}, "linux")  # a server, SSH without X forwarding
    assert should_open_browser({}, "darwin") and should_open_browser({}, "win32")
    assert not should_open_browser({"DISPLAY": ":0", "CI": "true"}, "linux")
    assert not should_open_browser({"SPACE_ID": "me/app"}, "darwin")
    assert not should_open_browser({"DISPLAY": ":0", "MODELFORGE_NO_BROWSER": "1"}, "linux")


# -- models tab ----------------------------------------------------------------------------------------
def test_models_empty_state(ctx):
    assert models_tab.models_table(ctx) == []
    table, empty, choice, body = models_tab.refresh_outputs(ctx)
    assert empty.visible is True and table.visible is False
    assert body.visible is False  # no details, Merge/Push/Delete before a model exists
    text, task = playground_tab.describe_model(ctx, None)
    assert "No model" in text and task == "text-generation"
    with pytest.raises(NotFoundError):
        next(playground_tab.chat_stream(ctx, "", "Who are you?", [], []))


def test_delete_refuses_paths_outside_home(ctx, tmp_path):
    outside = tmp_path / "not-home" / "model"
    outside.mkdir(parents=True)
    (outside / "adapter_config.json").write_text("{}")
    model_id = _add_model(ctx, outside)
    with pytest.raises(ModelForgeError, match="confirmation"):
        models_tab.delete_model(ctx, model_id, confirm=False)
    with pytest.raises(ModelForgeError, match="outside the ModelForge data folder"):
        models_tab.delete_model(ctx, model_id, confirm=True)
    assert outside.exists() and ctx.store.get_model(model_id)  # nothing deleted


def test_delete_inside_home(ctx):
    folder = home() / "runs" / "test-delete" / "model"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_model.safetensors").write_bytes(b"x")
    model_id = _add_model(ctx, folder, name="to-delete")
    assert models_tab.models_table(ctx)[0][0] == "to-delete"
    details = models_tab.model_details(ctx, model_id)
    assert details["model"]["name"] == "to-delete" and details["files_exist"]
    assert "Deleted" in models_tab.delete_model(ctx, model_id, confirm=True)
    assert not folder.exists() and models_tab.list_models(ctx) == []


def test_push_offline_is_a_clear_error(ctx):
    folder = home() / "runs" / "test-push" / "model"
    folder.mkdir(parents=True, exist_ok=True)
    model_id = _add_model(ctx, folder)
    with pytest.raises(ModelForgeError, match="token"):
        models_tab.push_to_hub(ctx, model_id, "me/model", "")
    with pytest.raises(OfflineError, match="offline") as err:
        models_tab.push_to_hub(ctx, model_id, "me/model", "hf_secret_token_123")
    assert "hf_secret_token_123" not in str(err.value)


# -- hardware tab --------------------------------------------------------------------------------------
def test_hardware_view_and_apply():
    view = hardware_tab.hardware_view("text-generation")
    assert "CPU" in view["markdown"] and view["report"]["cpu"]["logical_cores"] >= 1
    recs = view["_recs"]
    if not recs:
        pytest.skip(view["note"])
    cfg = hardware_tab.apply_recommendation(recs, recs[0].model_id, "text-generation", default_config())
    assert cfg.model == recs[0].model_id and cfg.batch_size == recs[0].batch_size
    with pytest.raises(ModelForgeError):
        hardware_tab.apply_recommendation(recs, "nope", "text-generation", default_config())


# -- shared ---------------------------------------------------------------------------------------------
def test_guard_shows_engine_message_never_a_traceback():
    def user_error():
        raise ConfigError("lora_r is wrong", "use 8")

    def bug():
        raise KeyError("internal detail")

    with pytest.raises(gr.Error) as err:
        guard(user_error)()
    assert "lora_r is wrong" in err.value.message and "use 8" in err.value.message
    with pytest.raises(gr.Error) as err:
        guard(bug)()
    assert err.value.message.startswith("Unexpected error: KeyError") and "Traceback" not in err.value.message

    def gen():
        yield 1
        raise DataError("bad row")

    with pytest.raises(gr.Error, match="bad row"):
        list(guard(gen)())


def test_mapping_text():
    assert mapping_to_text({"a": "b", "c": "d"}) == "a=b,c=d"
    assert parse_mapping_text("a=b, c=d") == {"a": "b", "c": "d"}
    with pytest.raises(ConfigError, match="column_map"):
        parse_mapping_text("oops")


def test_auth_policy():
    from app.ui import resolve_auth

    assert resolve_auth(env={}) is None
    assert resolve_auth(auth="ada:pw", env={}) == ("ada", "pw")
    assert resolve_auth(share=True, env={"MODELFORGE_AUTH": "u:p"}) == ("u", "p")
    assert resolve_auth(share=True, no_auth=True, env={}) is None
    with pytest.raises(ModelForgeError, match="share link without a login"):
        resolve_auth(share=True, env={})
    with pytest.raises(ModelForgeError, match="Space without a login"):
        resolve_auth(env={"SPACE_ID": "me/app"})
    with pytest.raises(ModelForgeError, match="USER:PASS"):
        resolve_auth(auth="nopassword", env={})


def test_playground_helpers():
    hist = [{"role": "user", "content": [{"type": "text", "text": "hi"}]}, {"role": "assistant", "content": "yo"}]
    assert playground_tab.as_messages(hist) == [{"role": "user", "content": "hi"},
                                                {"role": "assistant", "content": "yo"}]
    assert playground_tab.highlight("the cat sat", 4, 7) == [("the ", None), ("cat", "answer"), (" sat", None)]
    assert playground_tab.highlight("abc", -1, -1) == [("abc", None)]


def test_app_import_stays_light():
    import subprocess
    import sys

    code = ("import sys; import app.ui; heavy=[m for m in ('torch','transformers','trl','peft') if m in sys.modules];"
            "print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "", f"imported at app import time: {out.stdout}"
