"""Full fine-tuning: every weight trains, no LoRA. The worked example of docs/extending.md.

Worth it only for small models (the demo, or up to a few hundred million parameters): the
optimizer keeps two extra copies of every weight, and the saved result is the whole model
rather than a small adapter. It reads like every strategy: data in trl's shape, trl config from
the run config, trainer with the run's callbacks, train, save, evaluate.
"""

from __future__ import annotations

from dataclasses import dataclass

from core.plugins import MemoryProfile


@dataclass
class FullFineTuneStrategy:
    name: str = "full"
    description: str = "Supervised fine-tuning of every weight (no LoRA); small models only"
    tasks: tuple[str, ...] = ("text-generation",)
    data_kinds: tuple[str, ...] = ("conversation", "text")
    data_converts: tuple[tuple[str, str], ...] = ()
    # Every weight trains: the memory estimate counts AdamW's two copies of every weight.
    memory: MemoryProfile = MemoryProfile(full_finetune=True)
    own_process: bool = False
    multi_process: bool = True

    def config_problems(self, config) -> list:
        return []

    def available(self) -> tuple[bool, str]:
        return True, ""

    def adjust_config(self, config):
        # A 4-bit or 8-bit base cannot be trained directly: only adapters on top of it can.
        return config.replace(quantization="none") if config.quantization != "none" else config

    def train(self, ctx) -> dict:
        from trl import SFTConfig, SFTTrainer

        from core.strategies.common import dataset, train_save_evaluate, training_kwargs
        from core.strategies.sft import to_trl_rows

        # 1. data, in trl's shape (the same rows as SFT)
        train_ds = dataset(to_trl_rows(ctx.train_rows, ctx.tokenizer, ctx.config))
        eval_ds = dataset(to_trl_rows(ctx.eval_rows, ctx.tokenizer, ctx.config))
        # 2. trainer arguments, translated from the run config
        args = SFTConfig(**training_kwargs(ctx, lora=False), max_length=ctx.config.max_length,
                         dataset_num_proc=None)
        # 3. trainer: no peft_config, so every weight trains
        trainer = SFTTrainer(model=ctx.model, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
                             processing_class=ctx.tokenizer, callbacks=ctx.callbacks)
        # 4-6. train (resuming when asked), save the whole model and the tokenizer, evaluate
        return train_save_evaluate(trainer, ctx, eval_ds, perplexity=True)
