"""Configure tab: the run configuration as a form generated from :class:`core.config.RunConfig`.

Each field of RunConfig becomes one widget, chosen from its type and ``metadata``: a Dropdown
for ``choices``, a Number for numbers, a Checkbox for booleans (on a row of their own), a Textbox
for text and for mappings (written ``a=b,c=d``). Sections come from ``metadata["section"]``.
Values go back through ``core.checks.parse_config`` (the one parser, also of YAML and the CLI), so no
number is ever parsed out of a textbox here; ranges are ModelForge's own checks too
(``core.config.config_problems``), not the browser's: on each edit a bad field is outlined in red
with one message naming it and the fix (:func:`form_feedback`), and nothing reaches the terminal.

Also here: presets, YAML save/load, the equivalent ``modelforge train`` command and the
pre-flight check (validation problems and the memory estimate against what is free).
"""

from __future__ import annotations

import dataclasses
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr

from components.common import (AppContext, default_config, endpoint, guard, info, load_preset,
                               mapping_to_text, preset_names, problems_markdown, public_problems, resolve_dataset,
                               state_icon)
from core.checks import field_choices, parse_config
from core.config import RunConfig, config_fields, from_yaml, to_command, to_yaml
from core.errors import ConfigError, ModelForgeError, Problem

FIELDS: list[dataclasses.Field] = config_fields()
FIELD_NAMES: list[str] = [f.name for f in FIELDS]
_SECTION = {f.name: f.metadata["section"] for f in FIELDS}
SECTION_TITLES = {
    "model": "Model", "data": "Data", "lora": "LoRA and quantisation", "training": "Training",
    "evaluation": "Evaluation and checkpoints", "output": "Output",
}
OPEN_SECTIONS = ("model", "training")
# Step of the number inputs: the browser's arrows and its validity check use it.
_STEPS = {"learning_rate": 1e-5, "validation_split": 0.05, "lora_dropout": 0.05, "weight_decay": 0.01,
          "num_epochs": 0.5}


def field_type(f: dataclasses.Field) -> str:
    return f.type if isinstance(f.type, str) else f.type.__name__


def field_label(name: str) -> str:
    special = {"lora_r": "LoRA rank (r)", "lora_alpha": "LoRA alpha", "lora_dropout": "LoRA dropout",
               "lora_target_modules": "LoRA target modules", "max_steps": "Max steps",
               "lr_scheduler": "LR scheduler", "eval_steps": "Eval every N steps"}
    return special.get(name, name.replace("_", " ").capitalize())


# -- plain handlers (no browser needed) ------------------------------------------------------------
def config_to_values(config: RunConfig) -> list[Any]:
    """Form values in field order (mappings as ``a=b,c=d`` text)."""
    out = []
    for f in FIELDS:
        value = getattr(config, f.name)
        out.append(mapping_to_text(value) if field_type(f) == "dict" else value)
    return out


def values_to_dict(values: list[Any] | tuple) -> dict:
    if len(values) != len(FIELDS):
        raise ConfigError(f"the form sent {len(values)} values for {len(FIELDS)} fields",
                          "reload the page")
    return dict(zip(FIELD_NAMES, values))


def values_to_config(values: list[Any] | tuple) -> RunConfig:
    """The RunConfig the form describes.

    Raises:
        ConfigError: every field with a value of the wrong type, at once.
    """
    data = values_to_dict(values)
    for f in FIELDS:  # an emptied number box arrives as None: say which field, as coerce does
        if data[f.name] is None and field_type(f) in ("int", "float"):
            data[f.name] = ""
    return parse_config(data, source="the form")


def config_from_mapping(overrides: dict | None, base: RunConfig | None = None) -> RunConfig:
    """``base`` (default: the app's default config) with ``overrides`` applied (API callers).

    Raises:
        ConfigError: unknown fields or values of the wrong type.
    """
    return parse_config(overrides, base or default_config(), source="config")


def form_problems(values: list[Any] | tuple) -> tuple[RunConfig | None, list[Problem]]:
    """(the config, []) when every field of the form is right on its own and with the others,
    else (None, the problems by field): types (parse_config), then bounds, choices and relations
    (core.config.config_problems; the data file and the plugins are left to Check and Start)."""
    from core.checks import plugin_choices
    from core.config import config_problems

    try:
        config = values_to_config(values)
    except ConfigError as exc:
        return None, list(exc.problems) or [Problem(exc.message, exc.hint)]
    problems = config_problems(config, check_paths=False, choices=plugin_choices())
    return (None, problems) if problems else (config, [])


def field_problems_markdown(problems: list[Problem]) -> str:
    """One line per bad field: its label, what is wrong and the fix ('' when none)."""
    lines = []
    for p in problems:
        message = p.message
        if p.field and message.startswith(f"{p.field}: "):
            message = message[len(p.field) + 2:]  # coerce() repeats the field name: say it once
        # The section too: the field may sit in a closed accordion.
        where = ""
        if p.field in FIELD_NAMES:
            section = _SECTION[p.field]
            where = f"**{field_label(p.field)}** (`{p.field}`, in {SECTION_TITLES.get(section, section.capitalize())}): "
        lines.append(f"- {where}{message}" + (f" — {p.hint}" if p.hint else ""))
    return "\n".join(lines)


def field_marks_html(problems: list[Problem]) -> str:
    """A style rule that outlines each bad field in red (an empty string clears the marks).

    One small HTML output instead of an update of every form widget on each keystroke.
    """
    ids = [f"#cfg-{p.field.replace('_', '-')}" for p in problems if p.field in FIELD_NAMES]
    if not ids:
        return ""
    inputs = ", ".join(f"{i} input, {i} textarea" for i in ids)
    labels = ", ".join(f"{i} [data-testid='block-info']" for i in ids)
    return (f"<style>{inputs} {{ outline: 2px solid #dc2626 !important; background: #fef2f2 !important; }} "
            f"{labels} {{ color: #b91c1c !important; }}</style>")


def form_feedback(values: list[Any] | tuple) -> tuple[RunConfig | None, str, str]:
    """(config or None, the bad-field message, the field marks) for the form's values."""
    config, problems = form_problems(values)
    return config, field_problems_markdown(problems), field_marks_html(problems)


def command_text(config: RunConfig) -> str:
    """The ``modelforge train`` command that runs the same configuration (non-default flags)."""
    return to_command(config)


def preset_values(name: str) -> list[Any]:
    """Form values of a preset.

    Raises:
        ConfigError: unknown preset.
    """
    return config_to_values(load_preset(name))


def save_yaml_file(config: RunConfig) -> str:
    """Write the config to a fresh temporary file (for download); return its path."""
    folder = Path(tempfile.mkdtemp(prefix="modelforge-config-"))
    path = folder / f"{config.name or 'modelforge-run'}.yaml"
    path.write_text(to_yaml(config), encoding="utf-8")
    return str(path)


def load_yaml_file(path: str) -> RunConfig:
    """Read an uploaded YAML config.

    Raises:
        ConfigError: not UTF-8, bad YAML (with the line), unknown keys, wrong types.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{p.name} is not UTF-8 text", "save the config as UTF-8 YAML") from None
    return from_yaml(text, source=p.name)


def memory_check(config: RunConfig):
    """The memory estimate (core.checks.MemoryCheck) of the run as it would train (its plugins'
    adjustments applied); ``.ok`` None when unknown (see core.checks.memory_check)."""
    from core.checks import adjusted
    from core.checks import memory_check as check

    try:
        config = adjusted(config)
    except ModelForgeError:
        pass  # validation reports it; the estimate of the config as given is still worth showing
    return check(config)


# core says the memory state in words; the form draws it (no icon when there is no estimate).
_MEMORY_ICONS = {"ok": "ok", "too big": "warn"}


@dataclass
class PreflightResult:
    ok: bool
    problems: list[Problem] = field(default_factory=list)
    memory_ok: bool | None = None
    memory: str = ""              # plain text (core.checks.MemoryCheck.markdown)
    config: RunConfig | None = None
    memory_state: str = "unknown"  # "ok", "too big" or "unknown" (core.checks.MemoryCheck.state)

    def markdown(self) -> str:
        head = (f"### {state_icon('ok')} Ready to train" if self.ok and self.memory_ok is not False else
                f"### {state_icon('warn')} Ready, but memory is tight" if self.ok else
                f"### {state_icon('error')} {len(self.problems)} problem(s) to fix before training")
        parts = [head]
        if self.problems:
            parts.append(problems_markdown(self.problems))
        if self.memory:
            kind = _MEMORY_ICONS.get(self.memory_state)
            parts.append((f"{state_icon(kind)} " if kind else "") + self.memory)
        return "\n\n".join(parts)

    def to_dict(self) -> dict:
        return {"ok": self.ok, "problems": [p.to_dict() for p in self.problems],
                "memory_ok": self.memory_ok, "memory_state": self.memory_state, "memory": self.memory}


def run_preflight(ctx: AppContext, config: RunConfig, with_memory: bool = True) -> PreflightResult:
    """Every problem with the config and its data at once, plus the memory check (each once)."""
    from core.checks import run_checks

    try:
        config = config.replace(dataset=resolve_dataset(config.dataset, ctx.restrict_paths))
    except ModelForgeError as exc:
        return PreflightResult(False, [Problem(exc.message, exc.hint, field="dataset")], config=config)
    refused = public_problems(ctx, config)  # a public app: checked before any file is read
    if refused:
        return PreflightResult(False, refused, config=config)
    checked = run_checks(config, with_memory=with_memory)
    memory = checked.memory
    if with_memory and memory.fit is None and not memory.note:
        memory = memory_check(config)  # stopped before the estimate (a config problem): still show it
    return PreflightResult(not checked.problems, list(checked.problems), memory.ok, memory.markdown(), config,
                           memory.state)


# -- widgets --------------------------------------------------------------------------------------
def _model_choices() -> list[str]:
    choices = ["demo"]
    try:
        from core.memory import load_catalog

        choices += [e["id"] for e in load_catalog() if e["id"] != "demo"]
    except Exception:  # noqa: BLE001 - the catalog only offers suggestions
        pass
    return choices


def field_component(f: dataclasses.Field, value: Any) -> gr.components.Component:
    """The widget for one RunConfig field (see the module docstring)."""
    meta = f.metadata
    kind = field_type(f)
    common = dict(label=field_label(f.name), info=meta.get("help"), elem_id=f"cfg-{f.name.replace('_', '-')}",
                  min_width=240)
    if f.name == "model":
        return gr.Dropdown(choices=_model_choices(), value=value, allow_custom_value=True, **common)
    if field_choices(f):
        return gr.Dropdown(choices=list(field_choices(f)), value=value, **common)
    if kind == "bool":
        return gr.Checkbox(value=bool(value), **common)
    if kind in ("int", "float"):
        # No minimum/maximum here: Gradio would refuse an out-of-range value itself, with a toast
        # that names no field and a traceback in the terminal. core.config.config_problems checks
        # the bounds (the field's metadata) and the form marks the field (see form_feedback).
        return gr.Number(value=value, precision=0 if kind == "int" else None,
                         step=1 if kind == "int" else _STEPS.get(f.name, 0.01), **common)
    if kind == "dict":
        return gr.Textbox(value=mapping_to_text(value), placeholder="key=value,key2=value2", **common)
    return gr.Textbox(value=value, **common)


@dataclass
class ConfigureTab:
    inputs: list[gr.components.Component]
    by_name: dict[str, gr.components.Component]
    preset: gr.Dropdown
    command: gr.Code
    report: gr.Markdown
    check: gr.Button
    field_errors: gr.Markdown  # the one message about bad fields (see form_feedback)
    marks: gr.HTML             # the red outline of those fields


def build(ctx: AppContext, initial: RunConfig | None = None) -> ConfigureTab:
    """Create the Configure tab's widgets and its own events (inside a ``gr.Tab``)."""
    config = initial or default_config()
    values = dict(zip(FIELD_NAMES, config_to_values(config)))
    gr.Markdown("Every setting of a run. The defaults are the **identity demo**: it teaches the "
                "built-in demo model its name in about half a minute of training on a CPU (longer on a busy "
                "machine). Under each field's name: what it does.",
                elem_classes=["mf-help"])
    with gr.Row():  # not equal height: the button keeps a button's height (assets/style.css)
        preset = gr.Dropdown(choices=preset_names(), value=None, label="Preset",
                             info="Load a ready-made configuration", elem_id="cfg-preset", scale=4)
        # Disabled until a preset is chosen: loading "nothing" has no meaning (choosing one loads it too).
        load_btn = gr.Button("Load preset", elem_id="btn-load-preset", scale=1, interactive=False)
    with gr.Accordion("Save or load a YAML file", open=False, elem_id="cfg-yaml"):
        with gr.Row():
            yaml_in = gr.File(label="Load a YAML config", file_types=[".yaml", ".yml"], type="filepath",
                              elem_id="upload-config", height=120)
            with gr.Column():
                save_btn = gr.Button("Save as YAML", elem_id="btn-save-yaml")
                yaml_out = gr.File(label="Download", interactive=False, elem_id="cfg-yaml-file", height=120)
    by_name: dict[str, gr.components.Component] = {}
    sections: dict[str, list[dataclasses.Field]] = {}
    for f in FIELDS:
        sections.setdefault(f.metadata["section"], []).append(f)
    for section, fs in sections.items():
        with gr.Accordion(SECTION_TITLES.get(section, section.capitalize()), open=section in OPEN_SECTIONS,
                          elem_id=f"cfg-section-{section}"):
            with gr.Row():
                for f in fs:
                    if field_type(f) != "bool":
                        by_name[f.name] = field_component(f, values[f.name])
            # Switches on a row of their own, each in a column wide enough for its label and help:
            # among the number boxes they were squeezed to a few letters ("Packir").
            switches = [f for f in fs if field_type(f) == "bool"]
            if switches:
                with gr.Row():
                    for f in switches:
                        with gr.Column(min_width=280):
                            by_name[f.name] = field_component(f, values[f.name])
    inputs = [by_name[n] for n in FIELD_NAMES]
    marks = gr.HTML("", elem_id="cfg-field-marks", padding=False)
    field_errors = gr.Markdown("", elem_id="cfg-field-problems")
    with gr.Row():
        check = gr.Button("Check configuration", variant="secondary", elem_id="btn-preflight")
    report = gr.Markdown("Press **Check configuration** to validate the settings and the data and to "
                         "estimate the memory this run needs.", elem_id="cfg-preflight")
    command = gr.Code(value=command_text(config), language="shell", label="Equivalent command",
                      interactive=False, elem_id="cfg-command")

    def _load_preset(name):
        if not name:  # the button is disabled then; an API caller still gets an answer, once
            info("Choose a preset first.")
            return [gr.skip()] * (len(inputs) + 3)
        cfg = load_preset(name)
        return [*config_to_values(cfg), command_text(cfg), "", ""]

    def _load_yaml(path):
        if not path:
            return [gr.skip()] * (len(inputs) + 3)
        cfg = load_yaml_file(path)
        return [*config_to_values(cfg), command_text(cfg), "", ""]

    def _save_yaml(*vals):
        return save_yaml_file(values_to_config(vals))

    def _command(*vals):
        cfg, errors, css = form_feedback(vals)
        # A bad field keeps the last valid command: the box never blanks while a number is typed.
        return (command_text(cfg) if cfg else gr.skip()), errors, css

    def _check(*vals):
        cfg, errors, css = form_feedback(vals)
        if cfg is None:
            return (f"### {state_icon('error')} Fix the field marked in red first", gr.skip(), errors, css)
        return run_preflight(ctx, cfg).markdown(), command_text(cfg), "", ""

    loaded = [*inputs, command, field_errors, marks]
    load_btn.click(guard(_load_preset), preset, loaded, api_visibility="private")
    preset.input(guard(_load_preset), preset, loaded, api_visibility="private")
    preset.change(lambda name: gr.Button(interactive=bool(name)), preset, load_btn, api_visibility="private",
                  show_progress="hidden")
    yaml_in.upload(guard(_load_yaml), yaml_in, loaded, api_visibility="private")
    save_btn.click(guard(_save_yaml), inputs, yaml_out, api_visibility="private")
    check.click(guard(_check), inputs, [report, command, field_errors, marks], api_visibility="private")
    gr.on([c.input for c in inputs], guard(_command), inputs, [command, field_errors, marks],
          trigger_mode="always_last", show_progress="hidden", api_visibility="private")
    return ConfigureTab(inputs=inputs, by_name=by_name, preset=preset, command=command, report=report,
                        check=check, field_errors=field_errors, marks=marks)


def refresh_command(*vals) -> Any:
    """Command text for form values (used after other tabs change the form)."""
    try:
        return command_text(values_to_config(vals))
    except ConfigError:
        return gr.skip()


def register_api(ctx: AppContext) -> None:
    """Named API endpoints of this tab (for gradio_client)."""

    def presets() -> list[str]:
        """Names of the bundled presets."""
        return preset_names()

    def preset(name: str) -> dict:
        """The full configuration of a preset."""
        return load_preset(name).to_dict()

    def config_command(config: dict | None = None) -> str:
        """The `modelforge train` command for a configuration (fields over the app defaults)."""
        return command_text(config_from_mapping(config))

    def check_config(config: dict | None = None) -> dict:
        """Pre-flight check: every problem with the configuration and its data, and the memory estimate."""
        return run_preflight(ctx, config_from_mapping(config)).to_dict()

    gr.api(endpoint(presets), api_name="presets")
    gr.api(endpoint(preset), api_name="preset")
    gr.api(endpoint(config_command), api_name="config_command")
    gr.api(endpoint(check_config), api_name="check_config")
