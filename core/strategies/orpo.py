"""Odds-ratio preference optimisation (trl's ORPOTrainer, in ``trl.experimental``) with LoRA.

ORPO adds a preference term (the log odds ratio of chosen over rejected) to the ordinary SFT
loss on the chosen answer, so it needs no reference model at all and no SFT stage before it.
Data: the canonical ``preference`` rows, as for DPO. Metrics: eval loss, reward accuracy and
margin, and the log odds ratio.

trl 1.14's experimental ORPOTrainer never shortens the prompt, and its answer truncation can
leave the shorter answer empty (a zero or NaN loss); so the rows are rendered with the chat
template and fitted to ``max_length`` here first: the prompt keeps its last half (the question
sits at the end), the answers their beginnings.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass

from core.plugins import LORA, MemoryProfile

BETA = 0.1  # weight of the odds-ratio term against the SFT loss (trl's default; the paper's lambda)

# The final metrics worth reporting (every eval metric is stored as a curve anyway).
REPORTED = ("eval_loss", "eval_nll_loss", "eval_log_odds_ratio", "eval_rewards/")


@contextlib.contextmanager
def _experimental_ok():
    """trl warns on every import from trl.experimental; using it here is a deliberate choice."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*trl.experimental.*")
        yield


@dataclass
class ORPOStrategy:
    name: str = "orpo"
    description: str = "Odds-ratio preference optimisation: SFT and preference in one loss, no reference model"
    tasks: tuple[str, ...] = ("text-generation",)
    data_kinds: tuple[str, ...] = ("preference",)
    data_converts: tuple[tuple[str, str], ...] = ()
    memory: MemoryProfile = LORA
    own_process: bool = False
    multi_process: bool = True

    def config_problems(self, config) -> list:
        return []

    def adjust_config(self, config):
        return config

    def available(self) -> tuple[bool, str]:
        import importlib.util

        with _experimental_ok():  # experimental: may move between trl releases, hence the check
            found = importlib.util.find_spec("trl.experimental.orpo") is not None
        return (True, "") if found else (False, "this version of trl has no trl.experimental.orpo")

    def train(self, ctx) -> dict:
        with _experimental_ok():
            from trl.experimental.orpo import ORPOConfig, ORPOTrainer

        from core.strategies.common import dataset, fit_preference, peft_for, train_save_evaluate, training_kwargs

        c = ctx.config
        # 1. data: preference rows rendered with the chat template and fitted to max_length
        train_ds = dataset(fit_preference(ctx.train_rows, ctx.tokenizer, c.max_length))
        eval_ds = dataset(fit_preference(ctx.eval_rows, ctx.tokenizer, c.max_length))
        # 2. trainer arguments, translated from the run config
        args = ORPOConfig(**training_kwargs(ctx), max_length=c.max_length, beta=BETA, dataset_num_proc=None)
        # 3. trainer, with LoRA on the policy
        trainer = ORPOTrainer(model=ctx.model, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
                              processing_class=ctx.tokenizer, peft_config=peft_for(ctx), callbacks=ctx.callbacks)
        # 4-6. train (resuming when asked), save the adapter and tokenizer, evaluate
        return train_save_evaluate(trainer, ctx, eval_ds, keep=REPORTED)
