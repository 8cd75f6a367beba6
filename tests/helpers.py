"""What several test files share: a free TCP port, and the app served on it with its own database."""

from __future__ import annotations

import socket
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def served_app(db_path: str | Path, **launch_kwargs: Any) -> Iterator[tuple[Any, Any]]:
    """``(running, services)``: ``modelforge ui`` served in this process on a free port, with the
    record store at ``db_path``; closed on exit. ``launch_kwargs`` go to app.ui.launch (auth=...)."""
    from app.services import build_services
    from app.ui import launch

    services = build_services(f"sqlite:///{db_path}")
    running = launch(host="127.0.0.1", port=free_port(), block=False, services=services, **launch_kwargs)
    try:
        yield running, services
    finally:
        running.close()


def assert_answers(lm: Any, prompt: Any, max_new_tokens: int = 4, answer: Any = None) -> str:
    """The reloaded model answers ``prompt`` as an inference model must: the same text twice with
    greedy decoding (a model left in training mode, with LoRA dropout on, would not), and a
    ModelForge folder's card was read. Returns the answer. (``answer``: core.inference's function
    to call; default generate.)"""
    from core.inference import generate

    ask = answer or generate
    first = ask(lm, prompt, max_new_tokens=max_new_tokens)
    assert isinstance(first, str)
    assert ask(lm, prompt, max_new_tokens=max_new_tokens) == first, "greedy decoding is not deterministic"
    assert not lm.model.training, "the model was left in training mode"
    return first


# Where the browser tests leave their screenshots (looked at by people, not compared), and the two
# window sizes every tab is checked at: a laptop and a phone.
SHOTS = Path(__file__).resolve().parents[1] / "test-artifacts" / "screenshots"
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]


@contextmanager
def chromium() -> Iterator[Any]:
    """Debian's headless Chromium through playwright, for the browser tests; skipped with the
    reason when it is missing, unless MODELFORGE_REQUIRE_BROWSER=1 (.ci/run), where it fails."""
    import os
    import shutil

    import pytest

    path = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(path).exists():
        if os.environ.get("MODELFORGE_REQUIRE_BROWSER") == "1":
            pytest.fail("Chromium not found at /usr/bin/chromium: apt-get install chromium")
        pytest.skip("Chromium not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()
