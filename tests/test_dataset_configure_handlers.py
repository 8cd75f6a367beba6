"""Issue 17 (Dataset, Hardware, Configure, `train --help`) as plain functions: no browser.

A data file with one broken line is counted and named with its real column; a file that fails the
check is reported in one short line without the upload folder; the Configure form reports a bad
field once, by name, through ModelForge's own checks; the demo's recommendation is the demo preset;
runs are named after their data; `train --help` reads like a manual.
"""

from __future__ import annotations

import json

import gradio as gr
import pytest

from components import configure_tab, dataset_tab, hardware_tab
from components.common import AppContext, default_config, load_preset, run_label
from core.checks import validate_file
from core.config import RunConfig


def _alpaca_lines(n: int) -> list[str]:
    return [json.dumps({"instruction": f"Say {i}", "input": "", "output": f"{i}"}) for i in range(n)]


@pytest.fixture()
def broken_jsonl(tmp_path):
    """13 lines, the 5th cut short (no closing brace): (path, the column where it breaks)."""
    lines = _alpaca_lines(13)
    lines[4] = lines[4][:-1]
    path = tmp_path / "uploads" / "0123abcd" / "broken.jsonl"
    path.parent.mkdir(parents=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path, len(lines[4]) + 1


# -- data with a broken line ------------------------------------------------------------------------
def test_broken_line_counts_good_rows_and_names_its_real_column(broken_jsonl):
    path, column = broken_jsonl
    report = validate_file(path)
    assert not report.ok  # never trained as it is
    assert report.rows == 12 and report.usable_rows == 12
    assert report.format == "alpaca"  # detected from the good rows
    broken = [p for p in report.errors if p.line is not None]
    assert len(broken) == 1 and broken[0].line == 5
    assert f"column {column}, the end of the line" in broken[0].message, broken[0].message
    assert "12 read, 12 usable (+ 1 broken line, first: line 5)" in report.summary()


def test_a_broken_line_in_the_middle_names_that_column(tmp_path):
    lines = _alpaca_lines(4)
    lines[1] = '{"instruction": "x", "input": , "output": "y"}'
    path = tmp_path / "mid.jsonl"
    path.write_text("\n".join(lines), encoding="utf-8")
    column = lines[1].index(": ,") + 3  # 1-based: the comma where the value is missing
    problem = next(p for p in validate_file(path).errors if p.line == 2)
    assert problem.message.endswith(f"(column {column})"), (problem.message, column)


def test_refused_line_is_short_and_shows_no_upload_folder(broken_jsonl):
    path, column = broken_jsonl
    view = dataset_tab.validate_dataset(AppContext(store=None, jobs=None), str(path), default_config(),
                                        with_tokenizer=False)
    text = dataset_tab.refused_markdown(view, "/somewhere/assets/examples/identity.json")
    head = text.splitlines()[0]
    assert "broken.jsonl was not used: line 5: invalid JSON" in head and f"column {column}" in head
    assert len(head) < 400  # one short line (with its inline icon)
    assert "0123abcd" not in text and "uploads" not in text
    assert "Still in use: **identity.json" in text


def test_ready_with_warnings_puts_them_beside_the_verdict(tmp_path):
    rows = [{"instruction": "Say hi", "input": "", "output": "hi"}] * 3 + [
        {"instruction": f"Say {i}", "input": "", "output": str(i)} for i in range(5)]
    path = tmp_path / "dupes.json"
    path.write_text(json.dumps(rows), encoding="utf-8")
    report = validate_file(path)
    assert report.ok and report.warnings
    text = dataset_tab.status_markdown(str(path), report)
    assert "Ready, with warnings" in text and "Ready to train" not in text
    assert report.warnings[0].message[:40] in text


def test_run_name_follows_the_data():
    identity, alpaca = "/x/identity.json", "/up/alpaca_en_demo.json"
    assert dataset_tab.run_name_for("identity-demo", identity, alpaca) == ""  # made from the old file
    assert dataset_tab.run_name_for("", identity, alpaca) == ""
    assert isinstance(dataset_tab.run_name_for("my-run", identity, alpaca), type(gr.skip()))  # the user's own
    assert isinstance(dataset_tab.run_name_for("identity-demo", identity, identity), type(gr.skip()))


def test_default_run_name_gets_a_sequence_when_taken():
    from core.run import default_run_name

    cfg = RunConfig(dataset="/up/alpaca_en_demo.json")
    assert default_run_name(cfg) == "alpaca_en_demo-sft"
    assert default_run_name(cfg, {"alpaca_en_demo-sft", "alpaca_en_demo-sft-2"}) == "alpaca_en_demo-sft-3"


def test_run_label_tells_runs_apart(store):
    run = store.create_run("alpaca_en_demo-sft", {})
    label = run_label(store.get_run(run.id))
    name, when, status = label.split(" · ")
    assert name == "alpaca_en_demo-sft" and status == "queued" and ":" in when


# -- configure --------------------------------------------------------------------------------------
def _form(**changes):
    values = configure_tab.config_to_values(default_config())
    for name, value in changes.items():
        values[configure_tab.FIELD_NAMES.index(name)] = value
    return values


def test_bad_field_gives_one_message_naming_it_and_marks_it():
    config, message, marks = configure_tab.form_feedback(_form(learning_rate=-1))
    assert config is None
    assert message.count("Learning rate") == 1 and "`learning_rate`, in Training" in message
    assert "below the minimum" in message and ">= 0" in message
    assert "#cfg-learning-rate input" in marks and "#cfg-batch-size" not in marks
    config, message, marks = configure_tab.form_feedback(_form(learning_rate=0.002))
    assert config.learning_rate == 0.002 and message == "" and marks == ""


def test_wrong_type_names_the_field_once():
    _, message, _ = configure_tab.form_feedback(_form(batch_size="many"))
    assert message.count("batch_size") == 2  # the label's code name and the fix, not the message again
    assert message.startswith("- **Batch size** (`batch_size`, in Training): 'many' is not")


def test_number_boxes_leave_bounds_to_our_checks():
    import dataclasses

    fields = {f.name: f for f in dataclasses.fields(RunConfig)}
    for name in ("learning_rate", "batch_size", "lora_r", "validation_split"):
        assert "min" in fields[name].metadata  # the bound exists, in the config
        box = configure_tab.field_component(fields[name], 1)
        assert box.minimum is None and box.maximum is None, name  # but Gradio does not enforce it


def test_learning_rate_help_matches_the_demo_preset():
    import dataclasses

    help_text = next(f for f in dataclasses.fields(RunConfig) if f.name == "learning_rate").metadata["help"]
    assert "1e-3" not in help_text
    assert f"{load_preset('identity-demo').learning_rate:g}" in help_text


def test_memory_breakdown_shows_small_parts_in_mb():
    from core.checks import memory_check

    memory = memory_check(default_config())
    if memory.estimate is None:
        pytest.skip(memory.note)
    lines = memory.estimate.breakdown_lines()[1:]
    assert not any("0.00 GiB" in line for line in lines), lines
    assert any(" MB " in line or " KB " in line for line in lines)


# -- hardware -----------------------------------------------------------------------------------------
def test_demo_recommendation_is_the_demo_preset_and_apply_says_so():
    view = hardware_tab.hardware_view("text-generation")
    demo = next((r for r in view["_recs"] if r.model_id == "demo"), None)
    if demo is None:
        pytest.skip(view["note"])
    preset = load_preset("identity-demo")
    assert (demo.batch_size, demo.max_length, demo.gradient_accumulation_steps) == \
        (preset.batch_size, preset.max_length, preset.gradient_accumulation_steps)
    current = default_config()
    applied = hardware_tab.apply_recommendation(view["_recs"], "demo", "text-generation", current)
    assert applied == current
    assert hardware_tab.apply_message("demo", current, applied) == \
        "demo: Configure already has these settings; nothing changed."
    other = current.replace(batch_size=4, max_length=512)
    assert hardware_tab.apply_message("x", current, other) == \
        "Applied x to Configure: batch size 8 → 4, max length 256 → 512."


# -- train --help -------------------------------------------------------------------------------------
def test_train_help_is_readable_and_grouped():
    from app.main import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    text = sub.choices["train"].format_help()
    assert "CFG_" not in text
    for flag in ("--model MODEL", "--dataset FILE", "--lora-r N", "--learning-rate RATE", "--name NAME",
                 "--packing {true,false}", "--strategy STRATEGY", "--more-steps N"):
        assert flag in text, flag
    for heading in ("model options:", "data options:", "LoRA and quantisation options:", "training options:",
                    "evaluation and checkpoints options:", "output options:"):
        assert heading in text, heading
    assert "~30% slower" in text  # a % in a help text is printed, not taken for a format
    assert len(text.splitlines()) < 200
