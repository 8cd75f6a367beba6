""""Train more": continue a completed run for N more steps (or epochs) from its last checkpoint.

The continuation is a new run record (its own folder, events and curves, which start at the next
step), with the same name, so its model is a new version of the same model (``get_model(name)``
finds the newest). It trains from the completed run's last checkpoint (weights, optimizer,
scheduler and step counter: ``resume_from_checkpoint``) with ``max_steps`` raised by N. The link
is written as ``continues.json`` in the new run's folder and as ``continues`` in its model card.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from core.config import RunConfig
from core.errors import ModelForgeError
from core.run import MODEL_CARD, create_run, last_checkpoint

LINK = "continues.json"


def prepare_more(store: Any, run_id: str, *, steps: int = 0, epochs: float = 0.0) -> tuple[RunConfig, str, Path, str]:
    """Record the continuation of completed run ``run_id``: (config, new run id, its folder, the
    checkpoint to resume from).

    Raises:
        ModelForgeError: the run is not completed, has no checkpoint, or neither steps nor epochs > 0.
    """
    import math

    if not math.isfinite(float(epochs)) or epochs < 0 or steps < 0 or (steps <= 0 and epochs <= 0):
        raise ModelForgeError("say how much more to train: a whole number of steps or a finite number of epochs "
                              "greater than 0", "CLI: --more-steps N or --more-epochs N; Train tab: the steps box")
    run = store.get_run(run_id)
    if run.status != "completed":
        raise ModelForgeError(f"run {run_id} is {run.status}, not completed",
                              "resume a stopped run instead (modelforge train --resume RUN_ID)")
    ckpt = last_checkpoint(run.output_dir)
    if ckpt is None:
        raise ModelForgeError(f"run {run_id} kept no checkpoint to continue from",
                              "start a new run (checkpoints are kept per save_total_limit)")
    state = json.loads((Path(ckpt) / "trainer_state.json").read_text(encoding="utf-8"))
    done = int(state.get("global_step", 0))
    config = RunConfig.from_dict(run.config, source=f"run {run_id}")
    if steps > 0:
        config = config.replace(max_steps=done + int(steps))
    else:
        config = config.replace(max_steps=0, num_epochs=float(state.get("epoch") or config.num_epochs) + epochs)
    config, new_id, run_dir = create_run(config, store)
    link = {"run_id": run_id, "model_id": run.model_id, "from_step": done, "checkpoint": ckpt,
            "more_steps": int(steps), "more_epochs": float(epochs)}
    (run_dir / LINK).write_text(json.dumps(link, indent=2), encoding="utf-8")
    return config, new_id, run_dir, ckpt


def mark_model(run_dir: str | Path) -> dict | None:
    """Write the continuation link into the new model's card (after the run completed)."""
    link_path, card_path = Path(run_dir) / LINK, Path(run_dir) / "model" / MODEL_CARD
    if not link_path.is_file() or not card_path.is_file():
        return None
    link = json.loads(link_path.read_text(encoding="utf-8"))
    card = json.loads(card_path.read_text(encoding="utf-8"))
    card["continues"] = link
    card_path.write_text(json.dumps(card, indent=2, default=str), encoding="utf-8")
    return link


def continuation_of(run_dir: str | Path) -> dict | None:
    p = Path(run_dir) / LINK
    return json.loads(p.read_text(encoding="utf-8")) if p.is_file() else None
