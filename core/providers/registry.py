"""The provider registry: name -> Provider. Adding a provider is one file and one line here.

A provider turns a run config into a (model, tokenizer) pair ready for a strategy, and says
whether it can run on this machine and, if not, why. Back-ends are imported inside functions
so that listing providers never imports torch, unsloth or bitsandbytes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Protocol

from core.errors import NotAvailableError, Problem

if TYPE_CHECKING:  # pragma: no cover
    from core.config import RunConfig


class Provider(Protocol):
    name: str
    description: str

    def available(self) -> tuple[bool, str]:
        """(usable here?, reason when not)."""

    def load(self, config: "RunConfig", *, for_training: bool = True) -> tuple[Any, Any]:
        """Load (model, tokenizer) for ``config``.

        Raises:
            ModelLoadError: the model cannot be found or loaded (OfflineError without network).
        """

    # Optional, for providers that cannot run every configuration or must import first:
    #   problems(config) -> list[Problem]: what it cannot do for ``config`` (see problems()).
    #   prepare() -> None: import the back-end before transformers is imported (unsloth).
    #   patches_process = True: it changes libraries process-wide (unsloth patches transformers,
    #     peft and trl), so a long-lived process (the app) trains it in a child process.


_REGISTRY: dict[str, Callable[[], Provider]] = {}


def register(name: str, factory: Callable[[], Provider]) -> None:
    _REGISTRY[name] = factory


def names() -> list[str]:
    _load_builtin()
    return list(_REGISTRY)


def get(name: str) -> Provider:
    _load_builtin()
    if name not in _REGISTRY:
        raise NotAvailableError(f"unknown provider '{name}'", f"choose one of: {', '.join(_REGISTRY)}")
    provider = _REGISTRY[name]()
    ok, why = provider.available()
    if not ok:
        raise NotAvailableError(f"provider '{name}' is not available here: {why}",
                                "use provider 'huggingface' (see `modelforge info`)")
    return provider


def patches_process(name: str) -> bool:
    """Whether provider ``name`` changes libraries for the whole process (see Provider)."""
    _load_builtin()
    factory = _REGISTRY.get(name)
    return bool(factory is not None and getattr(factory(), "patches_process", False))


def problems(config: "RunConfig") -> list[Problem]:
    """What the chosen provider cannot do for ``config`` (a task, strategy or quantisation it does
    not support), as Problems for the pre-flight check. Availability itself is not checked here:
    :func:`get` says why a provider cannot run at all."""
    _load_builtin()
    factory = _REGISTRY.get(config.provider)
    if factory is None:
        return []  # already reported by the choices check
    check = getattr(factory(), "problems", None)
    return list(check(config)) if check else []


def preflight_problems(config: "RunConfig") -> list[Problem]:
    """Everything that stops the chosen provider from training ``config`` on this machine, for
    the pre-flight check (so the CLI and the app refuse it before anything is recorded or loaded):
    not available here (the reason :func:`get` would give, e.g. unsloth without a GPU, which
    says how to opt in to its CPU fallback), and what it cannot do for ``config`` (:func:`problems`).
    Each names the field to change."""
    _load_builtin()
    factory = _REGISTRY.get(config.provider)
    if factory is None:
        return []  # already reported by the choices check
    ok, why = factory().available()
    found = [] if ok else [Problem(f"provider '{config.provider}' is not available here: {why}",
                                   "set provider to huggingface; `modelforge info` says what works here",
                                   field="provider")]
    return found + problems(config)


_loaded = False


def _load_builtin() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        from core.providers import huggingface, unsloth  # noqa: F401
