"""The Dataset, Hardware and Configure tabs in a real headless Chromium (issue 17).

What a new user trips over there: a broken upload must never become the training data (the good
file stays in use, one short line names the broken file, line and column, and the good rows are
counted); a bad value on Configure is marked on its field with one message that names it, the
"Equivalent command" keeps its text and the served app prints no traceback; "Load preset" with
nothing chosen cannot be pressed; Apply on the demo recommendation changes nothing and says so.
Screenshots of the three tabs at 1280x800 and at a phone's 390x844 go to
``test-artifacts/screenshots/``.

The app is served by ``python -m app.main ui`` in its own process, as a user starts it, so that its
terminal output (stdout and stderr, captured to a file) can be checked for tracebacks.

Needs Debian's ``chromium`` and PyPI's ``playwright`` (see tests/test_browser.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from tests.helpers import DESKTOP, PHONE, SHOTS, free_port

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(url, terminal output file, data folder) of `modelforge ui` run in its own process, with its
    own data folder (so its log holds only what this app wrote; the demo model builds in ~1 s)."""
    folder = tmp_path_factory.mktemp("served-ui")
    home = folder / "home"
    home.mkdir()
    out = folder / "terminal.txt"
    port = free_port()
    env = {**os.environ, "MODELFORGE_HOME": str(home), "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False",
           "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    env.pop("MODELFORGE_DATABASE_URL", None)
    with out.open("wb") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "app.main", "ui", "--port", str(port)], cwd=ROOT, env=env,
                                stdout=fh, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        for _ in range(600):  # a loaded 2-core machine takes a while to import gradio
            if proc.poll() is not None:
                pytest.fail(f"`modelforge ui` exited with {proc.returncode}:\n{out.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(url + "api/health", timeout=2) as r:
                    if json.load(r).get("status"):
                        break
            except OSError:
                time.sleep(0.5)
        yield url, out, home
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture()
def page(browser, served):
    errors: list[str] = []
    pg = browser.new_page(viewport=DESKTOP)
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    pg.goto(served[0], wait_until="domcontentloaded")
    pg.wait_for_selector("#tab-dataset-button", timeout=60_000)
    yield pg
    pg.close()
    assert errors == [], f"page errors: {errors}"


def _tab(page, name: str):
    button = page.locator(f"#tab-{name}-button")
    if not button.count() or not button.is_visible():  # a phone: the tab sits in the "More tabs" menu
        page.click("#mf-tabs button[aria-label='More tabs']")
        page.click(f"#mf-tabs .overflow-dropdown button:has-text('{name.capitalize()}')")
    else:
        button.click()
    page.wait_for_selector(f"#tab-{name}", state="visible", timeout=60_000)


def _shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def _no_traceback(served) -> None:
    _, out, home = served
    terminal = out.read_text(errors="replace")
    assert "Traceback" not in terminal, terminal[-4000:]
    log = home / "logs" / "modelforge.log"
    text = log.read_text(errors="replace") if log.exists() else ""
    assert "Traceback" not in text, text[-4000:]


def _error_pills(page) -> int:
    """Gradio's red "Error" labels on components whose event raised."""
    return page.evaluate("[...document.querySelectorAll('.error')].filter(e => e.offsetParent"
                         " && e.innerText.trim() === 'Error').length")


def _status_has(page, text: str) -> None:
    page.wait_for_function(f"document.querySelector('#dataset-status').innerText.includes({json.dumps(text)})",
                           timeout=120_000)


def _broken_file(folder: Path) -> tuple[Path, int]:
    """12 good alpaca rows and, on line 5, one cut short: (file, the column where it breaks)."""
    lines = [json.dumps({"instruction": f"Say {i}", "input": "", "output": f"{i}"}) for i in range(13)]
    lines[4] = lines[4][:-1]  # no closing brace
    path = folder / "broken-alpaca.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path, len(lines[4]) + 1


@pytest.mark.timeout(900)
def test_good_upload_stays_in_use_when_a_broken_one_follows(page, served, shared_data, tmp_path):
    _tab(page, "dataset")
    assert "identity.json" in page.inner_text("#dataset-in-use")

    page.set_input_files("#upload-dataset input[type=file]", str(shared_data / "alpaca_en_demo.json"))
    _status_has(page, "alpaca_en_demo.json")
    page.wait_for_function("document.querySelector('#dataset-status').innerText.includes('Ready')", timeout=120_000)
    page.wait_for_function("document.querySelector('#dataset-in-use').innerText.includes('alpaca_en_demo.json')",
                           timeout=30_000)
    # One file reads as chosen: the bundled-example chooser no longer shows identity.json.
    assert page.input_value("#dataset-example input") == ""

    page.click("#upload-dataset button[aria-label='Clear']")
    broken, column = _broken_file(tmp_path)
    page.set_input_files("#upload-dataset input[type=file]", str(broken))
    _status_has(page, "was not used")
    status = page.inner_text("#dataset-status")
    head = status.splitlines()[0].strip()
    assert head.startswith("broken-alpaca.jsonl was not used: line 5: invalid JSON"), status
    assert f"column {column}" in head and len(head) < 200, head
    assert "Still in use: alpaca_en_demo.json" in status
    assert "12 read" in status and "alpaca" in status.lower(), status  # the good rows, the format from them
    for internal in ("/uploads/", str(tmp_path), "gradio"):
        assert internal not in status
    assert "alpaca_en_demo.json" in page.inner_text("#dataset-in-use")
    assert _error_pills(page) == 0
    _shot(page, "17a-dataset-broken-upload-1280x800")
    # What Start trains: the Configure form still names the good file.
    _tab(page, "configure")
    page.wait_for_function("document.querySelector('#cfg-command').innerText.includes('alpaca_en_demo.json')",
                           timeout=60_000)
    assert "broken" not in page.inner_text("#cfg-command")
    _no_traceback(served)


@pytest.mark.timeout(600)
def test_bad_field_is_marked_with_one_message_and_no_traceback(page, served):
    _tab(page, "configure")
    command = page.locator("#cfg-command .cm-content")  # the code itself, not the progress label
    command.wait_for(timeout=60_000)
    before = command.inner_text()
    assert "modelforge train" in before
    box = page.locator("#cfg-learning-rate input")
    box.fill("-1")
    box.press("Tab")
    page.wait_for_function("document.querySelector('#cfg-field-problems').innerText.includes('Learning rate')",
                           timeout=60_000)
    problems = page.inner_text("#cfg-field-problems")
    assert "learning_rate" in problems and "-1" in problems and ">= 0" in problems, problems
    page.click("#btn-preflight")
    page.wait_for_function("document.querySelector('#cfg-preflight').innerText.includes('marked in red')",
                           timeout=60_000)
    body = page.inner_text("body")
    assert body.count("below the minimum") == 1, body
    assert command.inner_text() == before  # kept, not blanked
    assert _error_pills(page) == 0
    assert page.locator(".toast-body").count() == 0
    outline = page.evaluate("getComputedStyle(document.querySelector('#cfg-learning-rate input')).outlineColor")
    assert outline == "rgb(220, 38, 38)", outline
    _shot(page, "17a-configure-bad-field-1280x800")

    box.fill("0.002")
    box.press("Tab")
    page.wait_for_function("document.querySelector('#cfg-field-problems').innerText.trim() === ''", timeout=60_000)
    page.wait_for_function("document.querySelector('#cfg-command').innerText.includes('--learning-rate 0.002')",
                           timeout=60_000)
    _no_traceback(served)


def _looks_like_a_button(page, tag: str) -> None:
    """"Load preset" is a button of the tab's usual height (as "Check configuration"), level with
    the preset box's field on a desktop, below it on a phone; not a grey box the dropdown's height."""
    # Measured in one go: the page may still be laying out what is above (two reads could disagree).
    button, normal, preset = page.evaluate("""['#btn-load-preset', '#btn-preflight', '#cfg-preset']
        .map(s => document.querySelector(s).getBoundingClientRect().toJSON())""")
    assert abs(button["height"] - normal["height"]) <= 2, (tag, button, normal)
    if button["top"] < preset["bottom"]:  # beside the preset box: level with its field, inside its height
        assert button["top"] > preset["top"] + preset["height"] / 2 and button["bottom"] <= preset["bottom"], (
            tag, button, preset)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("size", [DESKTOP, PHONE], ids=["1280x800", "390x844"])
def test_load_preset_needs_a_choice(page, size):
    page.set_viewport_size(size)
    tag = f"{size['width']}x{size['height']}"
    _tab(page, "configure")
    assert page.locator("#btn-load-preset").is_disabled()
    _looks_like_a_button(page, tag)
    page.locator("#btn-load-preset").scroll_into_view_if_needed()
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"configure-load-preset-disabled-{tag}.png"))
    page.click("#cfg-preset input")
    page.click("ul[role='listbox'] li:has-text('identity-demo')")
    page.wait_for_function("!document.querySelector('#btn-load-preset').disabled", timeout=30_000)
    _looks_like_a_button(page, tag)


@pytest.mark.timeout(600)
def test_apply_on_the_demo_keeps_the_demo_preset(page, served):
    _tab(page, "hardware")
    page.wait_for_function("document.querySelector('#hw-choice input').value === 'demo'", timeout=120_000)
    page.click("#btn-hw-apply")
    page.wait_for_selector(".toast-body", timeout=60_000)
    assert "nothing changed" in page.inner_text(".toast-body")
    _tab(page, "configure")
    assert page.input_value("#cfg-batch-size input") == "8"
    assert page.input_value("#cfg-gradient-accumulation-steps input") == "1"
    assert page.input_value("#cfg-max-length input") == "256"
    _no_traceback(served)


@pytest.mark.timeout(900)
@pytest.mark.parametrize("size", [DESKTOP, PHONE], ids=["1280x800", "390x844"])
def test_screenshots(page, size):
    page.set_viewport_size(size)
    tag = f"{size['width']}x{size['height']}"
    _tab(page, "dataset")
    page.click("#btn-validate")  # the identity example checked: figures, preview and histogram shown
    page.wait_for_function("document.querySelector('#dataset-status').innerText.includes('Ready')", timeout=120_000)
    page.wait_for_selector("#dataset-histogram canvas, #dataset-histogram svg", timeout=60_000)
    _shot(page, f"17a-dataset-{tag}")
    _tab(page, "hardware")
    page.wait_for_function("!document.querySelector('#hw-summary').innerText.includes('Loading')", timeout=120_000)
    _shot(page, f"17a-hardware-{tag}")
    _tab(page, "configure")
    _shot(page, f"17a-configure-{tag}")
    # The Training section's switches get room for their labels and help (they were squeezed to a few
    # letters, "Packir"), and no label is clipped.
    for name in ("packing", "group-by-length", "gradient-checkpointing"):
        width = page.evaluate(f"document.querySelector('#cfg-{name}').getBoundingClientRect().width")
        assert width >= min(240, size["width"] - 100), (name, width)
    cut = page.evaluate("""[...document.querySelectorAll('#cfg-section-training label, #cfg-section-training span')]
        .filter(e => e.offsetParent && e.children.length === 0 && e.scrollWidth > e.clientWidth + 1)
        .map(e => e.innerText)""")
    assert cut == [], cut
