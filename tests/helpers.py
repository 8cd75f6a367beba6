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
