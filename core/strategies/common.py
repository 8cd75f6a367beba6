"""What every strategy shares: translating the run config into trl/peft arguments.

One function per translation (config -> TrainingArguments kwargs, config -> LoraConfig), so the
strategies stay short and read top to bottom. Mirrors trl's ``ModelConfig -> get_peft_config``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from core.engine import TrainContext


def lora_config(config, task_type: str = "CAUSAL_LM"):
    from peft import LoraConfig

    targets = config.lora_target_modules.strip()
    return LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=targets if targets == "all-linear" else [t.strip() for t in targets.split(",") if t.strip()],
        task_type=task_type,
        bias="none",
    )


def training_kwargs(ctx: "TrainContext") -> dict[str, Any]:
    """Arguments common to every trl config (SFTConfig, DPOConfig, ...)."""
    c = ctx.config
    has_eval = bool(ctx.eval_rows)
    kw: dict[str, Any] = dict(
        output_dir=str(ctx.checkpoint_dir),
        max_steps=c.max_steps if c.max_steps > 0 else -1,
        num_train_epochs=c.num_epochs,
        learning_rate=c.learning_rate,
        lr_scheduler_type=c.lr_scheduler,
        warmup_steps=c.warmup_steps,
        weight_decay=c.weight_decay,
        per_device_train_batch_size=c.batch_size,
        per_device_eval_batch_size=c.batch_size,
        gradient_accumulation_steps=c.gradient_accumulation_steps,
        gradient_checkpointing=c.gradient_checkpointing,
        logging_steps=c.logging_steps,
        logging_first_step=True,
        eval_strategy=("steps" if c.eval_steps else "epoch") if has_eval else "no",
        save_strategy="steps",
        save_steps=c.save_steps,
        save_total_limit=c.save_total_limit,
        seed=c.seed,
        data_seed=c.seed,
        report_to=[],
        disable_tqdm=True,          # the CLI and the app draw their own progress from events
        dataloader_num_workers=0,   # workers would fork a process holding the model
        use_cpu=ctx.device == "cpu",
        bf16=ctx.dtype == "bf16",
        fp16=ctx.dtype == "fp16",
        remove_unused_columns=True,
    )
    if has_eval and c.eval_steps:
        kw["eval_steps"] = c.eval_steps
    return kw


def quiet(trainer) -> None:
    """Drop transformers' stdout printer: progress goes through events (and --json owns stdout)."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)


def final_eval(trainer, eval_ds) -> dict:
    """eval_loss/perplexity at the end, reusing an evaluation already run at the last step."""
    import math

    if eval_ds is None:
        return {}
    step = trainer.state.global_step
    done = [e for e in trainer.state.log_history if "eval_loss" in e and e.get("step") == step]
    loss = done[-1]["eval_loss"] if done else trainer.evaluate()["eval_loss"]
    return {"eval_loss": float(loss), "perplexity": math.exp(min(float(loss), 50))}


def last_train_loss(trainer) -> float | None:
    for entry in reversed(trainer.state.log_history):
        if "loss" in entry:
            return float(entry["loss"])
        if "train_loss" in entry:
            return float(entry["train_loss"])
    return None
