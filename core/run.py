"""What a run is, between the checks and the engine: the strategy's context, the result, the
prepared run (its record and folder).

Strategies read :class:`TrainContext`, the engine and the multi-process launcher return
:class:`RunResult`; both lived in ``core/engine.py``, which made every strategy and
``core/distributed.py`` import the engine that imports them. This module imports only the
layer below (config, paths, records).
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.config import RunConfig, save_yaml
from core.paths import runs_dir

if TYPE_CHECKING:  # pragma: no cover
    from core.records import RecordStore

MODEL_CARD = "modelforge.json"


@dataclass
class TrainContext:
    """Everything a strategy needs; built by the engine, read by the strategy.

    ``adapter_applied``: the provider already put LoRA on the model (its ``applies_adapter``), so
    the strategy must not wrap it again.
    """

    config: RunConfig
    run_id: str
    run_dir: Path
    model: Any
    tokenizer: Any
    train_rows: list[dict]
    eval_rows: list[dict]
    callbacks: list[Any]
    device: str
    dtype: str
    stop_event: threading.Event
    resume_from: str | None = None
    trainer: Any = None
    extra: dict = field(default_factory=dict)
    adapter_applied: bool = False
    compile_model: bool = False  # train under torch.compile (core.speed.compile_plan decided it)

    @property
    def checkpoint_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    @property
    def model_dir(self) -> Path:
        return self.run_dir / "model"

    def stopped(self) -> bool:
        return self.stop_event.is_set()


@dataclass
class RunResult:
    run_id: str
    status: str
    output_dir: str
    model_id: str | None = None
    metrics: dict = field(default_factory=dict)
    error: str | None = None
    hint: str | None = None
    fault: bool = False  # True: a bug or an environment fault, not the user's input

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def default_run_name(config: RunConfig, taken: set[str] | frozenset[str] = frozenset()) -> str:
    """A run named after its data: the data file's stem and the strategy (``alpaca_en_demo-sft``),
    with a sequence number when that name is ``taken`` already (``alpaca_en_demo-sft-2``)."""
    base = Path(config.dataset).stem if config.dataset else "run"
    safe = "".join(ch if ch.isalnum() or ch in "._-" else "-" for ch in base)[:40].strip("-.") or "run"
    name = f"{safe}-{config.strategy}"
    n = 2
    while name in taken:
        name, n = f"{safe}-{config.strategy}-{n}", n + 1
    return name


def run_parent_dir(config: RunConfig) -> Path:
    """The folder a run's folder is created in (``output_dir``, or MODELFORGE_HOME/runs)."""
    return Path(config.output_dir).expanduser() if config.output_dir else runs_dir()


def create_run(config: RunConfig, store: "RecordStore", run_id: str | None = None) -> tuple[RunConfig, str, Path]:
    """Record a run that was checked already (:func:`core.checks.run_checks`) and make its folder
    (status: queued). Names it when it has no name. Returns (config, run id, run folder)."""
    # Here, not at the top: core.records imports sqlmodel (0.2 s), which the CLI's --help, through
    # core.checks, does not need.
    from core.records import new_id

    if not config.name:
        config = config.replace(name=default_run_name(config, {r.name for r in store.list_runs(limit=1000)}))
    run_id = run_id or new_id("run")
    run_dir = run_parent_dir(config) / run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    save_yaml(config, run_dir / "config.yaml")
    store.create_run(config.name, config.to_dict(), output_dir=str(run_dir), run_id=run_id)
    return config, run_id, run_dir


def checkpoint_complete(path: str | Path) -> bool:
    """A checkpoint folder the trainer finished writing (``trainer_state.json`` is written last)."""
    return (Path(path) / "trainer_state.json").is_file()


def last_checkpoint(run_dir: str | Path) -> str | None:
    """The newest complete ``checkpoint-N`` folder of a run, or None.

    A folder the trainer did not finish writing (the process was killed, or the disk filled up,
    during a save) lacks ``trainer_state.json`` and is skipped: resuming from it would fail.
    """
    ckpts = Path(run_dir) / "checkpoints"
    found = [(int(m.group(1)), p) for p in ckpts.glob("checkpoint-*")
             if p.is_dir() and (m := re.fullmatch(r"checkpoint-(\d+)", p.name)) and checkpoint_complete(p)]
    return str(max(found)[1]) if found else None


def resumable(store: "RecordStore", run_id: str) -> tuple[RunConfig, Path, str]:
    """The recorded config, folder and newest complete checkpoint of a run that can be resumed:
    the one rule the CLI (``train --resume``) and the job manager share.

    Raises:
        NotFoundError: no such run.
        ModelForgeError: it is active or completed, or has no checkpoint to resume from.
    """
    from core.errors import ModelForgeError

    run = store.get_run(run_id)
    if run.status in ("running", "queued"):
        raise ModelForgeError(f"run {run_id} is already {run.status}",
                              "wait for it, or stop it first (another process may be training it)")
    if run.status == "completed":
        raise ModelForgeError(f"run {run_id} already completed", "start a new run to train further")
    ckpt = last_checkpoint(run.output_dir)
    if ckpt is None:
        raise ModelForgeError(f"run {run_id} has no checkpoint to resume from", "start it again as a new run")
    return RunConfig.from_dict(run.config, source=f"run {run_id}"), Path(run.output_dir), ckpt
