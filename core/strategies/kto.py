"""Kahneman-Tversky optimisation (trl's KTOTrainer) with LoRA on the policy.

KTO learns from answers labelled good or bad one at a time, with no pairs needed: the canonical
``kto`` rows (``prompt`` messages, ``completion`` = the assistant's answer, boolean ``label``),
from prompt/completion/label or OpenAI ``messages`` + ``label`` files. Preference pairs are
accepted too: the data layer splits each into its chosen answer (label true) and its rejected
answer (label false). The reference model is the policy with its adapter switched off.
"""

from __future__ import annotations

from dataclasses import dataclass

from core.plugins import LORA, MemoryProfile

BETA = 0.1  # trl's default: higher keeps the policy closer to the reference model

# The final metrics worth reporting (every eval metric is stored as a curve anyway).
REPORTED = ("eval_loss", "eval_kl", "eval_rewards/")


@dataclass
class KTOStrategy:
    name: str = "kto"
    description: str = "Kahneman-Tversky optimisation on answers labelled good or bad (pairs are split)"
    tasks: tuple[str, ...] = ("text-generation",)
    data_kinds: tuple[str, ...] = ("kto",)
    # Preference pairs are split into their chosen (good) and rejected (bad) answers.
    data_converts: tuple[tuple[str, str], ...] = (("preference", "kto"),)
    memory: MemoryProfile = LORA
    own_process: bool = False
    multi_process: bool = True

    def config_problems(self, config) -> list:
        return []

    def available(self) -> tuple[bool, str]:
        return True, ""

    def adjust_config(self, config):
        # KTO estimates its KL baseline from the other answers in a batch: one row is not enough.
        return config.replace(batch_size=2) if config.batch_size < 2 else config

    def train(self, ctx) -> dict:
        from trl import KTOConfig, KTOTrainer

        from core.strategies.common import dataset, peft_for, train_save_evaluate, training_kwargs

        # 1. data: canonical kto rows are trl's conversational unpaired-preference format
        train_ds, eval_ds = dataset(ctx.train_rows), dataset(ctx.eval_rows)
        # 2. trainer arguments, translated from the run config
        args = KTOConfig(**training_kwargs(ctx), max_length=ctx.config.max_length, beta=BETA,
                         dataset_num_proc=None)
        # 3. trainer, with LoRA on the policy (the reference is the same model, adapter off)
        trainer = KTOTrainer(model=ctx.model, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
                             processing_class=ctx.tokenizer, peft_config=peft_for(ctx), callbacks=ctx.callbacks)
        # 4-6. train, save, evaluate: loss, rewards of good and bad answers, KL
        return train_save_evaluate(trainer, ctx, eval_ds, keep=REPORTED)
