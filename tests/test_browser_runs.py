"""Issue 16, "runs side by side", in a real headless Chromium: two short runs (trained through the
app's own job manager, to be quick), then the Models tab's comparison panel: pick both runs, press
Compare, and the overlaid loss/eval-loss curves, the config fields in which they differ and their
final and evaluation metrics show up.

Needs Debian's ``chromium`` and PyPI's ``playwright`` (see tests/test_browser.py, whose fixtures
this copies). Screenshot: ``test-artifacts/screenshots/runs-side-by-side.png``.
"""

from __future__ import annotations


import pytest

from core.config import RunConfig
from tests.helpers import SHOTS, served_app

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture(scope="module")
def two_runs(mf_home, demo_model, tmp_path_factory, shared_data):
    """(url, [(run name, run id)] ) of the app with two completed runs that differ in learning rate and rank."""
    import json

    data = tmp_path_factory.mktemp("runsdata") / "alpaca48.json"
    data.write_text(json.dumps(json.loads((shared_data / "alpaca_en_demo.json").read_text())[:48]))
    with served_app(tmp_path_factory.mktemp("runsdb") / "records.db") as (running, services):
        runs = []
        for name, lr, rank in (("side-a", 1e-3, 4), ("side-b", 5e-3, 8)):
            config = RunConfig(model="demo", dataset=str(data), max_steps=4, batch_size=2, max_length=64,
                               logging_steps=1, eval_steps=2, save_steps=100, validation_split=0.25, learning_rate=lr,
                               lora_r=rank, lora_alpha=2 * rank, compare_max_rows=2, compare_max_new_tokens=8,
                               name=name)
            run_id = services.jobs.submit(config)
            assert services.jobs.wait(run_id, timeout=600) == "completed"
            runs.append((name, run_id))
        yield running.url, runs


def _pick(page, text: str) -> None:
    """Choose the run whose label holds ``text`` in the multiselect: type to filter, then press its
    option (Gradio selects on mousedown; Enter would add the typed text as a custom value), then
    click away so the list closes and opens afresh for the next pick."""
    box = page.locator("#runs-compare-choice input")
    box.click()
    box.fill(text)
    option = page.locator("li[data-testid=dropdown-option]", has_text=text).first
    option.wait_for(timeout=30_000)
    option.dispatch_event("mousedown")  # the list re-renders as it filters: a pointer click can miss it
    page.mouse.click(5, 5)
    page.wait_for_function("(t) => [...document.querySelectorAll('#runs-compare-choice .token')]"
                           ".some(e => e.innerText.includes(t))", arg=text, timeout=20_000)  # its chip


@pytest.mark.timeout(1200)
def test_two_runs_side_by_side_in_the_models_tab(browser, two_runs):
    url, runs = two_runs
    errors: list[str] = []
    page = browser.new_page(viewport={"width": 1400, "height": 1200})
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(url, wait_until="domcontentloaded")
    page.wait_for_selector("#tab-models-button", timeout=30_000)
    page.click("#tab-models-button")
    page.wait_for_selector("#tab-models", state="visible", timeout=60_000)

    page.locator("#runs-compare button").first.click()  # open the accordion
    page.click("#btn-runs-compare-refresh")
    for name, _ in runs:  # a run's label: name · start time · status (components.common.run_label)
        _pick(page, name)
    chosen = page.locator("#runs-compare-choice .token").all_inner_texts()
    assert len(chosen) == 2 and all(any(name in c and "completed" in c for c in chosen) for name, _ in runs), chosen
    page.click("#btn-runs-compare")

    # the curves: both runs' loss and eval loss overlaid in one plot (a legend entry per series)
    page.wait_for_function("document.querySelector('#runs-compare-curves canvas, #runs-compare-curves svg')",
                           timeout=120_000)
    page.wait_for_function("document.querySelector('#runs-compare-curves').innerText.includes('eval_loss')",
                           timeout=60_000)
    legend = page.inner_text("#runs-compare-curves")
    for name, run_id in runs:  # the legend: one series per run and curve
        for curve in ("loss", "eval_loss"):
            assert f"{name} ({run_id[-6:]}) · {curve}" in legend, legend
    # the config fields that differ: learning rate, rank and alpha (the name is not a setting)
    page.wait_for_function("document.querySelector('#runs-compare-config').innerText.includes('learning_rate')",
                           timeout=60_000)
    config = page.inner_text("#runs-compare-config")
    for field in ("learning_rate", "lora_r", "lora_alpha"):
        assert field in config, config
    assert "0.001" in config and "0.005" in config and "max_steps" not in config, config
    # their final and evaluation metrics
    metrics = page.inner_text("#runs-compare-metrics")
    assert "eval_loss" in metrics and "train_loss" in metrics and "evaluation" in metrics, metrics
    assert "tuned better on" in metrics, metrics
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / "runs-side-by-side.png"), full_page=True)
    real_errors = [e for e in errors if "favicon" not in e and "net::ERR" not in e]
    assert real_errors == [], real_errors
    page.close()
