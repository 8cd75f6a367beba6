"""The ``modelforge`` command: ui | train | validate | generate | models | runs | info | hardware.

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
def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per RunConfig field, grouped by section, help text from the field's metadata."""
    groups: dict[str, Any] = {}
    for f in fields(RunConfig):
        section = f.metadata["section"]
        group = groups.setdefault(section, parser.add_argument_group(f"{section} options"))
        flag = "--" + f.name.replace("_", "-")
        default = f.default if not callable(getattr(f, "default_factory", None)) else f.default_factory()
        help_text = f.metadata["help"] + f" (default: {default if default != '' else 'none'})"
        kwargs: dict[str, Any] = {"dest": f"cfg_{f.name}", "default": None, "help": help_text}
        choices = field_choices(f)
        if choices:
            kwargs["choices"] = choices
        if f.type in ("bool", bool):
            kwargs["metavar"] = "{true,false}"
        group.add_argument(flag, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="modelforge",
        description="ModelForge: fine-tune a language model on your own machine. "
                    "With no command, launches the app.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    ui = sub.add_parser("ui", help="launch the web app (the default command)")
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

    train = sub.add_parser("train", help="fine-tune a model (flags override --config)",
                           description="Fine-tune a model. Every field of the run config is a flag; "
                                       "flags override values from --config.")
    train.add_argument("--config", help="YAML run config (see assets/presets/)")
    train.add_argument("--resume", metavar="RUN_ID", help="continue a stopped or interrupted run from its last checkpoint")
    train.add_argument("--json", action="store_true", help="print one JSON object as the last line of stdout")
    train.add_argument("--more", metavar="RUN_ID",  # issue 16
                       help="train a completed run more, from its last checkpoint (with --more-steps or "
                            "--more-epochs): a new run of the same name, its model a new version")
    train.add_argument("--more-steps", type=int, default=0, help="with --more: this many more optimizer steps")
    train.add_argument("--more-epochs", type=float, default=0.0, help="with --more: this many more epochs")
    _add_config_flags(train)

    val = sub.add_parser("validate", help="check a data file before training")
    val.add_argument("path", help="a .json, .jsonl, .csv or .parquet file")
    val.add_argument("--task", choices=TASKS, default="text-generation")
    val.add_argument("--strategy", default="sft", help="the strategy the data is for (default: sft)")
    val.add_argument("--format", dest="dataset_format", default="auto", help="force a data format (default: auto)")
    val.add_argument("--column-map", default="", help="rename columns: old=new,old2=new2")
    val.add_argument("--model", default=None,
                     help="also measure token lengths with this model's tokenizer (e.g. demo)")
    val.add_argument("--max-length", type=int, default=512, help="token limit to check lengths against")
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
        store.update_run(run_id, status="queued", error=None, finished_at=None)
    else:
        checked = run_checks(config_from_args(args))
        if checked.problems:
            raise ConfigError(f"Cannot start: {len(checked.problems)} problem(s) found before training.",
                              problems=checked.problems, hint="fix them and run again; nothing was recorded")
        config, run_id, run_dir = create_run(checked.config, store)

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
    return EXIT_FAULT if result.fault else EXIT_INPUT


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

    tokenizer = None
    if args.model:
        from transformers import AutoTokenizer

        from core.models import prepare_tokenizer, resolve_model_path

        tokenizer = prepare_tokenizer(AutoTokenizer.from_pretrained(resolve_model_path(args.model)))
    try:
        column_map = parse_mapping(args.column_map)
    except ValueError as exc:
        from core.errors import ConfigError

        raise ConfigError(f"--column-map: {exc}", "use old=new,old2=new2") from None
    report = validate_file(args.path, task=args.task, strategy=args.strategy, dataset_format=args.dataset_format,
                           column_map=column_map, tokenizer=tokenizer, max_length=args.max_length)
    if args.json:
        print(json.dumps(report.to_dict(), default=str))
    else:
        print(report.summary())
        print("trainable: yes" if report.ok else "trainable: NO - fix the errors above")
    return EXIT_OK if report.ok else EXIT_INPUT


def cmd_generate(args) -> int:
    from pathlib import Path

    from core.errors import NotFoundError
    from core.inference import generate, load_model

    target = args.model
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
    from app.ui import launch

    launch(host=args.host, port=args.port, share=args.share, auth=args.auth, no_auth=args.no_auth)
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


COMMANDS = {"evaluate": cmd_evaluate, "train": cmd_train, "validate": cmd_validate, "generate": cmd_generate, "models": cmd_models,
            "runs": cmd_runs, "info": cmd_info, "hardware": cmd_hardware, "ui": cmd_ui}


def main(argv: list[str] | None = None) -> int:
    _quiet_libraries()
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        argv = ["ui"]
    args = parser.parse_args(argv)
    from core.errors import ModelForgeError

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
        print(f"internal error: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''} "
              f"(details in {log_path})", file=sys.stderr)
        code = EXIT_FAULT
    return code


def _log_fault() -> str:
    from core.paths import log_fault

    return log_fault("the command line")


if __name__ == "__main__":
    sys.exit(main())
