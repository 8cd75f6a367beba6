"""Recognise the format of data rows and convert each row to one canonical shape.

Users bring alpaca, ShareGPT, OpenAI messages, preference pairs, XSum, SQuAD... The trainers
must not care: every row becomes one of six canonical *kinds* (exact dict shapes below), and
every row that cannot be converted becomes a :class:`~core.errors.Problem` naming its line and
field, never an exception, so one bad row among thousands is reported rather than fatal.

Canonical kinds::

    conversation   {"messages": [{"role": "system"|"user"|"assistant"|"tool", "content": str,
                                  ...tool_calls, tool_call_id, name, reasoning_content, train}, ...],
                    "tools": [function schemas]}   (tools optional; ends with an assistant message;
                   the message fields are described in core.data.messages)
    text           {"text": str}
    preference     {"prompt": [messages ending with a user turn],
                    "chosen": [{"role": "assistant", "content": str}], "rejected": [...]}
    kto            {"prompt": [messages], "completion": [{"role": "assistant", ...}], "label": bool}
    summarization  {"document": str, "summary": str}
    qa             {"id": str, "question": str, "context": str,
                    "answers": {"text": [str, ...], "answer_start": [int, ...]}}
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

from core.data.converters import CONVERTERS, RowContext, RowError
from core.errors import DataError, Problem

KINDS = ("conversation", "text", "preference", "kto", "summarization", "qa")
ROLES = ("system", "user", "assistant", "tool")
MAX_LISTED = 20


@dataclass(frozen=True)
class FormatSpec:
    """A source format: alternative sets of required columns, and the kind it produces."""

    name: str
    kind: str
    columns: tuple[tuple[str, ...], ...]
    optional: tuple[str, ...] = ()

    def describe(self) -> str:
        text = " | ".join(", ".join(c) for c in self.columns)
        return text + (f" [optional: {', '.join(self.optional)}]" if self.optional else "")


# Detection order matters: the first spec whose columns are all present wins.
FORMATS: dict[str, FormatSpec] = {s.name: s for s in (
    FormatSpec("sharegpt-preference", "preference", (("conversations", "chosen", "rejected"),), ("system",)),
    FormatSpec("preference-messages", "preference", (("chosen_messages", "rejected_messages"),), ("prompt", "system")),
    FormatSpec("preference", "preference",
               (("prompt", "chosen", "rejected"), ("instruction", "chosen", "rejected"), ("chosen", "rejected"))),
    FormatSpec("squad", "qa", (("context", "question", "answers"),), ("id",)),
    FormatSpec("summarization", "summarization",
               (("document", "summary"), ("article", "highlights"), ("dialogue", "summary"))),
    FormatSpec("alpaca", "conversation", (("instruction", "output"),), ("input", "system", "history")),
    FormatSpec("sharegpt", "conversation", (("conversations",),), ("system", "tools")),
    FormatSpec("messages", "conversation", (("messages",),), ("label", "tools")),
    FormatSpec("prompt-completion", "conversation", (("prompt", "completion"),), ("label",)),
    FormatSpec("input-output", "conversation", (("input", "output"),)),
    FormatSpec("text", "text", (("text",),)),
)}
LABEL_FORMATS = ("messages", "prompt-completion")  # + a "label" column -> kto
# (source format or kind, target kind) pairs that normalise() converts on request.
CONVERSIONS = {("preference", "kto"), ("summarization", "conversation"),
               ("input-output", "summarization"), ("input-output", "conversation")}


def accepted_text() -> str:
    """Every format with its column sets, one per line (for hints and the UI)."""
    return "; ".join(f"{s.name}: {s.describe()}" for s in FORMATS.values())


def apply_column_map(rows: list[dict], column_map: dict | None) -> list[dict]:
    """Rename columns ``{old_name: new_name}`` in every row (new dicts; input untouched).

    Args:
        rows: the raw rows.
        column_map: renames; empty or None returns ``rows`` unchanged.
    """
    if not column_map:
        return rows
    cmap = {str(k): str(v) for k, v in column_map.items() if str(k) != str(v)}
    return [{cmap.get(k, k): v for k, v in r.items()} if isinstance(r, dict) else r for r in rows]


def columns_of(rows: list[dict], sample: int = 20) -> list[str]:
    """The column names of the first ``sample`` rows, in first-seen order."""
    seen: dict[str, None] = {}
    for r in rows[:sample]:
        if isinstance(r, dict):
            seen.update(dict.fromkeys(r))
    return list(seen)


def match_format(keys) -> str | None:
    """The first format whose required columns are all in ``keys``, or None."""
    keys = set(keys)
    for spec in FORMATS.values():
        if any(set(cols) <= keys for cols in spec.columns):
            return spec.name
    return None


def missing_columns(keys, fmt: str) -> list[str]:
    """The fewest columns ``fmt`` needs that ``keys`` lacks (empty: it fits)."""
    keys = set(keys)
    options = [[c for c in cols if c not in keys] for cols in FORMATS[fmt].columns]
    return min(options, key=len)


def detect_format(rows: list[dict], column_map: dict | None = None) -> str:
    """Name the source format of ``rows`` from the columns of the first rows.

    Args:
        rows: raw rows (as loaded).
        column_map: renames ``{old: new}`` applied before looking.

    Raises:
        DataError: no format matches; names the columns found and the accepted column sets.
    """
    cols = columns_of(apply_column_map(rows[:20], column_map))
    fmt = match_format(cols)
    if fmt is None:
        found = ", ".join(cols) or "(none)"
        msg = f"cannot tell the data format from the columns: {found}"
        hint = ("rename columns with column_map (e.g. question=instruction,answer=output) or set "
                f"dataset_format. Accepted column sets: {accepted_text()}")
        raise DataError(msg, hint, problems=[Problem(msg, hint)])
    return fmt


def kind_of(fmt: str) -> str:
    """The canonical kind format ``fmt`` produces (see :func:`data_kind` for labelled rows).

    Raises:
        DataError: unknown format name.
    """
    if fmt not in FORMATS:
        raise DataError(f"unknown data format '{fmt}'", f"use one of: auto, {', '.join(FORMATS)}")
    return FORMATS[fmt].kind


def data_kind(fmt: str, rows: list[dict]) -> str:
    """Like :func:`kind_of`, but messages/prompt-completion rows with a "label" are kto."""
    if fmt in LABEL_FORMATS and "label" in columns_of(rows):
        return "kto"
    return kind_of(fmt)


# -- normalisation ---------------------------------------------------------------------------------
class _Collector:
    """Problems capped at MAX_LISTED per (severity, field, code), plus '... and N more'."""

    def __init__(self, file: str | None):
        self.file = file
        self.problems: list[Problem] = []
        self.counts: Counter = Counter()
        self.first: dict = {}

    def add(self, code: str, message: str, *, line: int | None, field: str | None = None,
            hint: str = "", severity: str = "error") -> None:
        key = (severity, field, code)
        self.counts[key] += 1
        if self.counts[key] <= MAX_LISTED:
            self.problems.append(Problem(message, hint, file=self.file, line=line, field=field,
                                         severity=severity))
            self.first.setdefault(key, (message, hint))

    def finish(self) -> list[Problem]:
        for key, n in self.counts.items():
            if n > MAX_LISTED:
                severity, fld, _ = key
                msg, hint = self.first[key]
                self.problems.append(Problem(
                    f"... and {n - MAX_LISTED} more rows with the same problem ({msg})", hint,
                    file=self.file, field=fld, severity=severity))
        return self.problems


@dataclass
class Normalised:
    """The result of :func:`normalise_rows`: ``lines[i]`` is the source of ``examples[i]``."""

    examples: list[dict]
    lines: list[int | None]
    problems: list[Problem]
    details: dict = field(default_factory=dict)


def normalise(rows: list[dict], fmt: str, *, lines: list[int] | None = None, file: str | None = None,
              unit: str = "line", template_vars: dict | None = None, system_prompt: str = "",
              target_kind: str | None = None) -> tuple[list[dict], list[Problem]]:
    """Convert raw rows of format ``fmt`` to canonical examples.

    Args:
        rows: raw rows (column_map already applied).
        fmt: a source format name (see ``FORMATS``).
        lines: ``lines[i]`` is where ``rows[i]`` came from (default: 1..n).
        file: the file name, for problems.
        unit: "line" or "row" (how ``lines`` count).
        template_vars: values for ``{{key}}`` placeholders in every string.
        system_prompt: added to conversations/prompts that have no system message.
        target_kind: ask for a conversion (preference -> kto, summarization -> conversation,
            input-output -> summarization); default: the format's own kind.

    Returns:
        (examples, problems): unconvertible rows are left out and reported as problems.

    Raises:
        DataError: unknown format, or a conversion that is not possible.
    """
    res = normalise_rows(rows, fmt, lines=lines, file=file, unit=unit, template_vars=template_vars,
                         system_prompt=system_prompt, target_kind=target_kind)
    return res.examples, res.problems


def normalise_rows(rows: list[dict], fmt: str, *, lines: list[int] | None = None,
                   file: str | None = None, unit: str = "line", template_vars: dict | None = None,
                   system_prompt: str = "", target_kind: str | None = None) -> Normalised:
    """:func:`normalise`, also returning the source line of each example and details.

    Raises:
        DataError: unknown format, or a conversion that is not possible.
    """
    natural = data_kind(fmt, rows)
    target = target_kind or natural
    if target != natural and (fmt, target) not in CONVERSIONS and (natural, target) not in CONVERSIONS:
        raise DataError(f"{fmt} data ({natural}) cannot be used as {target} data",
                        "choose a task/strategy that fits the data, or convert the file")
    lines = list(lines) if lines is not None else list(range(1, len(rows) + 1))
    tvars = {str(k): str(v) for k, v in (template_vars or {}).items()}
    missing: dict[str, int | None] = {}
    out = _Collector(file)
    ctx = RowContext(target, _subst(system_prompt or "", tvars, missing, None), out=out)
    convert = CONVERTERS[fmt]
    examples: list[dict] = []
    ex_lines: list[int | None] = []
    for row, line in zip(rows, lines):
        ctx.line = line
        try:
            if not isinstance(row, dict):
                raise RowError("not-object", "row is not an object", None, "every row must be an object")
            made = convert(_subst(row, tvars, missing, line), ctx)
        except RowError as bad:
            out.add(bad.code, bad.message, line=line, field=bad.field, hint=bad.hint)
            continue
        examples.extend(made)
        ex_lines.extend([line] * len(made))
    for name, first in missing.items():
        out.add("placeholder", f"placeholder {{{{{name}}}}} has no value and is left as is",
                line=first, hint=f"set template_vars, e.g. --template-vars {name}=...", severity="warning")
    details = {"converted": f"{natural} -> {target}"} if target != natural else {}
    if target == "qa":
        details["unanswerable"] = sum(1 for e in examples if not e["answers"]["text"])
    return Normalised(examples, ex_lines, out.finish(), details)


# -- value helpers -----------------------------------------------------------------------------------
_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][\w-]*)\s*\}\}")


def _subst(obj, tvars: dict, missing: dict, line):
    if isinstance(obj, str):
        if "{{" not in obj:
            return obj

        def rep(m: re.Match) -> str:
            if m.group(1) in tvars:
                return tvars[m.group(1)]
            missing.setdefault(m.group(1), line)
            return m.group(0)
        return _PLACEHOLDER.sub(rep, obj)
    if isinstance(obj, list):
        return [_subst(x, tvars, missing, line) for x in obj]
    if isinstance(obj, dict):
        return {k: _subst(v, tvars, missing, line) for k, v in obj.items()}
    return obj
