"""Direct preference optimisation (trl's DPOTrainer) with LoRA on the policy.

Preference rows (``prompt`` / ``chosen`` / ``rejected`` as message lists: the canonical
``preference`` kind, which is also trl's conversational preference format) teach the model to
prefer the chosen answer. Training LoRA on the policy means no second copy of the model is
needed as the reference: trl computes the reference log-probabilities with the adapter switched
off. Metrics: eval loss, reward accuracy (how often chosen beats rejected) and reward margin.
"""

from __future__ import annotations

from dataclasses import dataclass

from core.plugins import LORA, MemoryProfile

BETA = 0.1  # trl's default: higher keeps the policy closer to the reference model

# The final metrics worth reporting (every eval metric is stored as a curve anyway).
REPORTED = ("eval_loss", "eval_rewards/")


@dataclass
class DPOStrategy:
    name: str = "dpo"
    description: str = "Direct preference optimisation on chosen/rejected pairs (LoRA, no separate reference model)"
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
        return True, ""

    def train(self, ctx) -> dict:
        from trl import DPOConfig, DPOTrainer

        from core.strategies.common import dataset, peft_for, train_save_evaluate, training_kwargs

        # 1. data: the canonical preference rows are already in trl's conversational shape
        train_ds, eval_ds = dataset(ctx.train_rows), dataset(ctx.eval_rows)
        # 2. trainer arguments, translated from the run config
        args = DPOConfig(**training_kwargs(ctx), max_length=ctx.config.max_length, beta=BETA,
                         dataset_num_proc=None)
        # 3. trainer, with LoRA on the policy (the reference is the same model, adapter off)
        trainer = DPOTrainer(model=ctx.model, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
                             processing_class=ctx.tokenizer, peft_config=peft_for(ctx), callbacks=ctx.callbacks)
        # 4-6. train, save, evaluate: loss, reward accuracy and margin on the held-out pairs
        return train_save_evaluate(trainer, ctx, eval_ds, keep=REPORTED)
