"""The app in a real headless Chromium, as a new user drives it.

Open the app, upload identity.json and see it validated, start a short run on the demo model,
watch the loss plot appear and the run complete, find the model in the Models tab, export it to
GGUF (verification table, download), and get an answer in the Playground. Screenshots of each tab go to ``test-artifacts/screenshots/``.

Needs Debian's ``chromium`` (``apt-get install chromium``) and PyPI's ``playwright`` (no browser
download). Skipped with the reason when Chromium is missing, unless MODELFORGE_REQUIRE_BROWSER=1
(set by .ci/run), where a missing browser is a failure.
"""

from __future__ import annotations

import os

import pytest
from tests.helpers import SHOTS, served_app

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture(scope="module")
def app_url(mf_home, demo_model, tmp_path_factory):
    with served_app(tmp_path_factory.mktemp("browserdb") / "records.db") as (running, _):
        yield running.url


def _tab(page, name: str):
    page.click(f"#tab-{name}-button")
    page.wait_for_selector(f"#tab-{name}", state="visible", timeout=60_000)


def _shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def _fill(page, field: str, value: str) -> None:
    box = page.locator(f"#cfg-{field} input")
    box.fill(value)
    box.press("Tab")


@pytest.mark.timeout(1800)
def test_new_user_flow_in_a_real_browser(browser, app_url, shared_data):
    errors: list[str] = []
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(app_url, wait_until="domcontentloaded")  # a 1 s timer keeps the network busy
    page.wait_for_selector("#tab-dataset-button", timeout=30_000)

    # Dataset: upload the real identity file and see it validated.
    _tab(page, "dataset")
    page.set_input_files("#upload-dataset input[type=file]", str(shared_data / "identity.json"))
    page.wait_for_function(
        "document.querySelector('#dataset-status') && "
        "document.querySelector('#dataset-status').innerText.includes('Ready to train')", timeout=60_000)
    assert "alpaca" in page.inner_text("#dataset-status").lower()
    _shot(page, "1-dataset")

    _tab(page, "hardware")
    page.wait_for_function("!document.querySelector('#hw-summary').innerText.includes('Loading')", timeout=120_000)
    assert "cpu" in page.inner_text("#hw-summary").lower()
    _shot(page, "2-hardware")

    # Configure: the defaults are the identity demo (300 steps, ~15-60 s on 2 cores); keep them.
    _tab(page, "configure")
    assert page.input_value("#cfg-max-steps input") == "300"
    _shot(page, "3-configure")

    # Train: start, watch the loss plot and the status until completed.
    _tab(page, "train")
    page.click("#btn-start")
    page.wait_for_function(
        "document.querySelector('#plot-loss') && document.querySelector('#plot-loss canvas, #plot-loss svg')",
        timeout=400_000)  # generous: a loaded 2-core machine is many times slower
    page.wait_for_function("document.querySelector('#train-status').innerText.toLowerCase().includes('completed')",
                           timeout=600_000)
    status = page.inner_text("#train-status")
    assert "300" in status
    _shot(page, "4-train")

    # Models: the new record is listed.
    _tab(page, "models")
    page.click("#btn-models-refresh")
    page.wait_for_function("document.querySelector('#models-table') && "
                           "document.querySelector('#models-table').innerText.includes('identity')", timeout=120_000)
    _shot(page, "5-models")

    # Models: export to GGUF f16 (the defaults), see the verification table, download the file.
    import importlib.util

    if importlib.util.find_spec("llama_cpp") is not None or os.environ.get("CI"):
        page.wait_for_function("document.querySelector('#models-choice input').value.length > 0", timeout=60_000)
        page.click("#btn-export")
        page.wait_for_function("document.querySelector('#export-summary').innerText.includes('Exported')",
                               timeout=400_000)
        summary = page.inner_text("#export-summary")
        assert "gguf f16" in summary and "4/4" in summary, summary
        table = page.inner_text("#export-verification")
        assert "Who are you?" in table and "Forge" in table, table
        link = page.locator("#export-files a[download$='.gguf']").first
        href = link.get_attribute("href")
        got = page.request.get(href if href.startswith("http") else app_url.rstrip("/") + "/" + href.lstrip("/"))
        assert got.ok and got.body()[:4] == b"GGUF", (got.status, got.body()[:40])
        assert page.locator("#export-files a[download='Modelfile']").count() == 1
        _shot(page, "5b-export")

    # Playground: ask, get an answer from the tuned model and from its base.
    _tab(page, "playground")
    page.click("#btn-play-refresh")
    page.fill("#chat-input textarea", "Who are you?")
    page.click("#btn-send")
    try:
        page.wait_for_function(
            "(() => { const t = document.querySelector('#chat-tuned'); const b = document.querySelector('#chat-base');"
            " return t && b && t.innerText.includes('Who are you?') && t.innerText.split('Who are you?')[1].trim().length > 0"
            " && b.innerText.split('Who are you?').length > 1 && b.innerText.split('Who are you?')[1].trim().length > 0; })()",
            timeout=300_000)
    except Exception:
        _shot(page, "6-playground-failed")
        raise AssertionError(f"no answers: tuned={page.inner_text('#chat-tuned')!r} base={page.inner_text('#chat-base')!r}"
                             f" model={page.input_value('#play-model input')!r} errors={errors}")
    _shot(page, "6-playground")
    tuned = page.inner_text("#chat-tuned").split("Who are you?")[1]
    base = page.inner_text("#chat-base").split("Who are you?")[1]
    assert "Forge" in tuned, tuned  # the identity the run taught it
    assert "Forge" not in base, base

    real_errors = [e for e in errors if "favicon" not in e and "net::ERR" not in e]
    assert real_errors == [], real_errors
    page.close()
