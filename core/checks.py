"""Every check before a run, in one place: choices, validation, pre-flight (config, plugins,
data, memory, disk).

The config module knows its fields; the registry knows the plugins; this module puts the two
together, so the config never asks a registry and nothing below it names a plugin:

- :func:`field_choices` / :func:`parse_config`: the one parser of config values, from a YAML
  mapping, the CLI's flags or the form, with every problem at once (plugin names included).
- :func:`adjusted`: the config the chosen strategy and provider train with (their
  ``adjust_config``), applied once, before the checks below.
- :func:`validate_config`: fields, their relations, and what the chosen plugins say.
- :func:`preflight`: the above, plus the data file, the memory estimate and the disk, each once:
  one Start press runs each of them once (tests/test_engine.py counts them).
"""

from __future__ import annotations

import dataclasses
import shutil
from dataclasses import dataclass, field
from typing import Any, Mapping

from core import config as cfg
from core.config import RunConfig
from core.data import validate as data_validate
from core.errors import ConfigError, DataError, ModelForgeError, Problem
from core.plugins import LORA, MemoryProfile
from core.registry import PROVIDERS, STRATEGIES, Registry
from core.run import run_parent_dir

_REGISTRIES: dict[str, Registry] = {"strategy": STRATEGIES, "provider": PROVIDERS}


# -- choices and parsing ------------------------------------------------------------------------------
def field_choices(f: dataclasses.Field) -> tuple[str, ...] | None:
    """Allowed values of a config field: its declared choices, or the registered plugins for a
    field that names one (so a new plugin is accepted by the config, the CLI and the form)."""
    kind = f.metadata.get("plugin")
    return tuple(_REGISTRIES[kind].names()) if kind else cfg.field_choices(f)


def plugin_choices() -> dict[str, tuple[str, ...]]:
    """Field name -> the registered plugin names it accepts."""
    return {f.name: tuple(_REGISTRIES[f.metadata["plugin"]].names())
            for f in cfg.config_fields() if f.metadata.get("plugin")}


def parse_config(values: Mapping[str, Any] | None, base: RunConfig | None = None, source: str = "config",
                 flags: bool = False) -> RunConfig:
    """The one parser of config values: ``base`` (default: the defaults) with ``values`` applied,
    each converted to its field's type (text from a flag or a form box, YAML scalars, ...).

    Args:
        values: field name -> raw value (only the fields to change).
        base: the config to change.
        source: where the values come from, named in the problems ("the form", a file name).
        flags: the values are command-line flags: problems name the flag (``--lora-r``).

    Raises:
        ConfigError: every unknown field, every value of the wrong type and, with them, every
            well-typed value outside its range or choices, at once.
    """
    data = {**(base or RunConfig()).to_dict(), **dict(values or {})}
    try:
        return RunConfig.from_dict(data, source=source, choices=plugin_choices())
    except ConfigError as exc:
        if not flags:
            raise
        problems = [Problem(p.message, "see `modelforge train --help`" if "give " in (p.hint or "") else p.hint,
                            field="--" + str(p.field).replace("_", "-")) for p in exc.problems]
        raise ConfigError("Some command-line values are invalid.", problems=problems) from None


# -- what the plugins say -----------------------------------------------------------------------------
def adjusted(config: RunConfig) -> RunConfig:
    """The config the chosen strategy and provider train with (each one's ``adjust_config``; an
    unknown plugin changes nothing: the choices check reports it)."""
    strategy, provider = STRATEGIES.find(config.strategy), PROVIDERS.find(config.provider)
    if strategy is not None:
        config = strategy.adjust_config(config)
    if provider is not None:
        config = provider.adjust_config(config)
    return config


def memory_profile(config: RunConfig) -> MemoryProfile:
    strategy = STRATEGIES.find(config.strategy)
    return strategy.memory if strategy is not None else LORA


def plugin_problems(config: RunConfig) -> list[Problem]:
    """What the chosen strategy and provider say about ``config``: the task, their own limits, and
    several processes for a plugin that trains in one only. (Availability: :func:`provider_problems`.)"""
    problems: list[Problem] = []
    strategy, provider = STRATEGIES.find(config.strategy), PROVIDERS.find(config.provider)
    if strategy is not None:
        if config.task not in strategy.tasks:
            fit = [n for n in STRATEGIES.names() if config.task in STRATEGIES.get(n).tasks]
            problems.append(Problem(f"strategy '{strategy.name}' cannot train task '{config.task}'",
                                    f"for {config.task} use one of: " + ", ".join(fit), field="strategy"))
        problems += strategy.config_problems(config)
    if provider is not None:
        problems += provider.config_problems(config)
    if config.num_processes > 1 or config.num_machines > 1:
        for kind, plugin in (("strategy", strategy), ("provider", provider)):
            if plugin is not None and not plugin.multi_process:
                able = [n for n in _REGISTRIES[kind].names() if _REGISTRIES[kind].get(n).multi_process]
                problems.append(Problem(f"{plugin.name} trains on one GPU only",
                                        f"use {kind} {' or '.join(able)} for num_processes > 1, or num_processes 1",
                                        field=kind))
    return problems


def provider_problems(config: RunConfig) -> list[Problem]:
    """Whether the chosen provider can run here at all (e.g. unsloth without a GPU, with how to opt
    in to its CPU fallback), for the pre-flight check: refused before anything is recorded."""
    provider = PROVIDERS.find(config.provider)
    if provider is None:
        return []
    ok, why = provider.available()
    if ok:
        return []
    usable = [n for n in PROVIDERS.names() if n != config.provider and PROVIDERS.get(n).available()[0]]
    return [Problem(f"provider '{config.provider}' is not available here: {why}",
                    f"set provider to {' or '.join(usable) or 'another provider'}; `modelforge info` says what "
                    "works here", field="provider")]


def validate_config(config: RunConfig, check_paths: bool = True) -> list[Problem]:
    """Every problem with ``config`` (empty: valid): its fields, their relations (on the adjusted
    config), and what the chosen plugins say. Never raises.

    Args:
        config: the run configuration, as given (not yet adjusted).
        check_paths: also check that the dataset file exists (off for a form being edited).
    """
    choices = plugin_choices()
    problems = [p for f in cfg.config_fields()
                for p in cfg.field_problems(f, getattr(config, f.name), choices=choices.get(f.name))]
    plugins = plugin_problems(config)
    try:
        after = adjusted(config)
    except ModelForgeError as exc:
        return problems + plugins + (exc.problems or [Problem(exc.message, exc.hint)])
    relations = [p for p in cfg.config_problems(after, check_paths, choices)
                 if p not in problems]  # the field checks ran on the config as given
    from core.trackers import tracker_problems  # issue 16: trackers installed, early stopping has eval rows

    return problems + relations + plugins + tracker_problems(after)


def check_config(config: RunConfig, check_paths: bool = True) -> RunConfig:
    """Validate and return ``config`` (as given).

    Raises:
        ConfigError: listing every problem at once.
    """
    errors = [p for p in validate_config(config, check_paths) if p.severity == "error"]
    if errors:
        raise ConfigError(f"The run configuration has {len(errors)} problem(s).", problems=errors)
    return config


# -- data ---------------------------------------------------------------------------------------------
def data_requirement(task: str, strategy: str) -> data_validate.Requirement:
    """What data ``task`` trained with ``strategy`` needs, from the strategy's declaration.

    Raises:
        DataError: unknown task or strategy.
    """
    plugin = STRATEGIES.find(strategy)
    if plugin is None:
        raise DataError(f"unknown strategy '{strategy}'", f"use one of: {', '.join(STRATEGIES.names())}")
    return data_validate.requirements(task, strategy, tuple(plugin.data_kinds), tuple(plugin.data_converts))


def validate_file(path, *, task: str = "text-generation", strategy: str = "sft",
                  **kwargs: Any) -> data_validate.ValidationReport:
    """:func:`core.data.validate.validate_file` for a task and a strategy name (see there for the
    other arguments). Never raises for bad data: an unknown task or strategy is in the report."""
    try:
        req = data_requirement(task, strategy)
    except DataError as exc:
        report = data_validate.ValidationReport(str(path), min_rows=kwargs.get("min_rows", 2))
        report.problems.append(Problem(exc.message, exc.hint, file=str(path)))
        return report
    return data_validate.validate_file(path, requirement=req, **kwargs)


def validate_rows(rows: list[dict], *, task: str = "text-generation", strategy: str = "sft",
                  **kwargs: Any) -> data_validate.ValidationReport:
    """:func:`core.data.validate.validate_rows` for a task and a strategy name."""
    try:
        req = data_requirement(task, strategy)
    except DataError as exc:
        report = data_validate.ValidationReport(kwargs.get("file", "<data>"), rows=len(rows))
        report.problems.append(Problem(exc.message, exc.hint, file=kwargs.get("file", "<data>")))
        return report
    return data_validate.validate_rows(rows, requirement=req, **kwargs)


def validate_data(config: RunConfig, tokenizer: Any = None) -> data_validate.ValidationReport:
    """The run's data file checked for its task and strategy (lengths too, with a tokenizer)."""
    from core.data.chat import options_of

    try:
        render = options_of(config)
    except ConfigError:  # an unknown chat_template: reported by the config check
        render = None
    return validate_file(config.dataset, task=config.task, strategy=config.strategy,
                         dataset_format=config.dataset_format, column_map=config.column_map,
                         template_vars=config.template_vars, system_prompt=config.system_prompt,
                         tokenizer=tokenizer, max_length=config.max_length, render=render,
                         text_chunk_chars=config.text_chunk_chars)


# -- hardware, memory and disk --------------------------------------------------------------------------
def hardware_report(data_dir=None):
    """:func:`core.hardware.probe` with each provider's own back-end line (its ``backend_status``:
    unsloth's answer is the one a refused run gives, not just "installed")."""
    from core.hardware import BackendInfo, probe

    report = probe(data_dir)
    for name in PROVIDERS.names():
        try:
            status = PROVIDERS.get(name).backend_status(report)
        except Exception as exc:  # noqa: BLE001 - the report must never fail for one back-end
            status = (False, f"could not check: {type(exc).__name__}: {exc}")
        if status is not None:
            info = report.backend(name) or BackendInfo(name=name)
            if info not in report.backends:
                report.backends.append(info)
            info.available, info.reason = status
            if info.version is None:
                from core.hardware import _version

                info.version = _version((name,))
    return report


@dataclass
class MemoryCheck:
    """The memory estimate of a run against this machine (None fields: no estimate)."""

    estimate: Any = None       # core.memory.MemoryEstimate
    fit: Any = None            # core.memory.FitResult
    note: str = ""             # why there is no estimate

    @property
    def ok(self) -> bool | None:
        return None if self.fit is None else self.fit.ok

    @property
    def state(self) -> str:
        """"ok" (fits), "too big" (does not fit: the run is refused) or "unknown" (no estimate, or
        the free memory could not be measured). Plain words: the UI draws an icon for it
        (components.common.state_icon), the CLI prints the words."""
        if self.fit is None or not self.fit.measured:
            return "unknown"
        return "ok" if self.fit.ok else "too big"

    @property
    def verdict(self) -> str:
        """One plain sentence: "Fits: needs about ...", "Does not fit: ...", or why there is no estimate."""
        return self.note if self.fit is None else self.fit.message

    def markdown(self) -> str:
        """The form's memory text, plain (no icon: see :attr:`state`): the verdict, the breakdown
        and the fixes."""
        if self.fit is None:
            return self.note
        lines = [self.fit.message]
        lines += ["```", *self.estimate.breakdown_lines(), "```"]
        if self.fit.fixes:
            lines.append("Suggested fixes, in order:")
            lines += [f"{i}. {fix}" for i, fix in enumerate(self.fit.fixes, 1)]
        return "\n".join(lines)


def memory_check(config: RunConfig) -> MemoryCheck:
    """The estimate of the (adjusted) run on this machine. Never raises: no estimate has a note.

    Unknown models (a hub id outside the catalogue, not cached) get no estimate and are not refused.
    """
    from core.memory import estimate_for_run, fits, model_config_for

    try:
        model_config = model_config_for(config.model, task=config.task)
        if model_config is None:
            return MemoryCheck(note=f"Memory: no estimate for `{config.model}` offline (not in the catalog "
                                    "and not a local folder).")
        from core.hardware import probe

        report = probe()  # the plain probe: the providers' back-end lines do not change the memory
        est = estimate_for_run(config, model_config, report, memory_profile(config))
        return MemoryCheck(est, fits(est, report))
    except ModelForgeError as exc:
        return MemoryCheck(note=f"Memory: no estimate ({exc.message}).")
    except Exception as exc:  # noqa: BLE001 - an estimate must never block a run or the form
        return MemoryCheck(note=f"Memory: no estimate ({type(exc).__name__}).")


def memory_problems(config: RunConfig, memory: MemoryCheck | None = None) -> list[Problem]:
    """Refuse a run that the estimate says cannot fit in the free (GPU or CPU) memory, with fixes."""
    memory = memory or memory_check(config)
    if memory.fit is None or memory.fit.ok:
        return []
    result = memory.fit
    return [Problem(f"this run needs about {result.needed_gib:.1f} GiB but only {result.available_gib:.1f} GiB "
                    f"is free on the {result.device}", "; or ".join(result.fixes[:4]) or "choose a smaller model",
                    field="model")]


# Besides weights and optimizer state, each checkpoint (and the final model) holds the tokenizer
# files and small ones (trainer state, scheduler, RNG state, training args, README: ~20 KB
# measured on the demo); the run folder holds events, train.log and config.yaml. Measured, not a
# fixed 64 MiB that refused every run on a small disk (a demo run writes ~2 MB).
CHECKPOINT_SMALL_FILES_BYTES = 256 * 2**10
DISK_SLACK_BYTES = 2 * 2**20             # events.jsonl, train.log, config.yaml of one run
HUB_TOKENIZER_BYTES = 16 * 2**20         # a hub model's tokenizer files, unknown offline (Llama 3: ~9 MB)
_TOKENIZER_FILES = ("tokenizer*", "vocab*", "merges.txt", "*.model", "special_tokens_map.json",
                    "added_tokens.json", "chat_template.jinja")


def tokenizer_bytes(model: str) -> int:
    """Size of the tokenizer files every checkpoint copies: measured for a local folder or the demo."""
    from pathlib import Path

    from core.demo_model import DEMO_ALIASES, DEMO_NAME
    from core.paths import cache_dir

    name = (model or "").strip()
    if name.lower() == DEMO_NAME or name.lower() in DEMO_ALIASES:
        folders = [p for p in cache_dir().glob("demo*") if p.is_dir()]
        if not folders:
            return 2**20  # not built yet: the demo tokenizers are a few hundred KB
    else:
        folder = Path(name).expanduser()
        if not folder.is_dir():
            return HUB_TOKENIZER_BYTES
        folders = [folder]
    try:
        return max(sum(f.stat().st_size for pattern in _TOKENIZER_FILES for f in d.glob(pattern) if f.is_file())
                   for d in folders)
    except OSError:
        return HUB_TOKENIZER_BYTES


def checkpoint_bytes(config: RunConfig, memory: MemoryCheck | None = None) -> int | None:
    """Disk a run will fill: its checkpoints plus the final adapter, or None when the model is unknown.

    Each checkpoint holds the trainable weights (fp32, 4 bytes each) and AdamW's two fp32
    moments (8 bytes each); ``save_total_limit + 1`` exist at once, because the trainer writes a
    new checkpoint before it deletes the oldest. The trainable parameters come from the memory
    estimate (the LoRA adapter, and any task head trained fully); a strategy that trains several
    models one after the other (its memory profile) fills that much again for each.
    """
    if memory is None:
        from core.memory import estimate_for_run, model_config_for

        model_config = model_config_for(config.model, task=config.task)
        if model_config is None:
            return None
        try:
            trainable = estimate_for_run(config, model_config, None, memory_profile(config)).trainable_params
        except ModelForgeError:
            return None
    elif memory.estimate is None:
        return None
    else:
        trainable = memory.estimate.trainable_params
    files = tokenizer_bytes(config.model) + CHECKPOINT_SMALL_FILES_BYTES
    per_checkpoint = trainable * (4 + 8) + files
    total = (config.save_total_limit + 1) * per_checkpoint + trainable * 4 + files
    total *= memory_profile(config).trained_models
    return int(total) + DISK_SLACK_BYTES


def _size(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MB"


def disk_problems(config: RunConfig, memory: MemoryCheck | None = None) -> list[Problem]:
    """Refuse a run whose checkpoints and model cannot fit on the disk of its run folder."""
    needed = checkpoint_bytes(config, memory)
    if needed is None:
        return []
    where = run_parent_dir(config)
    probe_at = where
    while not probe_at.exists() and probe_at.parent != probe_at:
        probe_at = probe_at.parent  # output_dir may not exist yet: measure the disk it will be on
    try:
        free = shutil.disk_usage(probe_at).free
    except OSError:
        return []
    if needed <= free:
        return []
    return [Problem(f"this run writes about {_size(needed)} of checkpoints and model, but only "
                    f"{_size(free)} is free on the disk of {where}",
                    f"free disk space, lower save_total_limit (now {config.save_total_limit}), or set "
                    "output_dir (or MODELFORGE_HOME) to a larger disk", field="output_dir")]


# -- pre-flight -------------------------------------------------------------------------------------------
@dataclass
class Checked:
    """A config after the pre-flight check: adjusted by its plugins, with every problem found and
    the memory estimate (computed once, shared by the memory and disk checks and the warning)."""

    config: RunConfig
    problems: list[Problem] = field(default_factory=list)
    memory: MemoryCheck = field(default_factory=MemoryCheck)

    @property
    def ok(self) -> bool:
        return not self.problems


def run_checks(config: RunConfig, with_memory: bool = True) -> Checked:
    """Every problem with the config and its data file, before anything is recorded or loaded.

    Validates the config once (:func:`validate_config`), applies the plugins' adjustments, checks
    that the provider can run here, reads the whole dataset (no tokenizer: lengths are checked
    again once the model's tokenizer is loaded), then estimates memory once for the memory and
    disk checks. Returns the adjusted config with the error-severity problems.
    """
    problems = [p for p in validate_config(config) if p.severity == "error"]
    problems += [p for p in provider_problems(config) if p.severity == "error"]
    if problems:
        return Checked(config, problems)
    config = adjusted(config)
    if not config.dataset:
        return Checked(config, problems)
    report = validate_data(config)
    problems = list(report.errors) + ([] if report.ok or report.errors else list(report.problems))
    if not with_memory:
        return Checked(config, problems)
    memory = memory_check(config)
    return Checked(config, problems + memory_problems(config, memory) + disk_problems(config, memory), memory)


def preflight(config: RunConfig) -> list[Problem]:
    """The problems :func:`run_checks` finds (empty: the run can start)."""
    return run_checks(config).problems
