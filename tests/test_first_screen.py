"""The first page stays light (issue 18): no heavy library at start-up, and the browser is sent
only the component types of the first tab before it can draw.

Timings are the cold-start benchmark's business (benchmarks/cold_start.py); these tests check the
causes, which do not depend on the machine's load.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers", "trl", "peft", "datasets", "accelerate", "bitsandbytes")

# Builds the app as `modelforge ui` does, then runs every page-load event the way a first visit
# does (the reveal, then the events chained on it), and prints which heavy libraries got imported.
_START_AND_LOAD = """
import json, sys
from app.services import build_services
from app.ui import build_app
blocks, app = build_app(build_services())
ran = []
# The page-load events and what is chained after them (.then), not the chains of other events
# (a click's .then): those run when the user acts, not when the page loads.
chain = {fn._id for fn in blocks.fns.values()
         if any(getattr(t[0], "_id", t[0]) == blocks._id and t[1] == "load" for t in fn.targets)}
for fn in blocks.fns.values():  # in creation order: a .then comes after what it follows
    if fn._id in chain or fn.trigger_after in chain:
        chain.add(fn._id)
        fn.fn(*[getattr(c, "value", None) for c in fn.inputs])
        ran.append(fn.name)
print(json.dumps({"heavy": [m for m in %r if m in sys.modules], "ran": ran}))
""" % (HEAVY,)


def test_starting_the_app_and_its_page_load_import_no_heavy_library(tmp_path):
    env = {**os.environ, "MODELFORGE_HOME": str(tmp_path), "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", _START_AND_LOAD], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(out["ran"]) >= 5, out  # the reveal and the four chained load events really ran
    assert out["heavy"] == [], f"imported at start-up or page load: {out['heavy']}"


def test_importing_the_app_imports_no_heavy_library(tmp_path):
    # SQLAlchemy too: `modelforge ui` opens the record store in the background once it listens.
    code = (f"import sys, app.main, app.ui, app.services; "
            f"print([m for m in {HEAVY + ('sqlalchemy', 'sqlmodel')!r} if m in sys.modules])")
    env = {**os.environ, "MODELFORGE_HOME": str(tmp_path), "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "[]"


@pytest.fixture(scope="module")
def blocks(tmp_path_factory):
    from app.ui import build_blocks
    from components.common import AppContext
    from core.jobs import JobManager
    from core.records import RecordStore

    store = RecordStore(f"sqlite:///{tmp_path_factory.mktemp('firstscreen') / 'records.db'}")
    return build_blocks(AppContext(store=store, jobs=JobManager(store)))


def _shown_types(config: dict) -> set[str]:
    return {c["type"] for c in config["components"] if c["props"].get("visible", True) is not False}


def test_first_page_config_shows_only_the_first_tabs_component_types(blocks):
    shown = _shown_types(blocks.get_config_file())
    # Types only the later tabs (or the Dataset tab's results) use: their code is not fetched
    # before the first drawing.
    later_only = {"chatbot", "nativeplot", "dataframe", "number", "checkbox", "accordion", "slider", "code",
                  "json", "radio", "highlightedtext", "dataset", "group"}
    assert not shown & later_only, shown & later_only
    assert {"file", "dropdown", "textbox", "button"} <= shown  # the Dataset tab itself is drawn


def test_one_load_event_reveals_every_deferred_block_before_the_others_run(blocks):
    import gradio as gr

    config = blocks.get_config_file()
    hidden = {c["id"] for c in config["components"] if c["props"].get("visible", True) is False}
    on_load = [fn for fn in blocks.fns.values()
               if any(getattr(t[0], "_id", t[0]) == blocks._id and t[1] == "load" for t in fn.targets)]
    assert len(on_load) == 1, "every other load event must be chained after the reveal"
    reveal = on_load[0]
    chained = [fn for fn in blocks.fns.values() if fn.trigger_after == reveal._id]
    assert len(chained) == 5  # banner, train attach, hardware, models, playground models
    revealed = [c._id for c in reveal.outputs]
    assert len(revealed) > 50 and set(revealed) <= hidden
    updates = reveal.fn()
    assert len(updates) == len(revealed)
    assert all(u == gr.update(visible=True) for u in updates)
    # Blocks meant to start hidden (the Models table before any model, the Playground's panels
    # for other tasks) are not among them.
    by_elem = {b.elem_id: b._id for b in blocks.blocks.values() if getattr(b, "elem_id", None)}
    assert by_elem.get("btn-open-playground") in hidden and by_elem["btn-open-playground"] not in revealed


def test_defer_keeps_blocks_meant_to_start_hidden_and_the_first_tabs_types():
    import gradio as gr

    from app import first_screen

    with gr.Blocks() as demo:
        with gr.Tabs():
            with gr.Tab("first") as first:
                gr.Textbox(label="t1")
                plot = gr.LinePlot()
            with gr.Tab("second") as second:
                text = gr.Textbox(label="t2")
                chat = gr.Chatbot()
                hidden_chat = gr.Chatbot(visible=False)
                with gr.Accordion("more") as acc:
                    num = gr.Number()
        deferred = first_screen.defer(demo, [second], also=[plot])
    assert first is not None and set(map(id, deferred)) == {id(plot), id(chat), id(acc), id(num)}
    assert not text in deferred and hidden_chat.visible is False
    assert all(b.visible is False for b in deferred)


def test_ui_with_a_damaged_database_still_exits_2_naming_it(tmp_path):
    """The store opens after the server starts (in the background): a damaged database still
    stops `modelforge ui` with the usual one-line message and exit status 2."""
    from tests.helpers import free_port

    (tmp_path / "runs").mkdir()
    (tmp_path / "modelforge.db").write_bytes(os.urandom(8192))
    env = {**os.environ, "MODELFORGE_HOME": str(tmp_path), "PYTHONPATH": str(ROOT)}
    env.pop("MODELFORGE_DATABASE_URL", None)
    proc = subprocess.run([sys.executable, "-m", "app.main", "ui", "--port", str(free_port())], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "modelforge.db" in proc.stderr and "modelforge doctor" in proc.stderr and "Traceback" not in proc.stderr


def test_deferred_builds_once_and_hands_every_caller_the_same_result():
    import threading

    from core.deferred import Deferred

    calls = []
    store = Deferred(lambda: calls.append(1) or {"opened": True}, "test")
    assert "not started" in repr(store)
    results = []
    threads = [threading.Thread(target=lambda: results.append(store.get())) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls == [1] and all(r is results[0] for r in results) and results[0] == {"opened": True}
    assert store.keys() == {"opened": True}.keys()  # attributes are forwarded to the built object

    broken = Deferred(lambda: 1 / 0, "broken").start()
    for _ in range(2):
        with pytest.raises(ZeroDivisionError):
            broken.get()


def test_startup_gc_pause_then_resume_freezes_the_start_up_heap_and_collects_again():
    import gc

    from app import startup_gc

    before = gc.get_freeze_count()  # an app launched earlier in this test process may have frozen some
    startup_gc.resume()  # not paused: nothing to do
    assert gc.isenabled() and gc.get_freeze_count() == before
    startup_gc.pause()
    try:
        assert not gc.isenabled()
        startup_gc.resume()
        assert gc.isenabled() and gc.get_freeze_count() > before
    finally:
        gc.enable()
        gc.unfreeze()  # this test process's heap goes back to normal collection


def test_quick_exit_only_when_the_process_is_the_command(monkeypatch, tmp_path):
    """`modelforge ...` (argv None) skips the final collection at exit (app/startup_gc.before_exit);
    main([...]) called inside another process (a test, a script) leaves its collector alone."""
    import gc

    from app import main as cli

    monkeypatch.setenv("MODELFORGE_HOME", str(tmp_path / "home"))
    before = gc.get_freeze_count()
    try:
        assert cli.main(["hardware", "--json"]) == 0
        assert gc.isenabled() and gc.get_freeze_count() == before
        monkeypatch.setattr(sys, "argv", ["modelforge", "hardware", "--json"])
        assert cli.main() == 0
        assert not gc.isenabled() and gc.get_freeze_count() > before
    finally:
        gc.enable()
        gc.unfreeze()
