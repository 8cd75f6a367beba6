"""The ``modelforge`` command: ui | train | validate | generate | evaluate | models | export | serve | runs | info | hardware | doctor.

Exit codes: 0 success; 2 bad input or configuration (one clear message on stderr, no
traceback); 1 an unexpected fault (the traceback goes to the app log file, one line on
stderr names it); 130 a training run stopped with Ctrl-C (a checkpoint is kept).

Every ``train`` flag is generated from :class:`core.config.RunConfig`, so the CLI, the YAML
files and the app's form cannot drift apart. Heavy libraries (torch, transformers) are
imported only by the commands that need them: ``--help`` answers at once.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import signal
import sys
import threading
from dataclasses import fields
from typing import Any

from core.checks import field_choices, parse_config
from core.config import TASKS, RunConfig, load_yaml

EXIT_OK, EXIT_FAULT, EXIT_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130


def _quiet_libraries() -> None:
    """Offline-friendly, quiet defaults for the ML stack (a user can override each)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    # bitsandbytes tries to fetch an optional CPU kernel from the hub and warns when it can't;
    # its own fallback works, so the warning is noise.
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)


# -- argument parsing ---------------------------------------------------------------------------------
# The --help heading of each RunConfig section (the Configure tab's accordions, in CLI words).
SECTION_HEADINGS = {
    "model": "model", "data": "data", "lora": "LoRA and quantisation", "training": "training",
    "evaluation": "evaluation and checkpoints", "output": "output",
    "distributed": "several GPUs or machines",
}
# Placeholders a person can read in `train --help` (argparse's default is the dest, CFG_LORA_R).
_METAVARS = {"model": "MODEL", "reward_model": "MODEL", "dataset": "FILE", "output_dir": "DIR",
             "name": "NAME", "learning_rate": "RATE", "chat_template": "TEMPLATE",
             "lora_target_modules": "MODULES", "main_process_ip": "ADDRESS", "main_process_port": "PORT",
             "system_prompt": "TEXT", "seed": "N"}
_MANY_CHOICES = 5  # more than this: a short placeholder, the choices listed in the help instead


def _first_sentence(text: str) -> str:
    """The help's first sentence: `train --help` lists ~55 flags, the form shows the full text."""
    match = re.search(r"(?<=[.!?])\s+(?=[A-Z'(])", text)
    return text[:match.start()] if match else text


def _config_flag_kwargs(f: Any) -> dict[str, Any]:
    """argparse keywords for one RunConfig field: a readable metavar and a one-sentence help."""
    default = f.default if not callable(getattr(f, "default_factory", None)) else f.default_factory()
    kind = f.type if isinstance(f.type, str) else f.type.__name__
    if kind == "dict":
        default = ",".join(f"{k}={v}" for k, v in default.items())
    help_text = _first_sentence(f.metadata["help"])
    kwargs: dict[str, Any] = {"dest": f"cfg_{f.name}", "default": None}
    choices = field_choices(f)
    if choices:
        kwargs["choices"] = choices
        if len(choices) > _MANY_CHOICES:
            kwargs["metavar"] = f.name.split("_")[-1].upper()
            help_text += f" One of: {', '.join(choices)}."
    elif kind == "bool":
        kwargs["metavar"] = "{true,false}"
    elif kind == "dict":
        kwargs["metavar"] = "KEY=VALUE,..."
    else:
        kwargs["metavar"] = _METAVARS.get(f.name, {"int": "N", "float": "X"}.get(kind, "TEXT"))
    if isinstance(default, bool):
        default = str(default).lower()  # what the flag takes
    if default not in ("", None):
        help_text += f" (default: {default})"
    kwargs["help"] = help_text.replace("%", "%%")  # argparse formats help with %
    return kwargs


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per RunConfig field, grouped by section, help text from the field's metadata."""
    groups: dict[str, Any] = {}
    for f in fields(RunConfig):
        section = f.metadata["section"]
        if section not in groups:
            groups[section] = parser.add_argument_group(f"{SECTION_HEADINGS.get(section, section)} options")
        groups[section].add_argument("--" + f.name.replace("_", "-"), **_config_flag_kwargs(f))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="modelforge",
        description="ModelForge: fine-tune a language model on your own machine. "
                    "With no command, launches the app.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    ui = sub.add_parser("ui", help="launch the web app and open it in the browser (the default command)",
                        description="Serve the web app and print its address. On a desktop (Linux with "
                                    "DISPLAY or WAYLAND_DISPLAY set, macOS, Windows) it also opens the page in "
                                    "the default browser; never in CI or on a Hugging Face Space.")
    ui.add_argument("--host", default=os.environ.get("MODELFORGE_HOST", "127.0.0.1"),
                    help="interface to listen on (0.0.0.0 to serve your network; default 127.0.0.1)")
    ui.add_argument("--port", type=int, default=int(os.environ.get("MODELFORGE_PORT", "7860")),
                    help="port (default 7860)")
    ui.add_argument("--share", action="store_true",
                    help="create a public gradio.live link (asks for a login unless --no-auth)")
    ui.add_argument("--auth", default=os.environ.get("MODELFORGE_AUTH"),
                    help="USER:PASS required to use the app (or MODELFORGE_AUTH)")
    ui.add_argument("--no-auth", action="store_true",
                    help="allow a share link or Space without a login (not recommended)")
    ui.add_argument("--no-browser", action="store_true",
                    help="do not open the page in the browser, only print its address (or MODELFORGE_NO_BROWSER=1)")

    train = sub.add_parser("train", help="fine-tune a model (flags override --config)",
                           usage="modelforge train [--config FILE] [--FIELD VALUE ...] [--json]\n"
                                 "       modelforge train --resume RUN_ID | --more RUN_ID --more-steps N",
                           description="Fine-tune a model. Every field of the run config is a flag "
                                       "(grouped below as in the Configure tab); flags override values "
                                       "from --config. The app's Configure tab shows each field's full help.")
    train.add_argument("--config", metavar="FILE", help="YAML run config (see assets/presets/)")
    train.add_argument("--resume", metavar="RUN_ID", help="continue a stopped or interrupted run from its last checkpoint")
    train.add_argument("--json", action="store_true", help="print one JSON object as the last line of stdout")
    train.add_argument("--more", metavar="RUN_ID",  # issue 16
                       help="train a completed run more, from its last checkpoint (with --more-steps or "
                            "--more-epochs): a new run of the same name, its model a new version")
    train.add_argument("--more-steps", type=int, default=0, metavar="N", help="with --more: this many more optimizer steps")
    train.add_argument("--more-epochs", type=float, default=0.0, metavar="X", help="with --more: this many more epochs")
    _add_config_flags(train)

    val = sub.add_parser("validate", help="check a data file before training")
    val.add_argument("path", help="a .json, .jsonl, .csv, .parquet or .txt file")
    val.add_argument("--task", choices=TASKS, default="text-generation")
    val.add_argument("--strategy", default="sft", help="the strategy the data is for (default: sft)")
    val.add_argument("--format", dest="dataset_format", default="auto", help="force a data format (default: auto)")
    val.add_argument("--column-map", default="", help="rename columns: old=new,old2=new2")
    val.add_argument("--model", default=None,
                     help="also measure token lengths with this model's tokenizer (e.g. demo)")
    val.add_argument("--max-length", type=int, default=512, help="token limit to check lengths against")
    val.add_argument("--chat-template", default="",
                     help="render with this chat template: chatml, llama3, qwen, gemma, mistral, phi or a .jinja "
                          "file (default: the model's own)")
    val.add_argument("--train-turns", choices=("all", "last"), default="all",
                     help="which assistant turns are trained (default: all)")
    val.add_argument("--reasoning", choices=("train", "drop"), default="train",
                     help="keep and train reasoning, or drop it (default: train)")
    val.add_argument("--loss-on", choices=("completion", "all"), default="completion",
                     help="train on the assistant turns only (default) or on every token")
    val.add_argument("--samples", type=int, default=3,
                     help="render this many first examples as trained/untrained segments (default 3; with "
                          "no --model, with the demo model's tokenizer)")
    val.add_argument("--json", action="store_true", help="print the report as JSON")

    gen = sub.add_parser("generate", help="ask a trained model (or any model) a question")
    gen.add_argument("--model", required=True, help="a model record id or name, a model folder, or 'demo'")
    gen.add_argument("--prompt", required=True,
                     help="the user message; for a summarization model the document; for an "
                          "extractive-QA model the question (with --context)")
    gen.add_argument("--context", default="", help="extractive QA: the text to find the answer in")
    gen.add_argument("--max-new-tokens", type=int, default=64)
    gen.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    gen.add_argument("--base", action="store_true", help="answer with the base model, without the adapter")
    gen.add_argument("--json", action="store_true")

    doc = sub.add_parser("doctor", help="check the records database; rebuild runs and models from the run folders",
                         description="Check MODELFORGE_HOME's records database. A damaged (garbage, truncated) "
                                     "or empty database is moved aside; then every run folder (runs/*/config.yaml, "
                                     "events.jsonl, model/modelforge.json) the records lack is restored. Safe to "
                                     "run on a healthy database: nothing recorded is changed.")
    doc.add_argument("--json", action="store_true", help="print the report as JSON")

    exp = sub.add_parser("export", help="export a trained model to GGUF (llama.cpp, Ollama) or a merged folder",
                         description="Export a trained model: GGUF with an Ollama Modelfile (needs the export "
                                     "extra), a merged transformers folder, or a LoRA GGUF over its base. Every "
                                     "export is verified: llama.cpp answers the model's prompts and is compared "
                                     "with transformers.")
    exp.add_argument("model", help="a model record id or name (see `modelforge models`)")
    exp.add_argument("--format", dest="export_format", default="gguf", choices=["gguf", "merged", "lora-gguf"],
                     help="gguf: one file; merged: a transformers folder; lora-gguf: base GGUF + adapter GGUF")
    exp.add_argument("--quantization", default="f16", choices=["f16", "q8_0", "q4_k_m"],
                     help="f16: exact (default); q8_0: half the size, near-lossless; q4_k_m: a quarter, some drift")
    exp.add_argument("--output", default=None, help="folder to write into (default: DATA/exports/MODEL_ID/)")
    exp.add_argument("--no-verify", action="store_true", help="skip the llama.cpp vs transformers check")
    exp.add_argument("--json", action="store_true", help="print one JSON object as the last line of stdout")

    srv = sub.add_parser("serve", help="serve a model's GGUF export with an OpenAI-compatible API",
                         description="Serve the newest GGUF export of a model (or a .gguf file) with "
                                     "llama-cpp-python's OpenAI-compatible server: POST /v1/chat/completions.")
    srv.add_argument("model", help="a model record id or name (its newest GGUF export), or a .gguf file")
    srv.add_argument("--host", default="127.0.0.1", help="interface (default 127.0.0.1; others need --api-key)")
    srv.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    srv.add_argument("--api-key", default=None, help="key clients must send (or MODELFORGE_API_KEY)")
    srv.add_argument("--no-auth", action="store_true", help="allow a non-loopback server without a key")
    srv.add_argument("--max-tokens", type=int, default=512, help="upper bound of max_tokens per request (default 512)")
    _add_evaluate_parser(sub)  # issue 16

    for name, text in (("models", "list trained models"), ("runs", "list training runs"),
                       ("info", "list providers, strategies and tasks, and whether each works here"),
                       ("hardware", "describe this machine and what it can train")):
        p = sub.add_parser(name, help=text)
        p.add_argument("--json", action="store_true", help="print JSON")
    return parser


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """--config YAML first, then every flag that was given, through the one parser of config
    values (:func:`core.checks.parse_config`), which the form uses too.

    Raises:
        ConfigError: a bad YAML file or flag values of the wrong type, out of range or not one of
            their choices (all problems at once, each naming its flag).
    """
    base = load_yaml(args.config) if args.config else RunConfig()
    given = {f.name: getattr(args, f"cfg_{f.name}") for f in fields(RunConfig)
             if getattr(args, f"cfg_{f.name}", None) is not None}
    return parse_config(given, base, source="the command line", flags=True)


# -- commands -----------------------------------------------------------------------------------------
def _services():
    from app.services import build_services

    return build_services()


def cmd_train(args) -> int:
    from core.checks import run_checks
    from core.engine import run_training
    from core.errors import ConfigError, ModelForgeError
    from core.events import EventLog
    from core.run import create_run, resumable

    services = _services()
    store = services.store
    resume_from = None
    if getattr(args, "more", None):  # issue 16: train a completed run more
        from core.train_more import prepare_more

        try:
            config, run_id, run_dir, resume_from = prepare_more(store, args.more, steps=args.more_steps,
                                                                epochs=args.more_epochs)
        except ModelForgeError as exc:
            raise ConfigError(exc.message, exc.hint) from None
    elif args.resume:
        try:
            config, run_dir, resume_from = resumable(store, args.resume)
        except ModelForgeError as exc:  # the same rule as the app's Resume, as a bad-input exit
            raise ConfigError(exc.message, exc.hint) from None
        run_id = args.resume
        run = store.get_run(run_id)
        config = resumed_config(args, run, resume_from)
        if config.to_dict() != run.config:  # --max-steps etc.: the record and config.yaml say it too
            from core.config import save_yaml

            save_yaml(config, run_dir / "config.yaml")
            store.update_run(run_id, config=config.to_dict())
        store.update_run(run_id, status="queued", error=None, finished_at=None)
    else:
        checked = run_checks(config_from_args(args))
        if checked.problems:
            raise ConfigError(f"Cannot start: {len(checked.problems)} problem(s) found before training.",
                              problems=checked.problems, hint="fix them and run again; nothing was recorded")
        config, run_id, run_dir = create_run(checked.config, store)
        if checked.memory.verdict:  # plain words (core says the state; only the app draws icons)
            print(f"memory: {checked.memory.verdict}", file=sys.stderr)

    events = EventLog(run_id)
    events.subscribe(_ProgressPrinter(quiet=args.json))
    stop = threading.Event()

    def _on_sigint(signum, frame):  # first Ctrl-C: graceful stop with a checkpoint
        if stop.is_set():
            raise KeyboardInterrupt
        print("\nStopping after this step and saving a checkpoint (Ctrl-C again to abort)...", file=sys.stderr)
        stop.set()

    previous = signal.signal(signal.SIGINT, _on_sigint)
    try:
        print(f"run {run_id}: {config.strategy} on {config.model} with {config.dataset} -> {run_dir}", file=sys.stderr)
        result = run_training(config, store, events, run_id, run_dir, stop_event=stop, resume_from=resume_from)
    finally:
        signal.signal(signal.SIGINT, previous)
    out = {
        "run_id": result.run_id, "status": result.status, "output_dir": result.output_dir,
        "model_id": result.model_id, "model_dir": str(run_dir / "model") if result.model_id else None,
        "metrics": result.metrics, "error": result.error, "hint": result.hint,
    }
    if args.json:
        print(json.dumps(out, default=str))
    else:
        if result.status == "completed":
            print(f"completed: model {result.model_id} in {run_dir / 'model'}")
            for k, v in result.metrics.items():
                print(f"  {k}: {v:.4g}" if isinstance(v, float) else f"  {k}: {v}")
            print(f'try it: modelforge generate --model {result.model_id} --prompt "..."')
    if result.status == "completed":
        return EXIT_OK
    if result.status == "cancelled":
        print(f"stopped: resume with `modelforge train --resume {run_id}`", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(f"error: {result.error}" + (f"\nhint: {result.hint}" if result.hint else ""), file=sys.stderr)
    from core.faults import DISK_FULL

    # A full disk is no bad input: the run failed (exit 1); it resumes once there is space.
    return EXIT_FAULT if result.fault or (result.error or "").startswith(DISK_FULL) else EXIT_INPUT


# What a resume may change: how long it trains, how it checkpoints and logs, and whether it is
# compiled (torch.compile changes the speed, not the training: a compiled checkpoint holds the
# same weights and optimizer state as an eager one). Anything else (model, data, LoRA, learning
# rate...) would make it another training than its checkpoint's.
RESUMABLE_FIELDS = ("max_steps", "num_epochs", "save_steps", "save_total_limit", "logging_steps", "eval_steps",
                    "compile")


def resumed_config(args: argparse.Namespace, run: Any, checkpoint: str) -> RunConfig:
    """The config a resumed run continues with: its own, plus the flags a resume may change.

    Raises:
        ConfigError: --config, or a flag a resume cannot honour (named, with why), or a
            --max-steps the run has already reached.
    """
    import re

    from core.config import coerce, field_problems
    from core.errors import ConfigError, Problem

    given = {f.name: getattr(args, f"cfg_{f.name}") for f in fields(RunConfig)
             if getattr(args, f"cfg_{f.name}", None) is not None}
    problems = []
    if args.config:
        problems.append(Problem("--config cannot be combined with --resume: the run keeps its own config",
                                f"change only {', '.join('--' + n.replace('_', '-') for n in RESUMABLE_FIELDS)}",
                                field="--config"))
    for name in given:
        if name not in RESUMABLE_FIELDS:
            problems.append(Problem(
                f"--{name.replace('_', '-')} cannot change when resuming run {run.id}: its checkpoint was trained "
                "with the recorded value", "start a new run with it, or resume with only "
                + ", ".join("--" + n.replace("_", "-") for n in RESUMABLE_FIELDS), field="--" + name.replace("_", "-")))
    data = dict(run.config)
    for name in given:
        if name in RESUMABLE_FIELDS:
            try:
                data[name] = coerce(next(f for f in fields(RunConfig) if f.name == name), given[name])
            except ValueError as exc:
                problems.append(Problem(str(exc), "see `modelforge train --help`", field="--" + name.replace("_", "-")))
    if problems:
        raise ConfigError(f"Cannot resume run {run.id} with these flags.", problems=problems)
    config = RunConfig.from_dict(data, source=f"run {run.id}")
    problems = [p for f in fields(RunConfig) if f.name in given for p in field_problems(f, getattr(config, f.name))]
    done = int(m.group(1)) if (m := re.search(r"checkpoint-(\d+)$", str(checkpoint))) else 0
    if "max_steps" in given and 0 < config.max_steps <= done:
        problems.append(Problem(f"--max-steps {config.max_steps}: run {run.id} resumes from step {done}",
                                f"give a --max-steps above {done}", field="--max-steps"))
    if problems:
        raise ConfigError(f"Cannot resume run {run.id} with these flags.", problems=problems)
    return config


class _ProgressPrinter:
    """One updating progress line on stderr, a line per evaluation."""

    def __init__(self, quiet: bool):
        self.quiet = quiet
        self.tty = sys.stderr.isatty()

    def __call__(self, ev) -> None:
        d = ev.data
        if ev.type == "step":
            eta = f" ETA {d['eta_s']:.0f}s" if d.get("eta_s") is not None else ""
            tps = f" {d['tokens_per_second']:.0f} tok/s" if d.get("tokens_per_second") else ""
            line = f"step {ev.step}/{ev.total_steps} loss {d['loss']:.4f} lr {d.get('learning_rate') or 0:.2e}{tps}{eta}"
            print(("\r" + line.ljust(90)) if self.tty else line, end="" if self.tty else "\n", file=sys.stderr, flush=True)
        elif ev.type == "eval":
            values = " ".join(f"{k.removeprefix('eval_')} {v:.4g}" for k, v in d.items()
                              if isinstance(v, (int, float)) and k.startswith(("eval_", "perplexity")))
            print(("\n" if self.tty else "") + f"eval at step {ev.step}: {values}", file=sys.stderr)
        elif ev.type == "checkpoint":
            if self.tty:
                print(file=sys.stderr)
            print(f"checkpoint saved at step {ev.step}", file=sys.stderr)
        elif ev.type == "log":
            print(d.get("message", ""), file=sys.stderr)
        elif ev.type in ("finished", "cancelled", "failed") and self.tty:
            print(file=sys.stderr)


def cmd_validate(args) -> int:
    from core.checks import validate_file
    from core.config import parse_mapping
    from core.data.chat import options_of
    from core.data.validate import attach_samples

    render = options_of(args)  # chat_template, train_turns, reasoning, loss_on
    tokenizer = None
    if args.model:
        tokenizer = _tokenizer(args.model)
    try:
        column_map = parse_mapping(args.column_map)
    except ValueError as exc:
        from core.errors import ConfigError

        raise ConfigError(f"--column-map: {exc}", "use old=new,old2=new2") from None
    report = validate_file(args.path, task=args.task, strategy=args.strategy, dataset_format=args.dataset_format,
                           column_map=column_map, tokenizer=tokenizer, max_length=args.max_length, render=render)
    if args.samples > 0 and (tokenizer is None or args.samples != 3):
        try:  # no --model: the samples are rendered with the demo model's tokenizer (ChatML)
            attach_samples(report, tokenizer or _tokenizer("demo"), render, n=args.samples)
        except Exception as exc:  # noqa: BLE001 - the samples are extra; the report stands without them
            report.details["samples_error"] = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
    elif args.samples <= 0:
        report.samples = []
    if args.json:
        print(json.dumps(report.to_dict(), default=str))
    else:
        print(report.summary())
        print("trainable: yes" if report.ok else "trainable: NO - fix the errors above")
    return EXIT_OK if report.ok else EXIT_INPUT


def _tokenizer(model: str):
    from transformers import AutoTokenizer

    from core.models import prepare_tokenizer, resolve_model_path

    return prepare_tokenizer(AutoTokenizer.from_pretrained(resolve_model_path(model)))


def cmd_generate(args) -> int:
    from pathlib import Path

    from core.errors import NotFoundError
    from core.inference import generate, load_model

    from core.limits import MAX_NEW_TOKENS, check_text, float_in_range, int_in_range

    args.max_new_tokens = int_in_range(args.max_new_tokens, "--max-new-tokens", 1, MAX_NEW_TOKENS)
    args.temperature = float_in_range(args.temperature, "--temperature", 0.0, 2.0)
    check_text(args.prompt, "prompt")
    check_text(args.context, "context")
    target = check_text(args.model, "model")
    if not Path(target).expanduser().exists() and target != "demo":
        store = _services().store
        try:
            target = store.get_model(args.model).path
        except NotFoundError:
            if "/" not in args.model:
                raise
    lm = load_model(target, base_only=args.base)
    extra: dict = {}
    if lm.kind == "qa":
        from core.errors import ConfigError
        from core.inference import answer as answer_span

        if not args.context:
            raise ConfigError("this is an extractive-QA model: it needs --context TEXT to find the answer in")
        extra = answer_span(lm, args.prompt, args.context)
        answer = extra["answer"]
    elif lm.kind == "seq2seq" or lm.card.get("task") == "summarization":
        from core.inference import summarize

        answer = summarize(lm, args.prompt, max_new_tokens=args.max_new_tokens)
    else:
        answer = generate(lm, args.prompt, max_new_tokens=args.max_new_tokens, temperature=args.temperature)
    if args.json:
        print(json.dumps({"model": lm.name, "prompt": args.prompt, "answer": answer, **extra}))
    else:
        print(answer if answer else "(no answer found)" if lm.kind == "qa" else answer)
    return EXIT_OK


def cmd_export(args) -> int:
    from core.export import export_model

    def progress(fraction: float, message: str) -> None:
        print(f"[{fraction * 100:3.0f}%] {message}", file=sys.stderr, flush=True)

    result = export_model(_services().store, args.model, args.export_format, args.quantization, args.output,
                          progress=progress, verify=not args.no_verify)
    out = result.to_dict()
    v = result.verification
    if args.json:
        print(json.dumps(out, default=str))
    else:
        print(f"exported {result.format}" + (f" {result.quantization}" if result.quantization else "")
              + f": {result.path} ({result.bytes / 2**20:.1f} MiB, {result.seconds:.0f} s)")
        if result.modelfile:
            print(f"Ollama: ollama create NAME -f {result.modelfile}")
        if v.get("rows"):
            print(f"verification ({v.get('runtime')}): {v['same_text']}/{v['prompts']} same answers, "
                  f"mean token agreement {v['mean_token_agreement']:.2f}")
            for r in v["rows"]:
                mark = "same" if r["same_text"] else f"{r['token_agreement']:.2f}"
                print(f"  [{mark}] {r['prompt'][:40]!r}: {r['llama_cpp'][:70]!r}")
    for w in result.warnings:
        print(f"warning: {w}", file=sys.stderr)
    return EXIT_OK


def cmd_serve(args) -> int:
    from core.errors import ConfigError
    from core.serve import check_access, find_gguf, serve

    if not 1 <= args.max_tokens <= 32768:
        raise ConfigError("--max-tokens must be between 1 and 32768")
    key = check_access(args.host, args.api_key, args.no_auth)
    served = find_gguf(_services().store, args.model)
    print(f"serving {served.gguf}" + (f" + LoRA {served.lora}" if served.lora else "")
          + f" as '{served.name}' on http://{args.host}:{args.port}/v1 (OpenAI API; max_tokens <= {args.max_tokens})",
          file=sys.stderr, flush=True)
    serve(served, args.host, args.port, api_key=key, max_tokens=args.max_tokens)
    return EXIT_OK


def _table(rows: list[list[str]], headers: list[str]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)] if rows else [len(h) for h in headers]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*headers)] + [fmt.format(*map(str, r)) for r in rows])


def cmd_models(args) -> int:
    from core.records import record_to_dict

    models = _services().store.list_models()
    if args.json:
        print(json.dumps([record_to_dict(m) for m in models]))
        return EXIT_OK
    if not models:
        print("no models yet: train one with `modelforge train` (see --help)")
        return EXIT_OK
    rows = [[m.id, m.name, m.base_model[:30], m.task, m.strategy, f"{m.created_at:%Y-%m-%d %H:%M}",
             " ".join(f"{k}={v:.3g}" for k, v in m.metrics.items() if isinstance(v, float) and k != "train_runtime_s")]
            for m in models]
    print(_table(rows, ["id", "name", "base", "task", "strategy", "created", "metrics"]))
    return EXIT_OK


def cmd_runs(args) -> int:
    from core.records import record_to_dict

    runs = _services().store.list_runs()
    if args.json:
        print(json.dumps([record_to_dict(r) for r in runs]))
        return EXIT_OK
    if not runs:
        print("no runs yet: start one with `modelforge train`")
        return EXIT_OK
    rows = [[r.id, r.name, r.status, f"{r.last_step}/{r.total_steps}", f"{r.created_at:%Y-%m-%d %H:%M}",
             (r.error or "")[:60]] for r in runs]
    print(_table(rows, ["id", "name", "status", "step", "created", "error"]))
    return EXIT_OK


def cmd_info(args) -> int:
    from core.catalog import describe

    info = describe()
    if args.json:
        print(json.dumps(info))
        return EXIT_OK
    for section in ("providers", "strategies", "tasks"):
        print(f"{section}:")
        for item in info[section]:
            mark = "yes" if item["available"] else "no "
            why = f"  ({item['reason']})" if item.get("reason") else ""
            print(f"  [{mark}] {item['name']:<16} {item['description']}{why}")
    return EXIT_OK


def cmd_doctor(args) -> int:
    from app.services import sqlite_file
    from core.doctor import rebuild
    from core.paths import database_url, runs_dir

    url = database_url()
    report = rebuild(url, sqlite_file(url), runs_dir())
    if args.json:
        print(json.dumps(report.to_dict()))
    else:
        print("\n".join(report.lines()))
    return EXIT_OK


def cmd_hardware(args) -> int:
    from core.checks import hardware_report
    from core.hardware import summary_lines

    report = hardware_report()
    if args.json:
        print(json.dumps(report.to_dict(), default=str))
    else:
        print("\n".join(summary_lines(report)))
    return EXIT_OK


def cmd_ui(args) -> int:
    from app import startup_gc

    startup_gc.pause()  # launch() resumes it once the app is built (app/startup_gc.py)
    try:
        from app.ui import launch

        launch(host=args.host, port=args.port, share=args.share, auth=args.auth, no_auth=args.no_auth,
               open_browser=not args.no_browser)
    finally:
        startup_gc.resume()
    return EXIT_OK


# -- evaluate (issue 16): base vs tuned on held-out rows ------------------------------------------------
def _add_evaluate_parser(sub) -> None:
    ev = sub.add_parser("evaluate", help="did the fine-tune help? base vs tuned on held-out rows",
                        description="The base model and the tuned model answer the held-out prompts of the "
                                    "model's run (or --dataset FILE), greedy with the same settings; each answer "
                                    "is scored with the task's metrics. Bounded on a CPU by default.")
    ev.add_argument("model", help="a model record id or name (modelforge models), or a model folder")
    ev.add_argument("--dataset", help="evaluate on this file instead of the run's held-out rows")
    ev.add_argument("--max-rows", type=int, default=None, help="rows to evaluate (default: 30 on a CPU, 200 on a GPU)")
    ev.add_argument("--max-new-tokens", type=int, default=None,
                    help="longest generated answer (default: 64 on a CPU, 256 on a GPU)")
    ev.add_argument("--json", action="store_true", help="print one JSON object as the last line of stdout")


def cmd_evaluate(args) -> int:
    from pathlib import Path

    from core.compare_eval import evaluate_model

    store = _services().store
    model_id = None
    folder = Path(args.model).expanduser()
    if not folder.is_dir():
        rec = store.get_model(args.model)
        folder, model_id = Path(rec.path), rec.id

    def progress(done: int, total: int, message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    stop = threading.Event()
    previous = signal.signal(signal.SIGINT, lambda s, f: stop.set())  # Ctrl-C: stop after this batch, keep the rows done
    try:
        result = evaluate_model(folder, dataset=args.dataset, max_rows=args.max_rows,
                                max_new_tokens=args.max_new_tokens, store=store, model_id=model_id,
                                progress=progress, stop_event=stop)
    finally:
        signal.signal(signal.SIGINT, previous)
    if args.json:
        print(json.dumps(result.to_dict(), default=str))
    else:
        print(result.summary())
        print(f"  bounds: {result.limits}")
        names = sorted(set(result.base) | set(result.tuned))
        print(_table([[n, f"{result.base.get(n, float('nan')):.4g}", f"{result.tuned.get(n, float('nan')):.4g}"]
                      for n in names], ["metric", "base", "tuned"]))
        print(f"predictions: {result.predictions}")
    return EXIT_OK


COMMANDS = {"train": cmd_train, "validate": cmd_validate, "generate": cmd_generate, "evaluate": cmd_evaluate,
            "models": cmd_models, "export": cmd_export, "serve": cmd_serve, "runs": cmd_runs, "info": cmd_info,
            "hardware": cmd_hardware, "ui": cmd_ui, "doctor": cmd_doctor}


def main(argv: list[str] | None = None) -> int:
    """The ``modelforge`` command; ``argv`` None means this process is the command (its exit is
    then made quick, app/startup_gc.py), a list means a caller runs it in its own process."""
    code = _main(argv)
    if argv is None:
        from app import startup_gc

        startup_gc.before_exit()
    return code


def _main(argv: list[str] | None) -> int:
    _quiet_libraries()
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        argv = ["ui"]
    args = parser.parse_args(argv)
    from core.errors import ModelForgeError

    unusable = _home_unusable()
    if unusable:  # one line, not a traceback from every place that writes (the fault log too)
        if getattr(args, "json", False):
            print(json.dumps({"status": "error", "error": "DataFolderError", "message": unusable,
                              "hint": HOME_HINT}))
        print(f"error: {unusable}: {HOME_HINT}", file=sys.stderr)
        return EXIT_INPUT

    try:
        code = COMMANDS[args.command](args)
    except ModelForgeError as exc:
        if getattr(args, "json", False):
            print(json.dumps({"status": "error", **exc.to_dict()}))
        print(f"error: {exc}", file=sys.stderr)
        code = EXIT_INPUT
    except KeyboardInterrupt:
        print("aborted", file=sys.stderr)
        code = EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - an unexpected fault: log it whole, say it in one line
        log_path = _log_fault()
        first = (str(exc).splitlines()[0] if str(exc) else "")[:300]
        if getattr(args, "json", False):  # --json promises one JSON line, whatever happened
            print(json.dumps({"status": "error", "error": type(exc).__name__, "message": first,
                              "hint": f"details in {log_path}"}))
        print(f"internal error: {type(exc).__name__}: {first} (details in {log_path})", file=sys.stderr)
        code = EXIT_FAULT
    return code


HOME_HINT = ("set MODELFORGE_HOME to a folder you can write to (e.g. MODELFORGE_HOME=~/modelforge), "
             "or give yourself write permission on it")


def _home_unusable() -> str | None:
    """Why the data folder cannot be used (missing permissions, read-only), or None."""
    from core.faults import home_problem
    from core.paths import home_path

    return home_problem(home_path())


def _log_fault() -> str:
    from core.paths import log_fault

    return log_fault("the command line")


if __name__ == "__main__":
    sys.exit(main())
