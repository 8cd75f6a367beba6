"""RLHF in two stages within one run: a reward model, then the policy optimised against it.

1. **Reward model** (skipped when ``reward_model`` names one from an earlier run): the base
   model with a one-output sequence-classification head and LoRA (``task_type=SEQ_CLS``),
   trained by trl's RewardTrainer to score the chosen answer above the rejected one. Saved as
   an adapter (LoRA + the head) in ``RUN_DIR/reward_model``; its metrics are stored with the
   prefix ``reward_`` (``reward_accuracy``: the share of held-out pairs it orders correctly).
2. **Policy**: trl's GRPO (trl 1.14 has no PPO trainer) samples ``NUM_GENERATIONS`` answers per
   prompt, scores them with the reward model and moves the LoRA policy towards the better ones,
   with a KL penalty against the base (the policy with its adapter off, so no second copy).
   The mean reward and the KL of each logging step are stored as ``mean_reward`` and ``kl``.

Generation dominates the cost on a CPU, so answers are short (``MAX_COMPLETION_TOKENS``) and
prompts are cut to their last half of ``max_length``.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path

from core.plugins import MemoryProfile

NUM_GENERATIONS = 2          # answers sampled per prompt; more: better advantage estimates, slower
MAX_COMPLETION_TOKENS = 32   # longest sampled answer; generation dominates the cost on a CPU
KL_BETA = 0.04               # KL penalty weight; 0 would skip the reference pass (and the KL metric)
REWARD_DIR = "reward_model"
# The final metrics worth reporting (every eval metric is stored as a curve anyway).
REPORTED = ("eval_loss", "eval_reward", "eval_reward_std", "eval_kl")
REWARD_REPORTED = ("eval_loss", "eval_accuracy", "eval_margin", "eval_mean_reward")


@contextlib.contextmanager
def _expected_head_warnings_off():
    """Loading a causal LM as a classifier reports lm_head unused and the score head new: expected here."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def reward_dir(path: str | Path) -> Path:
    """The reward model folder that ``path`` names (a run folder of an earlier rlhf run is enough).

    Raises:
        ConfigError: no reward model there.
    """
    from core.errors import ConfigError

    p = Path(path).expanduser()
    if (p / REWARD_DIR).is_dir():
        p = p / REWARD_DIR
    if not (p / "adapter_config.json").exists() and not (p / "config.json").exists():
        raise ConfigError(f"no reward model in {p}",
                          "set reward_model to RUN_DIR/reward_model of an earlier rlhf run, or leave it empty")
    return p


def load_reward_model(path: str | Path, dtype=None):
    """Load a reward model (a ModelForge reward adapter or a full one-label classifier), merged.

    GRPO needs a plain ``PreTrainedModel`` as a reward function, so a LoRA adapter is merged into
    its base in memory.

    Raises:
        ConfigError: ``path`` holds no reward model.
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from core.models import prepare_tokenizer

    p = reward_dir(path)
    tokenizer = prepare_tokenizer(AutoTokenizer.from_pretrained(str(p)))
    with _expected_head_warnings_off():
        if (p / "adapter_config.json").exists():
            from peft import PeftModel

            base = json.loads((p / "adapter_config.json").read_text())["base_model_name_or_path"]
            model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1, dtype=dtype)
            model = PeftModel.from_pretrained(model, str(p)).merge_and_unload()
        else:
            model = AutoModelForSequenceClassification.from_pretrained(str(p), num_labels=1, dtype=dtype)
    model.config.pad_token_id = tokenizer.pad_token_id
    return model.eval(), tokenizer


@dataclass
class RLHFStrategy:
    name: str = "rlhf"
    description: str = "RLHF: a reward model (LoRA classifier) on the preference pairs, then GRPO against it"
    tasks: tuple[str, ...] = ("text-generation",)
    data_kinds: tuple[str, ...] = ("preference",)
    data_converts: tuple[tuple[str, str], ...] = ()
    # Two models train one after the other (reward model, then policy), each with checkpoints.
    memory: MemoryProfile = MemoryProfile(trained_models=2)
    own_process: bool = False
    multi_process: bool = True

    def config_problems(self, config) -> list:
        return []

    def available(self) -> tuple[bool, str]:
        return True, ""

    def adjust_config(self, config):
        if config.reward_model:
            reward_dir(config.reward_model)  # a wrong path fails now, before any model loads
        # Each batch must hold whole groups of NUM_GENERATIONS answers to the same prompt.
        if config.batch_size % NUM_GENERATIONS:
            return config.replace(batch_size=config.batch_size + NUM_GENERATIONS - config.batch_size % NUM_GENERATIONS)
        return config

    def train(self, ctx) -> dict:
        metrics: dict = {}
        # Stage 1: the reward model, trained here or reused from an earlier run
        if ctx.config.reward_model:
            reward_path = Path(ctx.config.reward_model)
        elif (ctx.run_dir / REWARD_DIR / "adapter_config.json").exists() and ctx.resume_from:
            reward_path = ctx.run_dir / REWARD_DIR  # resuming stage 2: stage 1 is done
        else:
            reward_path, metrics = self.train_reward_model(ctx)
            if ctx.stopped():
                return {}
        # Stage 2: the policy against it
        return {**metrics, **self.train_policy(ctx, reward_path)}

    def train_reward_model(self, ctx) -> tuple[Path, dict]:
        from transformers import AutoModelForSequenceClassification
        from trl import RewardConfig, RewardTrainer

        from core.models import resolve_model_path
        from core.strategies.common import (dataset, final_metrics, fit_preference, log_recorder, lora_config, quiet,
                                            save, training_kwargs)

        c = ctx.config
        # 1. the base with a one-output head (the head is trained fully, the body through LoRA)
        base = resolve_model_path(c.model, trust_remote_code=c.trust_remote_code, task=c.task)
        with _expected_head_warnings_off():
            model = AutoModelForSequenceClassification.from_pretrained(
                base, num_labels=1, dtype=getattr(ctx.model, "dtype", None), trust_remote_code=c.trust_remote_code)
        model.config.pad_token_id = ctx.tokenizer.pad_token_id
        # 2. data: pairs rendered with the chat template and fitted to max_length
        train_ds = dataset(fit_preference(ctx.train_rows, ctx.tokenizer, c.max_length))
        eval_ds = dataset(fit_preference(ctx.eval_rows, ctx.tokenizer, c.max_length))
        # 3. trainer; its curves are stored as reward_* (the EventCallback follows stage 2)
        kw = training_kwargs(ctx)
        kw.update(output_dir=str(ctx.run_dir / "reward_checkpoints"), save_strategy="no")
        args = RewardConfig(**kw, max_length=None,  # fitted above; None: no row is dropped
                            dataset_num_proc=None)
        def stored_as(key: str) -> str | None:
            return None if key in ("learning_rate", "grad_norm", "train_loss") else "reward_" + key

        recorder = log_recorder(ctx, stored_as, stage="reward model")
        trainer = RewardTrainer(model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
                                processing_class=ctx.tokenizer, peft_config=lora_config(c, "SEQ_CLS"),
                                callbacks=[recorder])
        quiet(trainer)
        # 4. train
        trainer.train()
        if ctx.stopped():
            return ctx.run_dir / REWARD_DIR, {}
        # 5. save the adapter (LoRA + head) and tokenizer
        out = ctx.run_dir / REWARD_DIR
        save(trainer, ctx, out)
        # 6. evaluate: reward accuracy on the held-out pairs (train accuracy when there are none)
        found = final_metrics(trainer, eval_ds, keep=REWARD_REPORTED)
        found = {k.removeprefix("eval_"): v for k, v in found.items()}
        if not found:
            found = {k: v for k, v in _last_logged(trainer).items() if k in ("accuracy", "margin", "loss")}
        return out, {"reward_" + k: v for k, v in found.items()}

    def train_policy(self, ctx, reward_path: Path) -> dict:
        from trl import GRPOConfig, GRPOTrainer

        from core.strategies.common import (dataset, final_metrics, fit_prompt, last_train_loss, log_recorder,
                                            peft_for, quiet, save, training_kwargs)

        c = ctx.config
        # 1. the reward model, merged into a plain classifier (GRPO calls it as a reward function)
        reward_model, reward_tokenizer = load_reward_model(reward_path, dtype=getattr(ctx.model, "dtype", None))
        # 2. data: only the prompts, rendered for generation and cut to half of max_length
        def prompts(rows):
            return [{"prompt": fit_prompt(r["prompt"], ctx.tokenizer, c.max_length // 2)} for r in rows]

        train_ds, eval_ds = dataset(prompts(ctx.train_rows)), dataset(prompts(ctx.eval_rows))
        # 3. trainer arguments: short sampled answers, a KL penalty against the base
        args = GRPOConfig(**training_kwargs(ctx), num_generations=NUM_GENERATIONS,
                          max_completion_length=min(MAX_COMPLETION_TOKENS, c.max_length // 2), beta=KL_BETA)
        recorder = log_recorder(ctx, {"reward": "mean_reward", "kl": "kl"}.get)
        trainer = GRPOTrainer(model=ctx.model, reward_funcs=reward_model, args=args, train_dataset=train_ds,
                              eval_dataset=eval_ds, processing_class=ctx.tokenizer,
                              reward_processing_classes=reward_tokenizer, peft_config=peft_for(ctx),
                              callbacks=[*ctx.callbacks, recorder])
        quiet(trainer)
        ctx.trainer = trainer
        # 4. train
        trainer.train(resume_from_checkpoint=ctx.resume_from)
        if ctx.stopped():
            return {}
        # 5. save the policy's adapter and tokenizer
        save(trainer, ctx)
        # 6. evaluate: mean reward and KL of the last step, and on the held-out prompts
        last = _last_logged(trainer)
        return {"train_loss": last_train_loss(trainer), "mean_reward": last.get("reward"), "kl": last.get("kl"),
                **final_metrics(trainer, eval_ds, keep=REPORTED)}


def _last_logged(trainer) -> dict:
    """The last training log entry (not an evaluation, not the end-of-training summary)."""
    for entry in reversed(trainer.state.log_history):
        if "loss" in entry:
            return entry
    return {}
