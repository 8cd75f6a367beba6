"""The strategy registry: a name -> Strategy table. Adding a strategy is one file + one line.

Modules here import nothing heavy at import time (no torch/trl): the CLI's ``--help`` and
the app's first page must not wait for them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Protocol

from core.errors import NotAvailableError, Problem

if TYPE_CHECKING:  # pragma: no cover
    from core.config import RunConfig


class Strategy(Protocol):
    """What every training strategy provides."""

    name: str
    description: str
    tasks: tuple[str, ...]          # tasks it can train
    data_kinds: tuple[str, ...]     # canonical data kinds it accepts (see core.data.formats)

    def available(self) -> tuple[bool, str]:
        """(usable here?, why not)."""

    def train(self, ctx: "TrainContext") -> dict:  # noqa: F821 - defined in core.engine
        """Run training; return final metrics. Reads top to bottom: load, adapt, data, train, save."""


@dataclass
class PlannedStrategy:
    """A strategy named by the design but not built yet: listed honestly as unavailable."""

    name: str
    description: str
    tasks: tuple[str, ...] = ("text-generation",)
    data_kinds: tuple[str, ...] = ()

    def available(self) -> tuple[bool, str]:
        return False, "not built yet in this version of ModelForge"

    def train(self, ctx) -> dict:
        raise NotAvailableError(f"strategy '{self.name}' is not available yet",
                                "use strategy 'sft' (see `modelforge info`)")


_REGISTRY: dict[str, Callable[[], Strategy]] = {}


def register(name: str, factory: Callable[[], Strategy]) -> None:
    _REGISTRY[name] = factory


def names() -> list[str]:
    _load_builtin()
    return list(_REGISTRY)


def get(name: str) -> Strategy:
    _load_builtin()
    if name not in _REGISTRY:
        raise NotAvailableError(f"unknown strategy '{name}'", f"choose one of: {', '.join(_REGISTRY)}")
    return _REGISTRY[name]()


def task_problems(config: "RunConfig") -> list[Problem]:
    """Problems with the (strategy, task) pair of ``config``."""
    _load_builtin()
    if config.strategy not in _REGISTRY:
        return []  # already reported by the choices check
    s = _REGISTRY[config.strategy]()
    if config.task not in s.tasks:
        return [Problem(f"strategy '{s.name}' cannot train task '{config.task}'",
                        f"for {config.task} use one of: "
                        + ", ".join(n for n in _REGISTRY if config.task in _REGISTRY[n]().tasks),
                        field="strategy")]
    return []


_loaded = False


def _load_builtin() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    from core.strategies import builtin  # noqa: F401  (registers the built-in strategies)
