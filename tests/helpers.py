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
