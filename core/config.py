"""The run configuration: one typed dataclass that is the single source of truth.

The CLI flags (``modelforge train --lora-r 16``), the YAML files and the app's Configure
form are all generated from :class:`RunConfig`'s fields and their ``metadata``:

- ``help``: the text shown by ``--help``, the YAML comments and the form.
- ``section``: which group of the form (and of ``--help``) the field belongs to.
- ``choices``: allowed values, checked by :func:`config_problems`.
- ``plugin``: the value names a plugin ("strategy" or "provider"); the allowed values are the
  registered plugins, which this module does not know: :mod:`core.checks` checks them.
- ``min`` / ``max``: numeric bounds, checked by :func:`config_problems`.

A saved run records the whole config (``config.yaml`` in the run folder and the ``config``
column of its record), so any result can be reproduced.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from core import limits
from core.errors import ConfigError, Problem
from core.hardware import CPU_BF16_SPEEDUP

TASKS = ("text-generation", "summarization", "extractive-qa")
DATA_FORMATS = (
    "auto",
    "alpaca",
    "sharegpt",
    "messages",
    "prompt-completion",
    "text",
    "input-output",
    "preference",
    "sharegpt-preference",
    "preference-messages",
    "summarization",
    "squad",
)
QUANTIZATION = ("none", "4bit", "8bit")
PRECISION = ("auto", "bf16", "fp16", "fp32")
COMPILE = ("auto", "on", "off")
SCHEDULERS = ("linear", "cosine", "constant", "constant_with_warmup")
LOSS_ON = ("completion", "all")
TRAIN_TURNS = ("all", "last")  # the same as core.data.chat.TRAIN_TURNS
REASONING = ("train", "drop")
DISTRIBUTED = ("ddp", "fsdp", "deepspeed")

# Names safe as folder names: no path separators, no "..", no control characters.
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def _f(default: Any, help: str, section: str, **extra: Any) -> Any:
    """A dataclass field with its help text and form section in ``metadata``."""
    meta = {"help": help, "section": section, **extra}
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class RunConfig:
    """Everything that defines one fine-tuning run."""

    # --- model -----------------------------------------------------------------------
    model: str = _f(
        "demo",
        "Base model: 'demo' (a tiny model built offline), a local folder, or a Hugging Face "
        "hub id such as 'Qwen/Qwen2.5-0.5B-Instruct' (needs network the first time).",
        "model",
    )
    provider: str = _f("huggingface", "Loading/training back-end.", "model", plugin="provider")
    strategy: str = _f(
        "sft", "Training strategy. 'qlora' is SFT with LoRA on a 4-bit base.", "model",
        plugin="strategy",
    )
    task: str = _f("text-generation", "What the model should learn to do.", "model", choices=TASKS)
    trust_remote_code: bool = _f(
        False,
        "Run Python code shipped with a hub model. Off by default: only turn on for models "
        "you trust.",
        "model",
    )
    reward_model: str = _f(
        "",
        "rlhf only: a reward model from an earlier run (its folder RUN_DIR/reward_model, or any "
        "sequence-classification model with one label). Empty: train one on the preference data first.",
        "model",
    )
    # --- data ------------------------------------------------------------------------
    dataset: str = _f(
        "",
        "Training data: a .json, .jsonl, .csv, .parquet or .txt file (or a hub dataset id when "
        "online).",
        "data",
    )
    dataset_format: str = _f(
        "auto", "Format of the data; 'auto' detects it from the columns.", "data",
        choices=DATA_FORMATS,
    )
    column_map: dict = _f(
        {},
        "Rename columns before detection, e.g. {question: instruction, answer: output}. "
        "CLI: --column-map question=instruction,answer=output",
        "data",
    )
    template_vars: dict = _f(
        {"name": "Forge", "author": "ModelForge"},
        "Values substituted for {{placeholders}} in the data (the identity demo uses "
        "{{name}} and {{author}}). CLI: --template-vars name=Ada,author=Me",
        "data",
    )
    system_prompt: str = _f(
        "", "System message added to every conversation that has none (empty: none).", "data"
    )
    chat_template: str = _f(
        "",
        "How conversations are rendered: empty = the model's own chat template (ChatML if it has none); "
        "chatml, llama3, qwen, gemma, mistral or phi; or a path to a .jinja file. Checked on the data "
        "before training and saved with the model, so the Playground and export use the same.",
        "data",
    )
    train_turns: str = _f(
        "all",
        "Which assistant turns of a conversation are trained: 'all' (every answer, the default) or "
        "'last' (only the final one; the earlier ones are context). Messages with weight 0 are never "
        "trained, weight 1 always (when 'all').",
        "data", choices=TRAIN_TURNS,
    )
    reasoning: str = _f(
        "train",
        "Reasoning in the data (reasoning_content/thinking fields or parts): 'train' keeps it, rendered "
        "as the chat template shows it (a <think> block otherwise), and trains on it with its answer; "
        "'drop' removes it.",
        "data", choices=REASONING,
    )
    validation_split: float = _f(
        -1.0,
        "Share of rows held out for evaluation. -1 (or 'auto', the default): 5% once the data has "
        "200 rows, none below (tiny data needs every row for training); 0: none; 0.1: 10%. At most "
        "300 rows are held out, and the run's log says what was chosen.",
        "data", min=-1.0, max=0.5, auto=-1.0,
    )
    max_samples: int = _f(0, "Use at most this many rows (0: all). Handy for quick trials.", "data", min=0)
    text_chunk_chars: int = _f(
        2000,
        "A .txt file with no blank lines (one long text) is cut into pieces of about this many characters, "
        "at line or word boundaries (~500 tokens of English at 2000). Files with blank lines give one "
        "example per block.",
        "data", min=100,
    )
    # --- LoRA / quantisation ---------------------------------------------------------------
    lora_r: int = _f(8, "LoRA rank. Higher: better fit, more memory.", "lora", min=1, max=1024)
    lora_alpha: int = _f(16, "LoRA scaling (alpha). Usually 2x the rank.", "lora", min=1)
    lora_dropout: float = _f(0.05, "Dropout on the LoRA path; 0 for tiny data.", "lora", min=0.0, max=0.9)
    lora_target_modules: str = _f(
        "all-linear",
        "Which layers get adapters: 'all-linear' (best quality) or a comma list such as "
        "'q_proj,v_proj' (less memory).",
        "lora",
    )
    quantization: str = _f(
        "none", "Load the base in 4-bit (QLoRA) or 8-bit to save memory.", "lora",
        choices=QUANTIZATION,
    )
    # --- training ----------------------------------------------------------------------------
    num_epochs: float = _f(3.0, "Passes over the training data (ignored when max_steps > 0).", "training", min=0.0)
    max_steps: int = _f(0, "Stop after this many optimizer steps (0: use num_epochs).", "training", min=0)
    learning_rate: float = _f(
        2e-4, "Peak learning rate. 1e-4..3e-4 suits LoRA on real models; the untrained demo model needs "
        "a high one: 0.003 (3e-3) in the identity demo.",
        "training", min=0.0, max=1.0,
    )
    lr_scheduler: str = _f("linear", "Learning-rate schedule after warm-up.", "training", choices=SCHEDULERS)
    warmup_steps: int = _f(0, "Steps of linear warm-up.", "training", min=0)
    weight_decay: float = _f(0.0, "AdamW weight decay.", "training", min=0.0, max=1.0)
    batch_size: int = _f(4, "Examples per device per step. Lower it if you run out of memory.", "training", min=1)
    gradient_accumulation_steps: int = _f(
        1, "Steps whose gradients add up before an update: same effective batch, less memory.",
        "training", min=1,
    )
    max_length: int = _f(
        512, "Longest sequence in tokens; longer examples are truncated. More: more memory.",
        "training", min=16,
    )
    packing: bool = _f(
        False,
        "Pack several short examples into each sequence of max_length tokens (no padding at all). "
        "A step then holds batch_size full sequences: many more examples per step than without.",
        "training",
    )
    group_by_length: bool = _f(
        True,
        "SFT: batch examples of similar length together, so little compute goes to padding (on "
        "typical chat data 0.98 of the computed tokens are real, 0.58 with random batches), at the "
        "same examples per step. Ignored when packing.",
        "training",
    )
    loss_on: str = _f(
        "completion",
        "Train on the answer only ('completion', the usual choice) or on the whole text ('all').",
        "training", choices=LOSS_ON,
    )
    gradient_checkpointing: bool = _f(
        False, "Recompute activations in the backward pass: much less memory, ~30% slower.", "training"
    )
    precision: str = _f(
        "auto",
        "Numeric precision. 'auto': bf16 on GPUs that support it, fp16 on older GPUs; on a CPU, "
        "bf16 weights (LoRA adapters stay fp32) when the CPU has bf16 matrix instructions "
        f"(AVX-512 bf16 / AMX) and trains on 2 or more threads (measured {CPU_BF16_SPEEDUP} faster than "
        "fp32, same loss), else fp32. `modelforge hardware` shows what auto means here and why.",
        "training",
        choices=PRECISION,
    )
    compile: str = _f(
        "auto",
        "Compile the model with torch.compile: faster steps after a slow first one (~1 min of "
        "compiling on a CPU, and about as much again when a new batch length first comes). 'auto': on "
        "only when the run is long enough to win the compile time back (the Train tab says which and "
        "why); 'on'/'off' force it; a resume may change it. Tested with LoRA SFT (packing, length "
        "grouping), DPO, KTO, ORPO and several DDP processes. Trains eager, saying why, where it "
        "cannot compile (Apple MPS, a 4/8-bit base, unsloth, FSDP/DeepSpeed, no C++ compiler) or "
        "when compiling fails before the first step.",
        "training",
        choices=COMPILE,
    )
    seed: int = _f(42, "Random seed for shuffling, splitting and initialisation.", "training")
    # --- evaluation / checkpoints ----------------------------------------------------------------
    logging_steps: int = _f(5, "Log the training loss every N steps.", "evaluation", min=1)
    eval_steps: int = _f(
        0, "Evaluate every N steps (0: once per epoch and at the end).", "evaluation", min=0
    )
    save_steps: int = _f(
        100, "Save a checkpoint every N steps (stop and resume use them).", "evaluation", min=1
    )
    save_total_limit: int = _f(2, "Keep at most this many checkpoints.", "evaluation", min=1)
    # issue 16 (core/compare_eval.py, core/trackers.py): base-vs-tuned comparison, early stopping, trackers
    compare_after_training: bool = _f(
        True,
        "After a run with validation rows, the base and the tuned model answer the held-out prompts "
        "(greedy) and are scored with the task's metrics (Models tab, `modelforge evaluate`).",
        "evaluation",
    )
    compare_max_rows: int = _f(
        0, "Rows that comparison evaluates (0: automatic: 16 on a CPU, 200 on a GPU).", "evaluation", min=0)
    compare_max_new_tokens: int = _f(
        0, "Longest answer generated for that comparison (0: automatic: 48 tokens on a CPU, 256 on a GPU).",
        "evaluation", min=0)
    early_stopping_patience: int = _f(
        0,
        "Stop when the eval loss has not improved for this many evaluations (0: off), and keep the best "
        "checkpoint as the model. Needs validation rows; checkpoints are then saved at each evaluation.",
        "evaluation", min=0)
    report_to: str = _f(
        "none",
        "Also log to a tracker: 'tensorboard' (event files in RUN_DIR/tensorboard), 'mlflow' (a local "
        "store in RUN_DIR/mlruns unless MLFLOW_TRACKING_URI is set), 'wandb' (offline unless WANDB_MODE "
        "says otherwise). 'none': no tracker, no network.",
        "evaluation", choices=("none", "tensorboard", "mlflow", "wandb"))
    # --- output ----------------------------------------------------------------------------------
    name: str = _f(
        "", "Name of the run and of the model it makes (letters, digits, . _ -). Empty: named after the "
            "data file and the strategy, e.g. alpaca_en_demo-sft (then -2, -3 ...).",
        "output",
    )
    output_dir: str = _f(
        "", "Where the run folder goes. Empty: MODELFORGE_HOME/runs/<run id>.", "output"
    )
    # --- distributed (several GPUs or machines, through `accelerate launch`) ----------------------
    num_processes: int = _f(
        1,
        "Training processes, one per GPU, over all machines. 1: train in this process (the usual "
        "case). More: `accelerate launch` starts that many data-parallel processes; each takes "
        "batch_size examples per step, so the effective batch is batch_size x "
        "gradient_accumulation_steps x num_processes.",
        "distributed", min=1, max=4096,
    )
    distributed: str = _f(
        "ddp",
        "How the processes share the work when num_processes > 1: 'ddp' (a full copy of the model "
        "per GPU; fastest when the model fits one GPU), 'fsdp' (parameters, gradients and "
        "optimizer state sharded over the GPUs: for models too big for one), 'deepspeed' (ZeRO "
        "stage 2: optimizer state and gradients sharded; needs the deepspeed package).",
        "distributed", choices=DISTRIBUTED,
    )
    num_machines: int = _f(
        1,
        "Machines taking part. More than 1: run the same command on every machine, each with its "
        "own machine_rank, and num_processes counting the processes of all machines.",
        "distributed", min=1, max=1024,
    )
    machine_rank: int = _f(
        0,
        "This machine's rank, 0..num_machines-1. The machine with rank 0 runs the main process: "
        "it writes the events, the records, the checkpoints and the model.",
        "distributed", min=0,
    )
    main_process_ip: str = _f(
        "",
        "Multi-machine only: the address of the machine with machine_rank 0, reachable from "
        "every machine (e.g. 10.0.0.1).",
        "distributed",
    )
    main_process_port: int = _f(
        29500,
        "Multi-machine only: the port on the rank-0 machine where the processes meet (open it "
        "in the firewall). On one machine a free port is picked automatically.",
        "distributed", min=1, max=65535,
    )

    # -- helpers ------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict, source: str = "config",
                  choices: dict[str, tuple[str, ...]] | None = None) -> "RunConfig":
        """Build from a mapping, rejecting unknown keys and wrong types (all at once).

        When it refuses the mapping, the answer also lists the values that have the right type
        but are out of range or not one of their choices, so that one answer names every field
        to fix (a valid mapping is range-checked later, by :func:`config_problems`, with the
        checks that relate fields to each other). ``choices``: the allowed values of the fields
        that name a plugin (see :func:`core.checks.parse_config`, which passes them).

        Raises:
            ConfigError: listing every unknown key, every value of the wrong type and every
                well-typed value outside its range or choices.
        """
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: expected a mapping of field: value, got {type(data).__name__}.")
        problems: list[Problem] = []
        known = {f.name: f for f in fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            if key not in known:
                close = difflib.get_close_matches(limits.clip(key, 64).replace("-", "_"), list(known), n=1, cutoff=0.6)
                hint = f"did you mean '{close[0]}'?" if close else "remove it; see `modelforge train --help` for the fields"
                problems.append(Problem(f"unknown field {limits.brief(key)}", hint, file=source,
                                        field=limits.clip(key, 64)))
                continue
            try:
                kwargs[key] = coerce(known[key], value)
            except ValueError as exc:
                problems.append(Problem(str(exc), f"give {key} a {_type_name(known[key])}", file=source, field=key))
        if problems:
            for key, value in kwargs.items():
                problems += field_problems(known[key], value, source, (choices or {}).get(key))
            raise ConfigError(f"{source} has {len(problems)} problem(s).", problems=problems)
        return cls(**kwargs)

    def replace(self, **changes: Any) -> "RunConfig":
        return dataclasses.replace(self, **changes)


def field_choices(f: dataclasses.Field) -> tuple[str, ...] | None:
    """Allowed values of a field as declared here. The fields that name a plugin (``plugin`` in
    their metadata) have none here: :func:`core.checks.field_choices` adds the registered names."""
    return f.metadata.get("choices")


def config_fields() -> list[dataclasses.Field]:
    """The fields of RunConfig in declaration order (what the CLI and the form iterate)."""
    return list(fields(RunConfig))


def _type_name(f: dataclasses.Field) -> str:
    t = f.type if isinstance(f.type, str) else f.type.__name__
    return {"str": "text value", "int": "whole number", "float": "number", "bool": "true/false",
            "dict": "mapping"}.get(t, t)


def parse_mapping(text: str) -> dict:
    """Parse ``a=b,c=d`` (the CLI form of a mapping field) into a dict."""
    out: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        if "=" not in part:
            raise ValueError(f"'{part}' is not key=value")
        k, v = part.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def mapping_text(mapping: dict | str | None) -> str:
    """``{a: b, c: d}`` -> ``a=b,c=d``: a mapping field as the CLI and the form write it."""
    if isinstance(mapping, str):
        return mapping
    return ",".join(f"{k}={v}" for k, v in (mapping or {}).items())


def to_command(config: RunConfig) -> str:
    """The ``modelforge train`` command that runs ``config``: its non-default fields as flags.

    The inverse of the CLI's parsing (``core.checks.parse_config`` with ``flags=True``), kept
    beside the fields both are generated from.
    """
    import shlex

    defaults = RunConfig()
    parts = ["modelforge train"]
    for f in fields(RunConfig):
        value = getattr(config, f.name)
        if value == getattr(defaults, f.name):
            continue
        kind = f.type if isinstance(f.type, str) else f.type.__name__
        text = (mapping_text(value) if kind == "dict" else
                ("true" if value else "false") if kind == "bool" else
                f"{value:g}" if kind == "float" else str(value))
        parts.append(f"--{f.name.replace('_', '-')} {shlex.quote(text)}")
    return " \\\n    ".join(parts)


def coerce(f: dataclasses.Field, value: Any) -> Any:
    """Convert ``value`` to the type of field ``f`` (from YAML, CLI text or a form).

    Raises:
        ValueError: with a message naming the field and the bad value.
    """
    t = f.type if isinstance(f.type, str) else f.type.__name__
    name = f.name
    try:
        if t == "bool":
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.strip().lower() in ("true", "yes", "1", "on"):
                return True
            if isinstance(value, str) and value.strip().lower() in ("false", "no", "0", "off"):
                return False
            if isinstance(value, int) and value in (0, 1):
                return bool(value)
            raise ValueError
        if t == "int":
            if isinstance(value, bool):
                raise ValueError
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(str(value).strip()) if isinstance(value, str) else int(value)
        if t == "float":
            if isinstance(value, bool):
                raise ValueError
            if isinstance(value, str) and value.strip().lower() == "auto" and "auto" in f.metadata:
                return f.metadata["auto"]  # validation_split: auto (a number field with a named default)
            number = float(value)
            if not math.isfinite(number):  # NaN/inf pass float(): refuse them by name (core.limits)
                raise ValueError(f"{name}: {limits.brief(value)} is not a finite number (NaN and infinity are not allowed)")
            return number
        if t == "dict":
            if value is None or value == "":
                return {}
            if isinstance(value, str):
                return parse_mapping(value)
            if isinstance(value, dict):
                out = {str(k): str(v) for k, v in value.items()}
                if len(out) > limits.MAX_MAPPING_ITEMS or any(
                        limits.text_problem(x, name) for kv in out.items() for x in kv):
                    raise ValueError(f"{name}: at most {limits.MAX_MAPPING_ITEMS} entries of at most "
                                     f"{limits.MAX_TEXT:,} characters each")
                return out
            raise ValueError
        if t == "str":
            if value is None:
                return ""
            if isinstance(value, (dict, list)):
                raise ValueError
            text = str(value)
            if limits.text_problem(text, name):  # bounded: never a 10 MB "name" echoed or logged
                raise ValueError(limits.text_problem(text, name))
            return text
    except (TypeError, ValueError, OverflowError) as exc:
        if str(exc).startswith(f"{name}: "):
            raise ValueError(str(exc)) from None
        raise ValueError(f"{name}: {limits.brief(value)} is not a {_type_name(f)}") from None
    return value


def field_problems(f: dataclasses.Field, value: Any, source: str | None = None,
                   choices: tuple[str, ...] | None = None) -> list[Problem]:
    """What is wrong with one field's (well-typed) value on its own: not one of its choices
    (``choices``, else the field's own), below its minimum or above its maximum. Each Problem
    names the field and the fix."""
    problems: list[Problem] = []
    meta = f.metadata
    choices = choices or field_choices(f)
    if choices and value not in choices:
        problems.append(Problem(
            f"'{value}' is not one of: {', '.join(choices)}",
            f"set {f.name} to one of the listed values", file=source, field=f.name))
    if isinstance(value, float) and not math.isfinite(value):
        return problems + [Problem(f"{value!r} is not a finite number", "NaN and infinity are not allowed",
                                   file=source, field=f.name)]
    if isinstance(value, str) and limits.text_problem(value, f.name):
        problems.append(Problem(limits.text_problem(value, f.name), f"shorten {f.name}", file=source, field=f.name))
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "min" in meta and value < meta["min"]:
            problems.append(Problem(f"{value} is below the minimum {meta['min']}",
                                    f"use a value >= {meta['min']}", file=source, field=f.name))
        if "max" in meta and value > meta["max"]:
            problems.append(Problem(f"{value} is above the maximum {meta['max']}",
                                    f"use a value <= {meta['max']}", file=source, field=f.name))
    return problems


def config_problems(config: RunConfig, check_paths: bool = True,
                    choices: dict[str, tuple[str, ...]] | None = None) -> list[Problem]:
    """Every problem with ``config``'s fields and their relations (empty list: valid). Never
    raises. What the chosen plugins say about it is added by :func:`core.checks.validate_config`,
    the complete check.

    Args:
        config: the run configuration.
        check_paths: also check that the dataset file exists (off for a form being edited).
        choices: allowed values of the fields that name a plugin, by field name.
    """
    problems: list[Problem] = []
    for f in fields(config):
        problems += field_problems(f, getattr(config, f.name), choices=(choices or {}).get(f.name))
    if not config.model.strip():
        problems.append(Problem("no base model given", "use 'demo', a local folder or a hub id", field="model"))
    if not config.dataset.strip():
        problems.append(Problem("no dataset given", "pass --dataset PATH (json, jsonl, csv, parquet or txt)", field="dataset"))
    elif check_paths and _looks_like_path(config.dataset) and not Path(config.dataset).expanduser().exists():
        problems.append(Problem(f"file not found: {config.dataset}", "check the path", field="dataset"))
    if config.max_steps == 0 and config.num_epochs <= 0:
        problems.append(Problem("neither max_steps nor num_epochs is positive",
                                "set max_steps > 0 or num_epochs > 0", field="num_epochs"))
    if config.name and not _SAFE_NAME.match(config.name):
        problems.append(Problem(
            f"name {config.name[:80]!r} is not allowed",
            "use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit",
            field="name"))
    if not config.lora_target_modules.strip():
        problems.append(Problem("no LoRA target modules", "use 'all-linear'", field="lora_target_modules"))
    if config.chat_template.strip():
        from core.data.templates import resolve

        try:
            resolve(config.chat_template)
        except ConfigError as exc:
            problems += exc.problems
    if config.validation_split < 0 and config.validation_split != -1:
        problems.append(Problem(f"validation_split {config.validation_split:g} is not a share",
                                "use -1 (auto), 0 (none) or a share such as 0.05", field="validation_split"))
    problems += distributed_problems(config)
    return problems


def distributed_problems(config: RunConfig) -> list[Problem]:
    """The distributed fields that contradict each other (nothing to check for one process)."""
    problems: list[Problem] = []
    if config.num_processes <= 1 and config.num_machines <= 1:
        return problems
    if config.num_processes % config.num_machines:
        problems.append(Problem(
            f"{config.num_processes} processes cannot be shared evenly by {config.num_machines} machines",
            "set num_processes to num_machines x the GPUs of each machine", field="num_processes"))
    if config.machine_rank >= config.num_machines:
        problems.append(Problem(
            f"machine_rank {config.machine_rank} is not below num_machines {config.num_machines}",
            "number the machines 0..num_machines-1; the main machine is 0", field="machine_rank"))
    if config.num_machines > 1 and not config.main_process_ip.strip():
        problems.append(Problem(
            "several machines need the address of the main one",
            "set main_process_ip to the address of the machine with machine_rank 0",
            field="main_process_ip"))
    if config.distributed != "ddp" and config.quantization != "none":
        problems.append(Problem(
            f"a 4-bit or 8-bit base trains in several processes with ddp only, not {config.distributed}",
            "set distributed to ddp (each GPU holds the small quantised base)", field="distributed"))
    return problems


def _looks_like_path(text: str) -> bool:
    """A hub dataset id is 'org/name' with no extension; anything else is a local path."""
    p = text.strip()
    return p.startswith((".", "/", "~")) or Path(p).suffix.lower() in (".json", ".jsonl", ".csv", ".parquet", ".txt") or Path(p).exists()


# -- YAML -------------------------------------------------------------------------------------------
def to_yaml(config: RunConfig) -> str:
    """Serialise with each section headed by a comment, so a saved file documents itself."""
    import yaml

    lines = ["# ModelForge run configuration (modelforge train --config THIS_FILE)"]
    section = None
    for f in fields(config):
        if f.metadata["section"] != section:
            section = f.metadata["section"]
            lines.append(f"\n# --- {section} ---")
        dumped = yaml.safe_dump({f.name: getattr(config, f.name)}, default_flow_style=True,
                                sort_keys=False, allow_unicode=True, width=10_000).strip()
        if dumped.startswith("{") and dumped.endswith("}"):
            dumped = dumped[1:-1]
        lines.append(dumped)
    return "\n".join(lines) + "\n"


def from_yaml(text: str, source: str = "config.yaml") -> RunConfig:
    """Parse YAML text into a RunConfig.

    Raises:
        ConfigError: for YAML syntax errors (with the line), unknown keys or wrong types.
    """
    import yaml

    try:
        data = limits.safe_load_yaml(text, source)  # size and alias caps (no "billion laughs")
    except yaml.YAMLError as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        raise ConfigError(
            f"{source} is not valid YAML",
            problems=[Problem(limits.clip(getattr(exc, "problem", None) or exc, 300), "fix the YAML syntax",
                              file=source, line=None if line is None else line + 1)],
        ) from None
    if data is None:
        data = {}
    return RunConfig.from_dict(data, source=source)


def load_yaml(path: str | Path) -> RunConfig:
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}", "check the path given to --config")
    if p.stat().st_size > limits.MAX_YAML_BYTES:  # refused before it is read into memory
        limits.check_yaml_text(b" " * (limits.MAX_YAML_BYTES + 1), str(p))
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{p} is not UTF-8 text", "save the config as UTF-8 YAML") from None
    config = from_yaml(text, source=str(p))
    # A relative dataset path in a config file is relative to that file (so presets work from anywhere).
    ds = config.dataset.strip()
    if ds and not Path(ds).expanduser().is_absolute() and (p.parent / ds).exists():
        config = config.replace(dataset=str((p.parent / ds).resolve()))
    return config


def save_yaml(config: RunConfig, path: str | Path) -> Path:
    p = Path(path).expanduser()
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(p.suffix + ".tmp")
    tmp.write_text(to_yaml(config), encoding="utf-8")
    tmp.replace(p)  # atomic: a crash never leaves half a config
    return p
