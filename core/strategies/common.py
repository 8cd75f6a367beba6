"""What every strategy shares: translating the run config into trl/peft arguments, and the
small steps each strategy repeats.

One function per translation (config -> TrainingArguments kwargs, config -> LoraConfig), so the
strategies stay short and read top to bottom. Mirrors trl's ``ModelConfig -> get_peft_config``.
Also here: rows -> datasets (``dataset``, ``fit_preference``, ``fit_prompt``), saving
(``save``), final metrics (``final_metrics``), per-evaluation metrics (``with_eval_metrics``)
and extra metric curves from a trainer's logs (``log_recorder``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from pathlib import Path

    from core.run import TrainContext


# Task heads that start untrained: trained fully and saved with the adapter, never given LoRA
# themselves ("all-linear" would otherwise wrap them, and peft refuses both at once).
HEADS = {"QUESTION_ANS": ["qa_outputs"], "SEQ_CLS": ["score", "classifier"]}


def lora_config(config, task_type: str = "CAUSAL_LM"):
    from peft import LoraConfig

    targets = config.lora_target_modules.strip()
    heads = HEADS.get(task_type)
    return LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=targets if targets == "all-linear" else [t.strip() for t in targets.split(",") if t.strip()],
        exclude_modules=heads,
        modules_to_save=heads,
        task_type=task_type,
        bias="none",
    )


def training_kwargs(ctx: "TrainContext", *, lora: bool = True) -> dict[str, Any]:
    """Arguments common to every trl config (SFTConfig, DPOConfig, ...).

    Args:
        ctx: the run's context.
        lora: the trainer trains LoRA adapters (every built-in strategy does). Pass False for a
            strategy that trains the base weights themselves (the full fine-tune example).
    """
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
        # bf16 on a CPU too: bf16 base weights under autocast, fp32 LoRA adapters (peft's default)
        # and AdamW state, measured faster than without autocast (benchmarks/cpu_speed.py).
        bf16=ctx.dtype == "bf16",
        fp16=ctx.dtype == "fp16",
        # The trainer compiles the model (accelerate's dynamo plugin) and unwraps it to save.
        torch_compile=getattr(ctx, "compile_model", False),
        remove_unused_columns=True,
        # A NaN/inf step loss must reach the logs: the EventCallback fails the run on it, and the
        # default filter would log the running mean instead (the engine's NaN guard also turns
        # it off, for trainers built without these arguments).
        logging_nan_inf_filter=False,
    )
    if lora:
        # Multi-process (DDP) runs: LoRA's frozen base has no gradients to reduce and every
        # adapter is used each step, so DDP need not walk the graph after each forward pass to
        # look for unused parameters (transformers searches by default for a PeftModel).
        kw["ddp_find_unused_parameters"] = False
    if has_eval and c.eval_steps:
        kw["eval_steps"] = c.eval_steps
    from core.trackers import early_stopping_kwargs  # checkpoints at each evaluation, best one kept

    kw.update(early_stopping_kwargs(c, has_eval))
    return kw


def quiet(trainer) -> None:
    """Drop transformers' stdout printer: progress goes through events (and --json owns stdout)."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)


def last_train_loss(trainer) -> float | None:
    for entry in reversed(trainer.state.log_history):
        if "loss" in entry:
            return float(entry["loss"])
        if "train_loss" in entry:
            return float(entry["train_loss"])
    return None


def peft_for(ctx: "TrainContext", task_type: str = "CAUSAL_LM"):
    """The LoRA config for the trainer, or None when the provider already applied LoRA (unsloth)."""
    if ctx.adapter_applied:
        return None
    return lora_config(ctx.config, task_type)


def with_lora(ctx: "TrainContext", task_type: str):
    """The context's model wrapped in LoRA, for transformers trainers (which, unlike trl's, take no
    peft_config). A 4-bit/8-bit base is prepared for k-bit training first, as trl does."""
    from peft import get_peft_model, prepare_model_for_kbit_training

    peft = peft_for(ctx, task_type)
    if peft is None:
        return ctx.model
    model = ctx.model
    if getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False):
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=ctx.config.gradient_checkpointing)
    return get_peft_model(model, peft)


def dataset(rows: list[dict]):
    """A datasets.Dataset from canonical rows (None for no rows: no evaluation)."""
    from datasets import Dataset

    return Dataset.from_list(rows) if rows else None


def save(trainer, ctx: "TrainContext", out: "Path | None" = None) -> None:
    """The trained weights (the LoRA adapter) and the tokenizer, together in ``out`` (default
    ``ctx.model_dir``).

    In a multi-process run only the process that saves (``args.should_save``: world rank 0)
    writes: ``trainer.save_model`` checks that itself, the tokenizer is checked here (every rank
    writing the same files at once could leave them mixed). Then every process waits until the
    files are written, so that none reads them half-written (rlhf's policy stage loads the reward
    model saved just before).
    """
    out = ctx.model_dir if out is None else out
    trainer.save_model(str(out))
    if trainer.args.should_save:
        ctx.tokenizer.save_pretrained(str(out))
    accelerator = getattr(trainer, "accelerator", None)
    if accelerator is not None:
        accelerator.wait_for_everyone()


def train_save_evaluate(trainer, ctx: "TrainContext", eval_ds, **metrics) -> dict:
    """The tail every strategy shares once its trainer is built: train (resuming from
    ``ctx.resume_from`` when asked), save the weights with the tokenizer (:func:`save`), and
    evaluate on ``eval_ds`` (``metrics``: :func:`final_metrics`'s options). A run stopped by the
    user returns ``{}`` at once: its checkpoint is what counts, the engine records it."""
    quiet(trainer)
    ctx.trainer = trainer  # the engine reads it when the run ends (stop, failure)
    trainer.train(resume_from_checkpoint=ctx.resume_from)
    if ctx.stopped():
        return {}
    save(trainer, ctx)
    best = best_step(trainer)
    if best is not None:  # early stopping: the model is the best checkpoint's, evaluate that one
        from core.evaluation import quality_metrics

        found = {k: v for k, v in quality_metrics(trainer.evaluate()).items() if k.startswith("eval_")}
        return {"train_loss": last_train_loss(trainer), "best_step": best, **found}
    return {"train_loss": last_train_loss(trainer), **final_metrics(trainer, eval_ds, **metrics)}


def best_step(trainer) -> int | None:
    """The step of the best checkpoint, when the run kept the best one (early stopping)."""
    import re

    if not getattr(trainer.args, "load_best_model_at_end", False):
        return None
    found = re.search(r"checkpoint-(\d+)$", str(trainer.state.best_model_checkpoint or ""))
    return int(found.group(1)) if found else None


def fit_preference(rows: list[dict], tokenizer, max_length: int) -> list[dict]:
    """Render preference rows with the chat template as text, cut so prompt + each answer fit.

    The prompt keeps its last half of ``max_length`` (the question sits at its end), the answers
    their beginnings. For trainers that drop or mangle over-long rows instead of truncating
    them well (trl 1.14's ORPO and RewardTrainer).
    """
    from trl import maybe_apply_chat_template

    def ids(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    out = []
    for row in rows:
        text = maybe_apply_chat_template(row, tokenizer)
        prompt_ids = ids(text["prompt"])[-(max_length // 2):]
        room = max_length - len(prompt_ids) - 1  # -1: the end-of-sequence token trl appends
        out.append({"prompt": tokenizer.decode(prompt_ids),
                    "chosen": tokenizer.decode(ids(text["chosen"])[:room]),
                    "rejected": tokenizer.decode(ids(text["rejected"])[:room])})
    return out


def fit_prompt(messages: list[dict], tokenizer, max_tokens: int) -> str:
    """A chat prompt rendered for generation (template + assistant header), keeping its last
    ``max_tokens`` tokens."""
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tokenizer.decode(tokenizer(text, add_special_tokens=False)["input_ids"][-max_tokens:])


def final_metrics(trainer, eval_ds, *, perplexity: bool = False, keep: tuple[str, ...] | None = None) -> dict:
    """The quality metrics of a final evaluation (loss, rewards, ROUGE, EM/F1, ...).

    Reuses an evaluation already run at the last step (its log entry) instead of running it
    twice. ``perplexity`` adds exp(eval_loss), meaningful only for a token-level LM loss.
    ``keep`` names the ones worth reporting (see core.evaluation.select); every eval metric is
    stored as a curve anyway (EventCallback.on_evaluate).
    """
    from core.evaluation import perplexity as ppl
    from core.evaluation import quality_metrics, select

    if eval_ds is None:
        return {}
    step = trainer.state.global_step
    done = [e for e in trainer.state.log_history if "eval_loss" in e and e.get("step") == step]
    metrics = quality_metrics(done[-1] if done else trainer.evaluate())
    metrics = {k: v for k, v in metrics.items() if k.startswith("eval_")}
    if keep is not None:
        metrics = select(metrics, keep + ("eval_perplexity",))
    if "eval_perplexity" in metrics:
        metrics["perplexity"] = metrics.pop("eval_perplexity")
    elif perplexity and "eval_loss" in metrics:
        metrics["perplexity"] = ppl(metrics["eval_loss"])
    return metrics


def with_eval_metrics(trainer_cls, *scorers, predictions: bool = False):
    """``trainer_cls`` whose every evaluation also reports what each scorer computes.

    The one trainer subclass for task metrics (it replaced three copies): a scorer is
    ``scorer(trainer, output, prefix) -> {name: value}``, the names without the ``eval_`` prefix;
    see :func:`perplexity_scorer`, ``core.tasks.summarization.rouge_scorer`` and
    ``core.tasks.qa.squad_scorer``. ``predictions``: the scorers need the model's predictions
    (span logits), which a loss-only evaluation would not keep.
    """

    class ScoredTrainer(trainer_cls):
        def evaluation_loop(self, dataloader, description, prediction_loss_only=None, ignore_keys=None,
                            metric_key_prefix="eval"):
            output = super().evaluation_loop(dataloader, description,
                                             prediction_loss_only=False if predictions else prediction_loss_only,
                                             ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix)
            for scorer in scorers:
                found = scorer(self, output, metric_key_prefix)
                output.metrics.update({f"{metric_key_prefix}_{k}": v for k, v in found.items()})
            return output

    ScoredTrainer.__name__ = ScoredTrainer.__qualname__ = f"Scored{trainer_cls.__name__}"
    return ScoredTrainer


def perplexity_scorer(trainer, output, prefix: str) -> dict:
    """perplexity = exp(eval loss), for trainers whose eval loss is a per-token language-model loss
    (SFT, summarization); the EventCallback stores it as ``perplexity``. Preference and RL losses
    have no perplexity."""
    from core.evaluation import perplexity

    loss = output.metrics.get(f"{prefix}_loss")
    return {} if loss is None else {"perplexity": perplexity(loss)}


def event_callback(ctx: "TrainContext"):
    """The engine's EventCallback among ``ctx.callbacks`` (None when a test built ctx without one)."""
    return next((cb for cb in ctx.callbacks if hasattr(cb, "store") and hasattr(cb, "run_id")), None)


def log_recorder(ctx: "TrainContext", name_of, stage: str = ""):
    """A TrainerCallback that stores chosen keys of the trainer's logs as metric curves.

    The EventCallback stores the loss and the usual training figures; a strategy whose trainer
    logs more (GRPO: reward, kl) or that runs a second trainer (rlhf's reward model, whose
    metrics are stored as reward_*) adds one of these. ``name_of(key)`` gives the stored name of
    a log key, or None to skip it. It also carries the user's Stop into a trainer that has no
    EventCallback.

    Args:
        ctx: the run's context (its EventCallback gives the store, run id and event log).
        name_of: log key -> stored metric name, or None.
        stage: a word prefixed to the progress messages (e.g. "reward model").
    """
    from transformers import TrainerCallback

    from core.evaluation import quality_metrics

    owner = event_callback(ctx)

    class LogRecorder(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            values = {name_of(k): v for k, v in quality_metrics(dict(logs or {})).items() if name_of(k)}
            if owner is not None and values:
                owner.store.add_metrics(owner.run_id, state.global_step, values)
                text = ", ".join(f"{k} {v:.4g}" for k, v in values.items())
                owner.events.emit("log", step=state.global_step, total_steps=state.max_steps,
                                  message=f"{stage} step {state.global_step}: {text}" if stage else text)

        def on_step_end(self, args, state, control, **kwargs):
            if ctx.stopped():
                control.should_training_stop = True
            return control

    return LogRecorder()
