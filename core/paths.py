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


def home_path() -> Path:
    """The data folder's path (not created): MODELFORGE_HOME, else the user's data folder."""
    env = os.environ.get("MODELFORGE_HOME")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "modelforge"


def home() -> Path:
    root = home_path()
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


MAX_LOGGED = 20_000  # characters of one traceback written to the fault log


def log_fault(where: str) -> str:
    """Append the current traceback to the fault log (never shown to the user whole); return the
    log's path, which the one-line message names. The CLI and the app both write it here."""
    import logging
    import traceback

    text = traceback.format_exc()
    if len(text) > MAX_LOGGED:  # a huge input inside the message must not fill the disk, call by call
        text = text[:MAX_LOGGED // 2] + f"\n[... {len(text) - MAX_LOGGED:,} characters cut ...]\n" + text[-MAX_LOGGED // 2:]
    try:
        path = fault_log_path()
        with path.open("a", encoding="utf-8") as fh:
            fh.write(f"--- unexpected fault in {where}\n{text}\n")
    except OSError:  # a full or read-only disk: nothing more to do than say so (no traceback spam)
        return "(no log: the data folder cannot be written)"
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
