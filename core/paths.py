"""Where ModelForge keeps its data, and the guard that keeps file operations inside it.

Everything (database, runs, models, logs, the built demo model) lives under one folder:
``MODELFORGE_HOME`` if set, else the user's data folder (``~/.local/share/modelforge`` on
Linux). A Hugging Face Space points ``MODELFORGE_HOME`` at its persistent ``/data``.
"""

from __future__ import annotations

import os
from pathlib import Path

from core.errors import ModelForgeError

REPO_ROOT = Path(__file__).resolve().parent.parent
ASSETS = REPO_ROOT / "assets"
EXAMPLES = ASSETS / "examples"


def home() -> Path:
    env = os.environ.get("MODELFORGE_HOME")
    if env:
        root = Path(env).expanduser()
    else:
        base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
        root = Path(base) / "modelforge"
    root.mkdir(parents=True, exist_ok=True)
    return root.resolve()


def runs_dir() -> Path:
    p = home() / "runs"
    p.mkdir(parents=True, exist_ok=True)
    return p


def logs_dir() -> Path:
    p = home() / "logs"
    p.mkdir(parents=True, exist_ok=True)
    return p


def fault_log_path() -> Path:
    """The log of unexpected faults (bugs), shared by the CLI and the app."""
    return logs_dir() / "modelforge.log"


def log_fault(where: str) -> str:
    """Append the current traceback to the fault log (never shown to the user whole); return the
    log's path, which the one-line message names. The CLI and the app both write it here."""
    import logging
    import traceback

    path = fault_log_path()
    try:
        with path.open("a", encoding="utf-8") as fh:
            fh.write(f"--- unexpected fault in {where}\n{traceback.format_exc()}\n")
    except OSError:
        logging.getLogger("modelforge").error("unexpected fault in %s:\n%s", where, traceback.format_exc())
    return str(path)


def cache_dir() -> Path:
    p = home() / "cache"
    p.mkdir(parents=True, exist_ok=True)
    return p


def database_url() -> str:
    return os.environ.get("MODELFORGE_DATABASE_URL") or f"sqlite:///{home() / 'modelforge.db'}"


def inside_home(path: str | Path, min_depth: int = 0) -> Path:
    """Resolve ``path`` and make sure it lies inside the data folder.

    Args:
        path: the path to check (``~``, ``..`` and symlinks are resolved first).
        min_depth: how many levels below the data folder it must be at least. Anything that
            deletes passes 2, so that neither the data folder itself nor one of its main
            folders (``runs``, ``exports``, ``uploads``, ``cache``) can be removed whole by a
            record whose path or id is ``..``, empty or ``runs``.

    Raises:
        ModelForgeError: if the path escapes the data folder (``..``, symlinks, absolute paths),
            or is not deep enough inside it.
    """
    root = home()
    resolved = Path(path).expanduser().resolve()
    if resolved != root and root not in resolved.parents:
        raise ModelForgeError(
            f"refusing to touch {resolved}: it is outside the ModelForge data folder {root}",
            "only files that ModelForge created under MODELFORGE_HOME can be deleted or exported",
        )
    if len(resolved.relative_to(root).parts) < min_depth:
        raise ModelForgeError(
            f"refusing to touch {resolved}: it is the ModelForge data folder or one of its main folders",
            "the record points at the wrong place; remove the record only, or fix its path",
        )
    return resolved
