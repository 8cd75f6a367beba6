"""What a guest of a public app (a share link, a Space) may name: the rules, without any UI.

A public app is used by people who are not the machine's owner. They may train on what they
uploaded (or a bundled example, or a hub data set), on the demo model or a hub model, and
nothing else: no server folder as ``model``, ``dataset`` or ``reward_model``, no ``output_dir``,
no remote code. :func:`public_problems` lists every value of a run config that breaks these
rules, each naming its field, so the app can refuse the config before anything is read,
copied or recorded.

The private app (a local tab, or ``--auth`` without ``--share``) does not call this: its
owner may name any folder of their own machine.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterable

from core.errors import Problem

# A hub id: "name" or "org/name", letters, digits, "." "_" "-"; no "..", no "~", no backslash.
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}(/[A-Za-z0-9][A-Za-z0-9._-]{0,95})?$")
DATA_SUFFIXES = (".json", ".jsonl", ".csv", ".parquet")

PUBLIC_HINT = "this is a public app: upload the file, pick a bundled example, or use a hub id"


def inside(path: Path, root: Path) -> bool:
    """True when ``path`` is ``root`` or lies below it (both already resolved)."""
    return path == root or root in path.parents


def resolved(text: str) -> Path | None:
    """``text`` as an absolute path with ``~``, ``..`` and symlinks resolved (None: unusable)."""
    try:
        return Path(text).expanduser().resolve()
    except (OSError, RuntimeError, ValueError):
        return None


def is_hub_id(text: str) -> bool:
    """A Hugging Face hub id ('gpt2', 'Qwen/Qwen2.5-0.5B') that names no local file or folder."""
    text = text.strip()
    if not _HUB_ID.match(text) or ".." in text or text.endswith("."):
        return False
    try:
        return not Path(text).exists()  # 'assets' or 'runs/x' relative to the server's cwd: local
    except OSError:
        return False


def within(text: str, roots: Iterable[Path]) -> bool:
    """``text`` names a path inside one of ``roots`` once resolved (symlinks out are caught)."""
    p = resolved(text)
    return p is not None and any(inside(p, Path(r).resolve()) for r in roots)


def public_problems(config: Any, *, data_roots: Iterable[Path] = (), model_roots: Iterable[Path] = (),
                    examples: Iterable[str] = ()) -> list[Problem]:
    """Every value of ``config`` that a guest of a public app may not use, each with its field.

    Args:
        config: a :class:`core.config.RunConfig`.
        data_roots: folders a ``dataset`` path may point into (the uploads, the bundled examples).
        model_roots: folders a ``reward_model`` path may point into (the data folder's runs).
        examples: names of the bundled example files (allowed as they are).

    Returns:
        An empty list when a guest may run this config.
    """
    data_roots, model_roots = list(data_roots), list(model_roots)
    problems: list[Problem] = []
    if (config.output_dir or "").strip():
        problems.append(Problem(
            "output_dir cannot be set in a public app: runs are kept in the app's data folder",
            "leave output_dir empty", field="output_dir"))
    model = (config.model or "").strip()
    if model and model != "demo" and not is_hub_id(model):
        problems.append(Problem(
            f"a public app does not load model folders from the server ({_short(model)})",
            "use 'demo' or a Hugging Face hub id such as Qwen/Qwen2.5-0.5B-Instruct", field="model"))
    reward = (config.reward_model or "").strip()
    if reward and not is_hub_id(reward) and not within(reward, model_roots):
        problems.append(Problem(
            f"a public app does not load reward models from the server's folders ({_short(reward)})",
            "leave reward_model empty (the run trains one), name RUN_DIR/reward_model of an earlier run "
            "of this app, or use a hub id", field="reward_model"))
    dataset = (config.dataset or "").strip()
    if dataset and dataset not in set(examples) and not is_hub_id(dataset) and not within(dataset, data_roots):
        problems.append(Problem(
            f"this app does not read files from the server's disk ({_short(Path(dataset).name or dataset)})",
            "upload the file in the Dataset tab, or pick a bundled example", field="dataset"))
    if getattr(config, "trust_remote_code", False):
        problems.append(Problem(
            "trust_remote_code would run a hub model's Python code on this server: not in a public app",
            "turn trust_remote_code off, or run ModelForge on your own machine", field="trust_remote_code"))
    if (getattr(config, "main_process_ip", "") or "").strip() or getattr(config, "num_machines", 1) > 1:
        problems.append(Problem(
            "a public app trains on this machine only (no main_process_ip, num_machines 1)",
            "clear main_process_ip and set num_machines to 1", field="main_process_ip"))
    return problems


def _short(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[:limit] + f"… ({len(text)} characters)"
