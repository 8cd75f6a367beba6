"""One generic name -> plugin table, and the two tables of built-in strategies and providers.

Adding a strategy or a provider is one new file (declaring what :mod:`core.plugins` asks for)
plus one line in :data:`STRATEGIES` or :data:`PROVIDERS` below (or one :meth:`Registry.register`
call from outside, e.g. a test or a script). This is the only module besides a plugin's own file
that names a built-in plugin.

The plugin modules import nothing heavy at import time (torch, trl and transformers are imported
inside ``train``/``load``), so the CLI's ``--help`` and the app's first page do not wait for them.
"""

from __future__ import annotations

from typing import Callable, Generic, TypeVar

from core.errors import ModelForgeError, NotAvailableError
from core.plugins import PROVIDER_MEMBERS, STRATEGY_MEMBERS, Provider, Strategy
from core.providers.huggingface import HuggingFaceProvider
from core.providers.unsloth import UnslothProvider
from core.strategies.dpo import DPOStrategy
from core.strategies.kto import KTOStrategy
from core.strategies.orpo import ORPOStrategy
from core.strategies.rlhf import RLHFStrategy
from core.strategies.sft import SFTStrategy, qlora

T = TypeVar("T")


class Registry(Generic[T]):
    """Name -> factory of a plugin of one kind ("strategy" or "provider").

    Args:
        kind: the word used in messages.
        members: what every plugin must declare (see core.plugins); checked on first use.
        fallback: the hint given when a plugin is unknown or unavailable.
        builtin: the built-in table, in the order they are listed to users.
    """

    def __init__(self, kind: str, members: tuple[str, ...], fallback: str,
                 builtin: dict[str, Callable[[], T]]):
        self.kind = kind
        self.members = members
        self.fallback = fallback
        self._factories: dict[str, Callable[[], T]] = dict(builtin)

    def register(self, name: str, factory: Callable[[], T]) -> None:
        self._factories[name] = factory

    def unregister(self, name: str) -> None:
        self._factories.pop(name, None)

    def names(self) -> list[str]:
        return list(self._factories)

    def __contains__(self, name: object) -> bool:
        return name in self._factories

    def get(self, name: str) -> T:
        """The plugin called ``name``, whether or not it can run here.

        Raises:
            NotAvailableError: no plugin of that name.
            ModelForgeError: the plugin lacks a declaration (a bug in the plugin).
        """
        if name not in self._factories:
            raise NotAvailableError(f"unknown {self.kind} '{name}'", f"choose one of: {', '.join(self._factories)}")
        plugin = self._factories[name]()
        missing = [m for m in self.members if not hasattr(plugin, m)]
        if missing:  # a plugin's declaration is incomplete: say so now, not half-way through a run
            raise ModelForgeError(f"{self.kind} '{name}' does not declare: {', '.join(missing)}",
                                  "see docs/extending.md for what a plugin declares")
        return plugin

    def find(self, name: str) -> T | None:
        """The plugin called ``name``, or None when there is none (for checks that report it elsewhere)."""
        return self.get(name) if name in self._factories else None

    def require(self, name: str) -> T:
        """The plugin called ``name``, which must be usable here.

        Raises:
            NotAvailableError: unknown, or not available here (with the plugin's reason).
        """
        plugin = self.get(name)
        ok, why = plugin.available()
        if not ok:
            raise NotAvailableError(f"{self.kind} '{name}' is not available here: {why}", self.fallback)
        return plugin


# The built-ins: one line each. Listed in this order in the form, the CLI and `modelforge info`.
STRATEGIES: Registry[Strategy] = Registry("strategy", STRATEGY_MEMBERS, "see `modelforge info` for what works here", {
    "sft": SFTStrategy,
    "qlora": qlora,
    "dpo": DPOStrategy,
    "orpo": ORPOStrategy,
    "kto": KTOStrategy,
    "rlhf": RLHFStrategy,
})
PROVIDERS: Registry[Provider] = Registry("provider", PROVIDER_MEMBERS,
                                         "use provider 'huggingface' (see `modelforge info`)", {
    "huggingface": HuggingFaceProvider,
    "unsloth": UnslothProvider,
})
