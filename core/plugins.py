"""What a strategy and a provider declare: the two plugin Protocols, and the types they use.

Everything the rest of ModelForge needs to know about a plugin is declared here, typed, so that
no module outside a plugin's own file names a built-in plugin to special-case it: the checks ask
a strategy for its tasks, data, memory profile and config problems; the engine asks a provider
whether it needs a process of its own and whether it applies the LoRA adapter itself. Every
member is required (the registry refuses a plugin that lacks one, naming it), so nothing is found
by ``hasattr``. Adding a plugin is one file plus one line in :mod:`core.registry`.

This module imports nothing heavy and nothing above it (the run layer): plugins import it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:  # pragma: no cover
    from core.config import RunConfig
    from core.errors import Problem
    from core.run import TrainContext


@dataclass(frozen=True)
class MemoryProfile:
    """How a strategy uses memory, for the memory estimate and the disk check.

    Attributes:
        full_finetune: every weight trains (no LoRA): the optimizer keeps two fp32 copies of
            every weight, and checkpoints hold the whole model.
        trained_models: models trained one after the other in one run, each with its own
            checkpoints (rlhf: a reward model, then the policy).
        chunked_loss: the trainer computes the loss a chunk of tokens at a time (trl's
            SFTTrainer, loss_type "chunked_nll"), so the batch's logits never exist at once.
    """

    full_finetune: bool = False
    trained_models: int = 1
    chunked_loss: bool = False


LORA = MemoryProfile()


class Strategy(Protocol):
    """A training strategy: how a prepared run becomes a trained model."""

    name: str
    description: str
    tasks: tuple[str, ...]                        # tasks it can train
    data_kinds: tuple[str, ...]                   # canonical data kinds it trains on (core.data.formats)
    data_converts: tuple[tuple[str, str], ...]    # (source format or kind, kind) converted automatically
    memory: MemoryProfile
    own_process: bool                             # must train in a child process of a long-lived app
    multi_process: bool                           # can train with num_processes > 1

    def available(self) -> tuple[bool, str]:
        """(usable here?, why not)."""

    def config_problems(self, config: "RunConfig") -> list["Problem"]:
        """What this strategy cannot do with ``config`` (before :meth:`adjust_config`); [] if fine."""

    def adjust_config(self, config: "RunConfig") -> "RunConfig":
        """The config this strategy trains with (e.g. qlora: a 4-bit base). Applied once, before the
        pre-flight check, so the memory estimate, the record and the run all see the same config."""

    def train(self, ctx: "TrainContext") -> dict:
        """Run training; return final metrics. Reads top to bottom: load, adapt, data, train, save."""


class Provider(Protocol):
    """A model back-end: turns a run config into a (model, tokenizer) pair for a strategy."""

    name: str
    description: str
    tasks: tuple[str, ...]                        # tasks it can load models for
    own_process: bool      # patches libraries process-wide: a long-lived process trains it in a child
    multi_process: bool    # can train with num_processes > 1
    applies_adapter: bool  # load() returns the model with LoRA applied: strategies must not add it

    def available(self) -> tuple[bool, str]:
        """(usable here?, reason when not)."""

    def config_problems(self, config: "RunConfig") -> list["Problem"]:
        """What it cannot do for ``config`` (a task, strategy or quantisation); [] if fine."""

    def adjust_config(self, config: "RunConfig") -> "RunConfig":
        """The config it trains with; applied before the pre-flight check (most return it as is)."""

    def prepare(self) -> None:
        """Called once before training, before transformers is used (unsloth imports itself here)."""

    def backend_status(self, report: Any) -> tuple[bool, str] | None:
        """Its line in the hardware report's back-ends, given the report (None: no line of its own)."""

    def load(self, config: "RunConfig", *, for_training: bool = True) -> tuple[Any, Any]:
        """Load (model, tokenizer) for ``config``.

        Raises:
            ModelLoadError: the model cannot be found or loaded (OfflineError without network).
        """


STRATEGY_MEMBERS = ("name", "description", "tasks", "data_kinds", "data_converts", "memory", "own_process",
                    "multi_process", "available", "config_problems", "adjust_config", "train")
PROVIDER_MEMBERS = ("name", "description", "tasks", "own_process", "multi_process", "applies_adapter",
                    "available", "config_problems", "adjust_config", "prepare", "backend_status", "load")
