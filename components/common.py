"""What the tabs share: the app context, the model cache, error handling and small formatters.

The tabs never hold models or training state themselves. They get one :class:`AppContext`
(built once by ``app/ui.py`` from the services), call ``core`` through it, and turn
``ModelForgeError`` into a Gradio error that carries the engine's message, never a traceback.

Nothing here imports torch or transformers at import time: the first page must load fast.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import logging
import os
import shutil
import tempfile
import threading
import typing
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import gradio as gr

from core.config import RunConfig, load_yaml
from core.errors import DataError, ModelForgeError
from core.paths import ASSETS, EXAMPLES, fault_log_path, home, log_fault, logs_dir  # noqa: F401

log = logging.getLogger("modelforge.ui")

PRESETS_DIR = ASSETS / "presets"
DEFAULT_PRESET = "identity-demo"
DEFAULT_EXAMPLE = "identity.json"
DATA_SUFFIXES = (".json", ".jsonl", ".csv", ".parquet", ".txt")


# -- the model cache ------------------------------------------------------------------------------
class ModelCache:
    """Loaded models and tokenizers, shared by every browser session, keyed by a string.

    Models are big: they never go into ``gr.State`` (one copy per session). The Playground asks
    this cache, which keeps the ``max_models`` most recently used and loads each key once even
    when two sessions ask at the same time.

    Args:
        max_models: how many models stay loaded (a tuned model and its base count as two).
    """

    def __init__(self, max_models: int = 3):
        self.max_models = max_models
        self._models: "OrderedDict[str, Any]" = OrderedDict()
        self._tokenizers: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._key_locks: dict[str, threading.Lock] = {}

    def _key_lock(self, key: str) -> threading.Lock:
        with self._lock:
            return self._key_locks.setdefault(key, threading.Lock())

    def get(self, key: str, loader: Callable[[], Any]) -> Any:
        """The object cached under ``key``, loading it with ``loader()`` the first time."""
        with self._lock:
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key]
        with self._key_lock(key):
            with self._lock:
                if key in self._models:
                    return self._models[key]
            value = loader()
            with self._lock:
                self._models[key] = value
                while len(self._models) > self.max_models:
                    self._models.popitem(last=False)
            return value

    def evict(self, prefix: str) -> None:
        """Forget every model whose key starts with ``prefix`` (after a delete)."""
        with self._lock:
            for key in [k for k in self._models if k.startswith(prefix)]:
                del self._models[key]

    def keys(self) -> list[str]:
        with self._lock:
            return list(self._models)

    def tokenizer(self, model: str, task: str = "text-generation") -> Any:
        """The prepared tokenizer of ``model`` ('demo', a folder or a cached hub id) for ``task``
        ('demo' is a different model per task).

        Raises:
            ModelLoadError / OfflineError: it cannot be loaded here.
        """
        model = (model or "demo").strip()
        key = f"{task}:{model}"
        with self._key_lock("tok:" + key):
            if key not in self._tokenizers:
                from transformers import AutoTokenizer

                from core.errors import ModelLoadError
                from core.models import prepare_tokenizer, resolve_model_path

                path = resolve_model_path(model, task=task)
                try:
                    tok = AutoTokenizer.from_pretrained(path)
                except (OSError, ValueError) as exc:
                    raise ModelLoadError(f"could not load the tokenizer of '{model}': "
                                         f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}",
                                         "check the model name or folder") from None
                self._tokenizers[key] = prepare_tokenizer(tok, chat=task == "text-generation")
            return self._tokenizers[key]


@dataclass
class AppContext:
    """Everything a tab handler may use. Built once per app (tests build their own).

    Attributes:
        store: the record store (runs, models, metrics).
        jobs: the job manager that owns the device.
        models: loaded models for the Playground.
        restrict_paths: True for a share link or a Space: the app then reads data only from
            uploads, the bundled examples and the data folder, never from any server path.
    """

    store: Any
    jobs: Any
    models: ModelCache = field(default_factory=ModelCache)
    restrict_paths: bool = False

    @classmethod
    def from_services(cls, services: Any, restrict_paths: bool = False) -> "AppContext":
        return cls(store=services.store, jobs=services.jobs, restrict_paths=restrict_paths)


# -- errors ---------------------------------------------------------------------------------------
def _log_fault(where: str) -> str:
    """Write the current traceback to the app log (never to the page); return the log path."""
    return log_fault(where)


# How long an error toast stays (seconds). Short: the problem is often fixed within seconds, and
# Gradio groups toasts of one kind into one box that does not time out while it holds several
# (assets/toasts.js closes each box after this long, whatever it holds).
TOAST_SECONDS = 8
# The same message for the same page within this many seconds is not shown again: one problem is
# often reported by two events at once (a change and a blur), and the copies used to stack up.
REPEAT_SECONDS = 6.0
_recent_toasts: "OrderedDict[tuple[str, str], float]" = OrderedDict()
_recent_lock = threading.Lock()


def toast_html(message: str, hint: str = "", problems: list | None = None) -> str:
    """A toast's text: the message, then each problem, then the fix on its own smaller line.

    Gradio renders a toast's message as (sanitised) HTML, so the parts are escaped here.
    """
    import html

    parts = [html.escape(message, quote=False)]
    parts += [f"<span class='mf-toast-item'>{html.escape(str(p), quote=False)}</span>" for p in (problems or [])[:8]]
    if hint:
        parts.append(f"<span class='mf-toast-fix'>Fix: {html.escape(hint, quote=False)}</span>")
    return "<br>".join(parts)


def _seen_recently(text: str) -> bool:
    """True when this page was shown ``text`` less than REPEAT_SECONDS ago (then it is not shown again)."""
    import time

    try:
        from gradio.context import LocalContext

        request = LocalContext.request.get(None)
        session = str(getattr(request, "session_hash", "") or "")
    except Exception:  # noqa: BLE001 - no request (tests, scripts): always show
        return False
    if not session:
        return False
    now = time.monotonic()
    with _recent_lock:
        for key in [k for k, t in _recent_toasts.items() if now - t > REPEAT_SECONDS]:
            del _recent_toasts[key]
        seen = (session, text) in _recent_toasts
        _recent_toasts[(session, text)] = now
        while len(_recent_toasts) > 512:
            _recent_toasts.popitem(last=False)
    return seen


def to_gradio_error(exc: BaseException, where: str = "the app") -> gr.Error:
    """A ``gr.Error`` with the engine's message and, on its own line, the fix (ModelForgeError), or
    one line naming a bug. A repeat of the same message on the same page is raised invisibly."""
    if isinstance(exc, gr.Error):
        return exc
    if isinstance(exc, ModelForgeError):
        text = toast_html(exc.message, exc.hint, exc.problems)
        return gr.Error(text, title=_title(exc), print_exception=False, duration=TOAST_SECONDS,
                        visible=not _seen_recently(text))
    path = _log_fault(where)
    first = str(exc).splitlines()[0][:300] if str(exc) else ""
    return gr.Error(toast_html(f"Unexpected error: {type(exc).__name__}: {first}", f"details in {path}"),
                    title="Internal error", print_exception=False, duration=TOAST_SECONDS)


def _title(exc: ModelForgeError) -> str:
    name = type(exc).__name__
    return {"ConfigError": "Configuration problem", "DataError": "Data problem",
            "ModelLoadError": "Model could not be loaded", "OfflineError": "Offline",
            "NotAvailableError": "Not available", "TrainingError": "Training failed",
            "NotFoundError": "Not found", "BusyError": "Busy"}.get(name, "Error")


def guard(fn: Callable) -> Callable:
    """Wrap a handler for Gradio: user errors become ``gr.Error`` with the engine's message.

    Works for plain functions and generators (streaming handlers), and keeps the signature and
    type hints (``gr.api`` reads them).
    """
    where = getattr(fn, "__name__", "handler")
    wrapped = _gen_guard(fn, where) if inspect.isgeneratorfunction(fn) else _plain_guard(fn, where)
    # Resolve string annotations (``from __future__ import annotations``) once, in fn's module:
    # gr.api derives the endpoint's schema from them and would look in this module instead.
    try:
        wrapped.__signature__ = inspect.signature(fn, eval_str=True)
        wrapped.__annotations__ = typing.get_type_hints(fn)
    except (NameError, TypeError):
        pass
    return wrapped


def check_text_args(fn: Callable, args: tuple, kwargs: dict) -> None:
    """Refuse any text argument over its length limit, by parameter name, before the handler runs.

    A 10 MB "dataset" or "run_id" must be answered with the field's limit, not echoed back or
    turned into "File name too long" (see ``core.limits``).

    Raises:
        ConfigError: naming the parameter, the length and the limit.
    """
    from core.limits import check_text

    try:
        bound = inspect.signature(fn).bind_partial(*args, **kwargs)
    except (TypeError, ValueError):
        return
    for name, value in bound.arguments.items():
        if isinstance(value, str):
            check_text(value, name)


def _gen_guard(fn: Callable, where: str) -> Callable:
    @functools.wraps(fn)
    def gen_wrapper(*args, **kwargs):
        try:
            check_text_args(fn, args, kwargs)
            yield from fn(*args, **kwargs)
        except gr.Error:
            raise
        except Exception as exc:  # noqa: BLE001 - shown as a message, logged in full
            raise to_gradio_error(exc, where) from None
    return gen_wrapper


def _plain_guard(fn: Callable, where: str) -> Callable:
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            check_text_args(fn, args, kwargs)
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except Exception as exc:  # noqa: BLE001 - shown as a message, logged in full
            raise to_gradio_error(exc, where) from None
    return wrapper


def for_client(value: Any) -> Any:
    """An API answer that gradio_client will not mistake for files.

    gradio_client treats every dict with a string "path" key in an answer as a file to download
    (and fails on folders), so "path" keys are renamed "folder".
    """
    if isinstance(value, dict):
        return {("folder" if k == "path" else k): for_client(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [for_client(v) for v in value]
    return value


def endpoint(fn: Callable) -> Callable:
    """``guard`` for a named API endpoint, with its answer made safe for gradio_client."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return for_client(fn(*args, **kwargs))
    return guard(wrapper)


def warn(message: str) -> None:
    """A yellow toast in the page; a log line when called outside a Gradio request (tests)."""
    try:
        gr.Warning(message, duration=TOAST_SECONDS)
    except Exception:  # noqa: BLE001 - no request context
        log.warning(message)


def info(message: str) -> None:
    try:
        gr.Info(message, duration=TOAST_SECONDS)
    except Exception:  # noqa: BLE001
        log.info(message)


# -- mappings and formatting ----------------------------------------------------------------------
def mapping_to_text(mapping: dict | None) -> str:
    """``{a: b, c: d}`` -> ``a=b,c=d`` (the form of a mapping field in the form and the CLI)."""
    from core.config import mapping_text

    return mapping_text(mapping)


def parse_mapping_text(text: str | None, field_name: str = "column_map") -> dict:
    """``a=b,c=d`` -> dict.

    Raises:
        ConfigError: naming the field and the bad part.
    """
    from core.config import parse_mapping
    from core.errors import ConfigError, Problem

    try:
        return parse_mapping(text or "")
    except ValueError as exc:
        raise ConfigError(f"{field_name}: {exc}",
                          problems=[Problem(str(exc), "write it as old=new,old2=new2", field=field_name)]) from None


def problems_rows(problems: list) -> list[list[str]]:
    """Problems as table rows: severity, where, what, fix."""
    rows = []
    for p in problems:
        d = p.to_dict() if hasattr(p, "to_dict") else dict(p)
        where = []
        if d.get("file"):
            where.append(Path(str(d["file"])).name)
        if d.get("line") is not None:
            where.append(f"{d.get('unit') or 'line'} {d['line']}")
        if d.get("field"):
            where.append(f"field '{d['field']}'")
        rows.append([d.get("severity", "error"), ", ".join(where), d.get("message", ""), d.get("hint", "")])
    return rows


ICONS = ("ok", "error", "warning", "pause", "chat", "trash", "wait")


def icon(name: str) -> str:
    """An inline icon for Markdown/HTML: a CSS-drawn shape (assets/style.css, ``.mf-i-*``).

    Emoji and symbol glyphs render as empty boxes on a machine without an emoji font; a
    shape drawn by CSS from an inline SVG mask always renders.
    """
    if name not in ICONS:
        raise ValueError(f"unknown icon {name!r}: one of {', '.join(ICONS)}")
    return f"<span class='mf-i mf-i-{name}' role='img' aria-label='{name}'></span>"


def problems_markdown(problems: list, limit: int = 50) -> str:
    """A bullet list of problems (where: what; fix: how)."""
    lines = []
    for sev, where, msg, hint in problems_rows(problems)[:limit]:
        mark = icon("error" if sev == "error" else "warning")
        text = f"- {mark} " + (f"**{where}**: " if where else "") + msg
        if hint:
            text += f" · *fix:* {hint}"
        lines.append(text)
    if len(problems) > limit:
        lines.append(f"- … and {len(problems) - limit} more")
    return "\n".join(lines)


def fmt_bytes(n: float | int | None) -> str:
    if not n:
        return "-"
    n = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {(seconds % 3600) // 60:02d} min"


# -- presets and defaults -------------------------------------------------------------------------
def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def load_preset(name: str) -> RunConfig:
    """A preset from ``assets/presets`` by its bundled name (its dataset path resolved to the bundled file).

    Only the names :func:`preset_names` lists are accepted: never a path, ``..`` or ``~``.

    Raises:
        ConfigError: unknown preset or a bad file.
    """
    from core.errors import ConfigError

    names = preset_names()
    if not isinstance(name, str) or name not in names:
        shown = repr(name[:60] + ("…" if len(name) > 60 else "")) if isinstance(name, str) else type(name).__name__
        raise ConfigError(f"no preset named {shown}", f"choose one of: {', '.join(names) or 'none'}")
    return load_yaml(PRESETS_DIR / f"{name}.yaml")


def default_config() -> RunConfig:
    """What the app opens with: the identity demo on the demo model, ready to train."""
    try:
        return load_preset(DEFAULT_PRESET)
    except ModelForgeError:
        return RunConfig(model="demo", dataset=str(EXAMPLES / DEFAULT_EXAMPLE), name="identity-demo")


# -- data files -----------------------------------------------------------------------------------
def example_names() -> list[str]:
    return sorted(p.name for p in EXAMPLES.iterdir() if p.suffix.lower() in DATA_SUFFIXES)


def gradio_upload_dir() -> Path:
    return Path(os.environ.get("GRADIO_TEMP_DIR") or Path(tempfile.gettempdir()) / "gradio").resolve()


def uploads_dir() -> Path:
    p = home() / "uploads"
    p.mkdir(parents=True, exist_ok=True)
    return p


def file_path_of(value: Any) -> str | None:
    """The path inside whatever Gradio passed for a file: a str, a FileData dict or object."""
    if value is None or value == "":
        return None
    if isinstance(value, (str, Path)):
        return str(value)
    if isinstance(value, dict):
        return value.get("path") or value.get("name")
    return getattr(value, "path", None) or getattr(value, "name", None)


def store_upload(path: str | Path) -> Path:
    """Copy an uploaded file into the data folder so that runs can read it later (resume).

    Gradio's upload folder is temporary; a run's config must name a file that stays. The copy
    goes to ``MODELFORGE_HOME/uploads/<content hash>/<original name>``, so uploading the same
    file twice reuses one copy.
    """
    src = Path(path)
    if not src.is_file():
        raise DataError(f"the uploaded file is gone: {src.name}", "upload it again")
    digest = hashlib.sha256()
    with src.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    name = "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in src.name) or "data.json"
    target = uploads_dir() / digest.hexdigest()[:12] / name
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, target)
    return target


def resolve_dataset(value: str | None, restrict: bool = False, *, from_upload: bool = False) -> str:
    """Turn the dataset the user chose into a path ``core.data`` can read.

    Args:
        value: a bundled example's file name, a path, or a hub dataset id.
        restrict: on a share link or a Space, allow only the bundled examples, the files a guest
            uploaded (``MODELFORGE_HOME/uploads``) and hub ids: a visitor must not read any other
            file of the server (not even the data folder's database, logs or run folders).
        from_upload: ``value`` is the path Gradio handed over for a file the guest uploaded in
            this request (then Gradio's own upload folder is allowed too).

    Raises:
        DataError: nothing chosen. ModelForgeError: a path outside the allowed folders.
    """
    from core.limits import check_text

    text = check_text((value or "").strip(), "dataset")
    if not text:
        raise DataError("no dataset chosen", "upload a file or pick a bundled example in the Dataset tab")
    if text in example_names():
        return str(EXAMPLES / text)
    if restrict:
        from core.public_mode import is_hub_id, within

        roots = [EXAMPLES, uploads_dir()] + ([gradio_upload_dir()] if from_upload else [])
        if not within(text, roots) and (from_upload or not is_hub_id(text)):
            raise ModelForgeError(
                f"this app does not read files from the server's disk ({_clip_name(text)})",
                "upload the file in the Dataset tab, or pick a bundled example")
    return text


def _clip_name(text: str, limit: int = 80) -> str:
    name = Path(text).name or text
    return name if len(name) <= limit else f"{name[:limit]}… ({len(name)} characters)"


def public_problems(ctx: "AppContext", config: RunConfig) -> list:
    """What a guest of a public app may not run in ``config`` (empty: all fine, or a private app)."""
    if not ctx.restrict_paths:
        return []
    from core.paths import runs_dir
    from core.public_mode import public_problems as problems

    return problems(config, data_roots=[EXAMPLES, uploads_dir()], model_roots=[runs_dir()],
                    examples=example_names())


def check_public(ctx: "AppContext", config: RunConfig) -> RunConfig:
    """``config`` when a guest may run it.

    Raises:
        ConfigError: every value a public app refuses (output_dir, server folders...), by field.
    """
    problems = public_problems(ctx, config)
    if problems:
        from core.errors import ConfigError

        raise ConfigError(f"{len(problems)} setting(s) are not allowed in this public app",
                          "see each field's fix", problems=problems)
    return config


def dataset_label(path: str) -> str:
    """A short name for a dataset path (the file name; a bundled example says so)."""
    p = Path(path)
    try:
        if p.resolve().parent == EXAMPLES.resolve():
            return f"{p.name} (bundled example)"
    except OSError:
        pass
    return p.name or path


def is_restricted_env() -> bool:
    """True on a Hugging Face Space (a public app: see ``core.public_mode``)."""
    return bool(os.environ.get("SPACE_ID"))


# -- icons (issue 17: emoji render as empty boxes on a machine without an emoji font) -------------
_ICON_PATHS = {
    "ok": ("#16a34a", "<path d='M4.5 8.5l2.5 2.5 5-5.5' fill='none' stroke='#fff' stroke-width='2'/>"),
    "warn": ("#d97706", "<path d='M8 4v5' stroke='#fff' stroke-width='2'/><circle cx='8' cy='11.6' r='1.1' fill='#fff'/>"),
    "error": ("#dc2626", "<path d='M5.2 5.2l5.6 5.6M10.8 5.2l-5.6 5.6' stroke='#fff' stroke-width='2'/>"),
}


def state_icon(kind: str) -> str:
    """A small inline-SVG status icon ('ok', 'warn' or 'error') for Markdown and HTML: it renders
    without any emoji font, in every browser."""
    color, mark = _ICON_PATHS.get(kind, _ICON_PATHS["warn"])
    # 16 px drawn in 16 px (Gradio's Markdown sanitizer drops viewBox), inline (prose makes svg a block).
    return (f"<svg class='mf-icon mf-icon-{kind}' width='16' height='16' "
            f"style='display:inline-block;vertical-align:-0.1em;margin-right:0.2em' role='img' aria-label='{kind}'>"
            f"<circle cx='8' cy='8' r='8' fill='{color}'/>{mark}</svg>")


# -- runs in dropdowns (issue 17: several runs of one name could not be told apart) ---------------
def run_label(run: Any) -> str:
    """What a run dropdown shows for a run record: name, local start time and status."""
    from datetime import timezone

    when = getattr(run, "created_at", None)
    if when is not None:
        when = (when if when.tzinfo else when.replace(tzinfo=timezone.utc)).astimezone()  # SQLite drops the zone
    stamp = when.strftime("%b %d %H:%M") if when is not None else "?"
    return f"{run.name} · {stamp} · {run.status}"
