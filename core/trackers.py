"""Early stopping and experiment trackers: the trainer arguments and callbacks that the
``early_stopping_patience`` and ``report_to`` fields of the run config ask for.

Trackers go through transformers' own integrations (``TensorBoardCallback``, ``MLflowCallback``,
``WandbCallback``), but as callback instances built here for the run, not through
``TrainingArguments.report_to`` (which stays ``[]``): each gets its run's folder explicitly
instead of reading process-wide environment variables, so two runs in one app never write into
each other's store, and nothing is reported unless the user asked.

- tensorboard: event files in ``RUN_DIR/tensorboard`` (``tensorboard --logdir RUN_DIR/tensorboard``).
- mlflow: a local file store ``RUN_DIR/mlruns`` unless ``MLFLOW_TRACKING_URI`` names another one
  (``MLFLOW_ALLOW_FILE_STORE=true mlflow ui --backend-store-uri RUN_DIR/mlruns``; MLflow 3 wants that
  variable for a file store, and ModelForge sets it for its own runs).
- wandb: offline mode (files in ``RUN_DIR/wandb``, ``wandb sync`` uploads them later) unless
  ``WANDB_MODE`` is set: no account and no network needed.

The tracker packages are optional (``pip install modelforge[trackers]``); a missing one is reported
by :func:`tracker_problems` before the run starts.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

from core.errors import Problem

TRACKERS = ("tensorboard", "mlflow", "wandb")
PACKAGES = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb"}


def wanted(config: Any) -> list[str]:
    """The trackers named by ``config.report_to`` ('none': empty)."""
    value = (getattr(config, "report_to", "none") or "none").strip().lower()
    return [t for t in (p.strip() for p in value.split(",")) if t in TRACKERS]


def tracker_problems(config: Any) -> list[Problem]:
    """A tracker asked for whose package is missing; early stopping without validation rows."""
    problems = []
    for name in wanted(config):
        if importlib.util.find_spec(PACKAGES[name]) is None:
            problems.append(Problem(f"report_to {name}: the {PACKAGES[name]} package is not installed",
                                    f"pip install 'modelforge[trackers]' (or {PACKAGES[name]}), or set report_to none",
                                    field="report_to"))
    if getattr(config, "early_stopping_patience", 0) and getattr(config, "validation_split", 0) == 0:
        problems.append(Problem("early stopping watches the eval loss, but validation_split is 0",
                                "set validation_split > 0 (e.g. 0.05) or -1 (auto), or early_stopping_patience 0",
                                field="early_stopping_patience"))
    return problems


def early_stopping_kwargs(config: Any, has_eval: bool) -> dict:
    """TrainingArguments for early stopping: checkpoints at every evaluation, the best one (lowest
    eval loss) loaded at the end (``load_best_model_at_end``) and saved as the model."""
    if not getattr(config, "early_stopping_patience", 0) or not has_eval:
        return {}
    kw: dict[str, Any] = dict(load_best_model_at_end=True, metric_for_best_model="eval_loss",
                              greater_is_better=False)
    if config.eval_steps:
        kw.update(save_strategy="steps", save_steps=config.eval_steps)
    else:
        kw.update(save_strategy="epoch")
    # The best checkpoint must survive the rotation: transformers keeps it besides the newest ones.
    kw["save_total_limit"] = max(config.save_total_limit, 2)
    return kw


def callbacks(config: Any, run_dir: str | Path, has_eval: bool) -> list:
    """The callbacks for early stopping and the chosen trackers (empty: none asked for)."""
    out: list = []
    if getattr(config, "early_stopping_patience", 0) and has_eval:
        from transformers import EarlyStoppingCallback

        out.append(EarlyStoppingCallback(early_stopping_patience=config.early_stopping_patience))
    run_dir = Path(run_dir)
    for name in wanted(config):
        out.append({"tensorboard": _tensorboard, "mlflow": _mlflow, "wandb": _wandb}[name](run_dir))
    return out


def _tensorboard(run_dir: Path):
    from torch.utils.tensorboard import SummaryWriter
    from transformers.integrations import TensorBoardCallback

    return TensorBoardCallback(tb_writer=SummaryWriter(log_dir=str(run_dir / "tensorboard")))


def mlflow_uri(run_dir: str | Path) -> str:
    """The tracking URI a run logs to: MLFLOW_TRACKING_URI, else the run's own local file store."""
    return os.environ.get("MLFLOW_TRACKING_URI") or (Path(run_dir) / "mlruns").resolve().as_uri()


def _mlflow(run_dir: Path):
    from transformers.integrations import MLflowCallback

    uri = mlflow_uri(run_dir)
    if uri.startswith("file:"):
        # MLflow 3 keeps its file store "in maintenance mode" and refuses it unless asked; a database
        # store needs alembic and a server-side schema. A folder in the run is what a local user wants.
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")

    class RunMLflowCallback(MLflowCallback):
        """transformers' MLflow callback, pointed at this run's store (set per run, not once per process)."""

        def setup(self, args, state, model):
            if state.is_world_process_zero:
                self._ml_flow.set_tracking_uri(uri)
            super().setup(args, state, model)

        def on_train_end(self, args, state, control, **kwargs):
            super().on_train_end(args, state, control, **kwargs)
            flush = getattr(self._ml_flow, "flush_async_logging", None)
            if callable(flush):
                flush()

    return RunMLflowCallback()


# The user's own WANDB_DIR (read once, before a run sets it): else each run logs into its own folder.
_USER_WANDB_DIR = os.environ.get("WANDB_DIR")


def _wandb(run_dir: Path):
    from transformers.integrations import WandbCallback

    class RunWandbCallback(WandbCallback):
        """transformers' wandb callback with one wandb run per ModelForge run, in RUN_DIR/wandb (the
        app trains many runs in one process: setdefault would send them all to the first one's
        folder, and an unfinished wandb run would swallow the next run's logs)."""

        def setup(self, args, state, model, **kwargs):
            os.environ.setdefault("WANDB_MODE", "offline")  # no account, no network unless the user set it
            os.environ.setdefault("WANDB_SILENT", "true")
            if self._wandb is not None and self._wandb.run is None and state.is_world_process_zero:
                # Started here with dir=: wandb reads WANDB_DIR once per process, not once per run.
                self._wandb.init(project=os.getenv("WANDB_PROJECT", "modelforge"), name=run_dir.name,
                                 dir=_USER_WANDB_DIR or str(run_dir))
            super().setup(args, state, model, **kwargs)

        def on_train_end(self, args, state, control, **kwargs):
            super().on_train_end(args, state, control, **kwargs)
            if self._wandb is not None and self._wandb.run is not None and state.is_world_process_zero:
                self._wandb.finish()  # writes the run's files now, and the next run starts its own
            self._initialized = False

    return RunWandbCallback()
