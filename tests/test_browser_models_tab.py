"""The Models tab with a trained model, in a real headless Chromium: the export row on a phone
leaves no empty block beside Export, and the evaluation panel's Stop reaches the evaluation its
own page started, never another page's (the task id is per browser session, not per app).

The app is served in this process (tests.helpers.served_app), so a test can hold the real
evaluation at its first batch (core.compare_eval._tick) while the pages act. Screenshots go to
``test-artifacts/screenshots/models-*``.

Needs Debian's ``chromium`` and PyPI's ``playwright`` (see tests/test_browser.py).
"""

from __future__ import annotations

import json
import threading

import pytest
from tests.helpers import DESKTOP, PHONE, SHOTS, served_app

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture(scope="module")
def app(mf_home, demo_model, shared_data, tmp_path_factory):
    """(url, services) of an app whose records hold one trained model with 12 held-out rows."""
    from core.config import RunConfig

    folder = tmp_path_factory.mktemp("models-tab")
    data = folder / "alpaca48.json"
    data.write_text(json.dumps(json.loads((shared_data / "alpaca_en_demo.json").read_text())[:48]))
    with served_app(folder / "records.db") as (running, services):
        run_id = services.jobs.submit(RunConfig(
            model="demo", dataset=str(data), max_steps=2, batch_size=2, max_length=64, logging_steps=1,
            save_steps=100, validation_split=0.25, learning_rate=1e-3, compare_after_training=False,
            name="to-evaluate"))
        assert services.jobs.wait(run_id, timeout=600) == "completed"
        yield running.url, services


def _open(browser, url: str, size: dict):
    page = browser.new_page(viewport=size)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(url, wait_until="domcontentloaded")
    page.wait_for_selector("#tab-models-button", timeout=60_000)
    page.click("#tab-models-button")
    page.wait_for_selector("#btn-export", state="visible", timeout=60_000)  # the model is chosen
    return page, errors


@pytest.mark.timeout(300)
@pytest.mark.parametrize("size", [DESKTOP, PHONE], ids=["1280x800", "390x844"])
def test_the_export_row_leaves_no_empty_block_beside_export(browser, app, size):
    """The row lies on a group whose grey background drew an empty block beside Export (on a phone,
    where the row wraps and Export had a line to itself at 140 px) and under it (on a desktop, a
    40 px button beside taller choices). The row is drawn like the choices; on a phone Export
    fills its line; on a desktop it sits at the row's end, level with the choices' bottom."""
    page, errors = _open(browser, app[0], size)
    tag = f"{size['width']}x{size['height']}"
    page.locator("#btn-export").scroll_into_view_if_needed()
    page.wait_for_timeout(400)  # let the radios lay out before the screenshot
    button, choices, row = page.locator("#btn-export").evaluate("""e => [e, e.previousElementSibling, e.parentElement]
        .map(x => x.getBoundingClientRect().toJSON())""")
    # The group behind the row is grey (its dividing lines): the row itself must be drawn, as the choices are.
    row_fill, choice_fill = page.evaluate("""['#export-row', '#export-format']
        .map(s => getComputedStyle(document.querySelector(s)).backgroundColor)""")
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"models-export-row-{tag}.png"), full_page=True)
    assert row_fill == choice_fill, (tag, row_fill, choice_fill)
    if button["top"] >= choices["bottom"]:  # wrapped onto a line of its own: it fills it (but a margin)
        assert button["width"] >= row["width"] - 24, (tag, button, row)
    else:  # beside the choices, at the row's end, level with their bottom
        assert button["right"] >= row["right"] - 12 and button["width"] < row["width"] / 2, (tag, button, row)
        assert button["bottom"] >= row["bottom"] - 12, (tag, button, row)
    assert size is PHONE or button["top"] < choices["bottom"], "on a desktop Export sits beside the choices"
    page.close()
    assert errors == []


def _toast(page, text: str) -> None:
    page.wait_for_function(f"[...document.querySelectorAll('.toast-body')].some(t => t.innerText.includes({text!r}))",
                           timeout=60_000)


def _ended(page) -> None:
    """Wait for the panel's last line: "<summary> (<limits>; N s)" (the progress lines end otherwise)."""
    page.wait_for_function("/\\d s\\)\\s*$/.test(document.querySelector('#eval-status').innerText)", timeout=120_000)


@pytest.mark.timeout(900)
def test_stop_reaches_the_evaluation_of_its_own_page_only(browser, app, monkeypatch):
    import core.compare_eval as compare_eval

    url, services = app
    jobs = services.jobs
    gate = {"held": threading.Event(), "release": threading.Event()}
    tick = compare_eval._tick

    def tick_then_hold(progress, done, total, what):  # the real evaluation, held after its first batch
        tick(progress, done, total, what)
        if not gate["held"].is_set():
            gate["held"].set()
            gate["release"].wait(300)

    monkeypatch.setattr(compare_eval, "_tick", tick_then_hold)
    mine, my_errors = _open(browser, url, DESKTOP)
    other, other_errors = _open(browser, url, DESKTOP)
    try:
        # Another page's Stop, while this page's evaluation runs: it says there is none and stops nothing.
        mine.click("#btn-evaluate")
        assert gate["held"].wait(300)
        task = jobs.busy
        assert task and task.startswith("task-")
        other.click("#btn-evaluate-stop")
        _toast(other, "No evaluation was started from this page")
        gate["release"].set()
        assert jobs.wait(task, timeout=600) == "completed"
        _ended(mine)
        assert "stopped" not in mine.inner_text("#eval-status")

        # This page's Stop reaches this page's evaluation.
        gate["held"].clear()
        gate["release"].clear()
        mine.click("#btn-evaluate")
        assert gate["held"].wait(300)
        second = jobs.busy
        assert second and second != task
        mine.click("#btn-evaluate-stop")
        _toast(mine, "Stopping the evaluation after the current batch")
        gate["release"].set()
        assert jobs.wait(second, timeout=600) == "cancelled"
        _ended(mine)
        assert "stopped: " in mine.inner_text("#eval-status")
        # and pressed again once it has ended, it says so
        mine.click("#btn-evaluate-stop")
        _toast(mine, "has already ended: nothing to stop")
    finally:
        gate["release"].set()
        mine.close()
        other.close()
    assert my_errors == [] and other_errors == []
