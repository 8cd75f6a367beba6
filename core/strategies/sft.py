"""Supervised fine-tuning with LoRA through trl's SFTTrainer (and QLoRA: the same on a 4-bit base).

Conversations are rendered with the chat template (tools, tool calls, reasoning as the template
shows them) and tokenized here into ``input_ids`` + ``labels`` by :mod:`core.data.chat`: every
assistant turn is trained (``train_turns: last``: the final one only), weight-0 turns stay in
the context without loss, ``loss_on: all`` trains on the whole text. trl takes the rows as
they are (a ``labels`` column is kept through truncation, packing and length grouping). Plain
``text`` rows are continued pre-training (every token, EOS appended).

The other tasks are supervised fine-tuning too, each with its own head and metrics, in
core/tasks/: summarization (seq2seq, or causal with a prompt; ROUGE) and extractive QA (a span
head; exact match and F1).
"""

from __future__ import annotations

from dataclasses import dataclass

from core.errors import Problem
from core.plugins import MemoryProfile

SFT_MEMORY = MemoryProfile(chunked_loss=True)


def to_trl_rows(rows: list[dict], tokenizer, config=None) -> list[dict]:
    """Canonical conversation/text rows -> tokenized ``{"input_ids", "labels"}`` rows for trl
    (see core.data.chat for how the loss mask is built)."""
    from core.data.chat import options_of, tokenize_examples

    return tokenize_examples(rows, tokenizer, options_of(config))


def _log_mask(ctx, rows: list[dict]) -> None:
    """Say in the run's log how much of the data is in the loss (the mask built in to_trl_rows)."""
    from core.data.chat import supervised_tokens
    from core.strategies.common import event_callback

    owner = event_callback(ctx)
    if owner is not None and rows:
        total = sum(len(r["input_ids"]) for r in rows)
        owner.events.emit("log", message=f"{len(rows)} training sequences: {supervised_tokens(rows)} of {total} "
                                         "tokens are in the loss, the rest is context")


def batching(config) -> dict:
    """How examples become batches: the SFTConfig keywords for ``packing`` / ``group_by_length``.

    Measured in benchmarks/useful_compute.py (alpaca_en_demo, batch 4, max_length 512): random
    batches padded to their longest row compute ~58% real tokens; length grouping ~98%, at the
    same examples per step and the fastest real tokens/s on CPU; bfd packing 100%, but a step
    then holds batch_size rows of max_length tokens (far more examples per step) and trl runs it
    padding-free, as one long row whose attention costs grow with batch_size x max_length.
    Packing keeps completion-only masks, and transformers keeps packed examples from attending
    to each other (their position ids restart), so both are correct; grouping is the default.
    """
    if config.packing:
        return {"packing": True, "packing_strategy": "bfd"}
    if getattr(config, "group_by_length", False):
        return {"train_sampling_strategy": "group_by_length"}
    return {}


@dataclass
class SFTStrategy:
    name: str = "sft"
    description: str = ("Supervised fine-tuning with LoRA: chat, instruction or plain-text data; "
                        "document/summary pairs; SQuAD-style questions")
    tasks: tuple[str, ...] = ("text-generation", "summarization", "extractive-qa")
    data_kinds: tuple[str, ...] = ("conversation", "text", "summarization", "qa")
    # Summaries train a chat model as conversations; input/output pairs are document/summary pairs.
    data_converts: tuple[tuple[str, str], ...] = (("summarization", "conversation"), ("input-output", "summarization"))
    # LoRA, and trl's SFTTrainer computes the loss in chunks of 256 tokens (loss_type "chunked_nll",
    # its default): the batch's full logits never exist, which the memory estimate must know.
    memory: MemoryProfile = SFT_MEMORY
    own_process: bool = False
    multi_process: bool = True
    quantization: str | None = None  # qlora forces "4bit"

    def available(self) -> tuple[bool, str]:
        if self.quantization:
            import importlib.util

            if importlib.util.find_spec("bitsandbytes") is None:
                return False, "needs bitsandbytes (pip install bitsandbytes)"
        return True, ""

    def config_problems(self, config) -> list[Problem]:
        if self.quantization and config.quantization not in ("none", self.quantization):
            return [Problem(f"{self.name} means a {self.quantization} base; {config.quantization} contradicts it",
                            f"use strategy sft with quantization {config.quantization}, or quantization "
                            f"{self.quantization}", field="quantization")]
        return []

    def adjust_config(self, config):
        if self.quantization and config.quantization != self.quantization:
            return config.replace(quantization=self.quantization)
        return config

    def train(self, ctx) -> dict:
        if ctx.config.task == "summarization":
            from core.tasks import summarization

            seq2seq = bool(getattr(ctx.model.config, "is_encoder_decoder", False))
            return summarization.train_seq2seq(ctx) if seq2seq else summarization.train_causal(ctx)
        if ctx.config.task == "extractive-qa":
            from core.tasks import qa

            return qa.train(ctx)
        from datasets import Dataset
        from trl import SFTConfig, SFTTrainer

        from core.strategies.common import (lora_config, perplexity_scorer, train_save_evaluate, training_kwargs,
                                            with_eval_metrics)

        c = ctx.config
        # 1. data, in trl's shape
        train_rows = to_trl_rows(ctx.train_rows, ctx.tokenizer, c)
        _log_mask(ctx, train_rows)
        train_ds = Dataset.from_list(train_rows)
        eval_ds = Dataset.from_list(to_trl_rows(ctx.eval_rows, ctx.tokenizer, c)) if ctx.eval_rows else None
        # 2. trainer arguments, translated from the run config
        args = SFTConfig(
            **training_kwargs(ctx),
            max_length=c.max_length,
            **batching(c),
            # the labels built in to_trl_rows carry the mask (loss_on, train_turns, weights)
            dataset_num_proc=None,
        )
        # 3. trainer, with LoRA unless the provider already applied it (unsloth)
        peft = None if ctx.adapter_applied else lora_config(c)
        trainer = with_eval_metrics(SFTTrainer, perplexity_scorer)(
            model=ctx.model, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
            processing_class=ctx.tokenizer, peft_config=peft, callbacks=ctx.callbacks)
        # 4-6. train (resuming when asked), save the adapter and tokenizer, evaluate
        return train_save_evaluate(trainer, ctx, eval_ds, keep=("eval_loss",))


def qlora() -> SFTStrategy:
    """QLoRA: SFT with LoRA on a 4-bit NF4 base, offered by name (any strategy can also use
    ``quantization: 4bit``)."""
    return SFTStrategy(name="qlora", quantization="4bit",
                       description="SFT with LoRA on a 4-bit NF4 base (bitsandbytes)")
