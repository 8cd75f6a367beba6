"""Check a data file against what a task and strategy need, before any training starts.

Training a model for an hour and then failing on row 40,312 is the worst way to learn that
the data is wrong. :func:`validate_file` reads, detects, normalises and measures the data and
returns one :class:`ValidationReport` holding *every* problem (each naming file, line and
field, with a hint), the usable examples and token-length statistics. It never raises for bad
data, so the CLI, the app's Data tab and the trainer can all show the same report.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

from core.data.formats import (FORMATS, LABEL_FORMATS, apply_column_map, columns_of, data_kind,
                               detect_format, missing_columns, normalise_rows)
from core.data.loading import load_rows
from core.errors import DataError, Problem

LENGTH_SAMPLE = 2000


@dataclass(frozen=True)
class Requirement:
    """What data a (task, strategy) pair accepts.

    Attributes:
        kinds: canonical kinds used as they are (the first is the preferred one).
        converts: (source format or kind, target kind) conversions done automatically.
        description: human text for the UI: which formats and columns fit.
    """

    task: str
    strategy: str
    kinds: tuple[str, ...]
    converts: tuple[tuple[str, str], ...] = ()
    description: str = ""

    def target_for(self, fmt: str, kind: str) -> str | None:
        """The kind to normalise ``fmt`` data (natural kind ``kind``) to; None: unusable."""
        if kind in self.kinds:
            return kind
        for source, target in self.converts:
            if source in (fmt, kind):
                return target
        return None

    def formats(self) -> dict[str, tuple[tuple[str, ...], ...]]:
        """Source formats whose data fits (direct ones first, then converted ones), each with
        its alternative sets of required columns."""
        out = {f: s.columns for f, s in FORMATS.items() if s.kind in self.kinds}
        if "kto" in self.kinds:  # messages / prompt-completion with a label column
            out.update({f: tuple(c + ("label",) for c in FORMATS[f].columns) for f in LABEL_FORMATS})
        out.update({f: s.columns for f, s in FORMATS.items() if f not in out and self.target_for(f, s.kind)})
        return out


# The kinds of data each task can train on, whatever the strategy: a strategy's declared kinds
# (and conversions) are narrowed to these, so SFT, which trains every task, gets chat data for
# text-generation and document/summary pairs for summarization.
TASK_KINDS = {
    "text-generation": ("conversation", "text", "preference", "kto"),
    "summarization": ("summarization",),
    "extractive-qa": ("qa",),
}


def requirements(task: str, strategy: str, kinds: tuple[str, ...],
                 converts: tuple[tuple[str, str], ...] = ()) -> Requirement:
    """The data that ``task`` trained with ``strategy`` needs, from the strategy's declaration.

    Args:
        task: one of core.config.TASKS.
        strategy: the strategy's name (for the messages).
        kinds: the canonical kinds the strategy declares (``Strategy.data_kinds``).
        converts: its automatic conversions (``Strategy.data_converts``).

    Raises:
        DataError: unknown task.
    """
    from core.config import TASKS

    if task not in TASKS:
        raise DataError(f"unknown task '{task}'", f"use one of: {', '.join(TASKS)}")
    fit = TASK_KINDS.get(task, ())
    kinds = tuple(k for k in kinds if k in fit) or tuple(kinds)
    converts = tuple((src, dst) for src, dst in converts if dst in kinds)
    req = Requirement(task, strategy, kinds, converts)
    fits = [f"{f} ({' | '.join(', '.join(c) for c in cols)})" for f, cols in req.formats().items()]
    text = (f"{task} with strategy '{strategy}' needs {' or '.join(kinds)} data. "
            f"Formats that fit: {'; '.join(fits)}.")
    return Requirement(task, strategy, kinds, converts, text)


@dataclass
class ValidationReport:
    """Everything known about one data file for one task/strategy (see module docstring)."""

    file: str
    format: str | None = None
    kind: str | None = None
    rows: int = 0
    usable_rows: int = 0
    examples: list[dict] = field(default_factory=list, repr=False)
    problems: list[Problem] = field(default_factory=list)
    lengths: dict = field(default_factory=dict)
    requirement: str = ""
    min_rows: int = 2
    unit: str = "line"
    details: dict = field(default_factory=dict)
    lines: list = field(default_factory=list, repr=False)  # source line of each example
    # the first examples as the trainer sees them: [{"index", "line", "segments": [{"text",
    # "trained"}], "tokens", "trained_tokens"}] (conversation and text data, with a tokenizer)
    samples: list = field(default_factory=list)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity != "error"]

    @property
    def ok(self) -> bool:
        return not self.errors and self.usable_rows >= self.min_rows

    def broken_text(self) -> str:
        """ " (+ 1 broken line: line 3)" when lines could not be read at all ('' otherwise)."""
        n = self.details.get("broken_lines")
        if not n:
            return ""
        first = next((p.line for p in self.errors if p.line is not None), None)
        return f" (+ {n} broken line{'s' if n > 1 else ''}" + (f", first: line {first})" if first else ")")

    def to_dict(self) -> dict:
        """JSON-serialisable (no examples)."""
        return {
            "file": self.file, "format": self.format, "kind": self.kind, "rows": self.rows,
            "usable_rows": self.usable_rows, "ok": self.ok, "unit": self.unit,
            "errors": len(self.errors), "warnings": len(self.warnings),
            "problems": [p.to_dict() for p in self.problems], "lengths": dict(self.lengths),
            "requirement": self.requirement, "min_rows": self.min_rows, "details": dict(self.details),
            "samples": list(self.samples),
        }

    def summary(self) -> str:
        """Several lines of plain text: format, rows, lengths, then one line per problem."""
        out = [f"Data: {self.file}",
               (f"Format: {self.format} -> {self.kind}" if self.format else "Format: not detected")
               + (f" ({self.details['converted']})" if "converted" in self.details else ""),
               f"Rows: {self.rows} read, {self.usable_rows} usable" + self.broken_text()]
        if "unanswerable" in self.details:
            out.append(f"Unanswerable questions: {self.details['unanswerable']}")
        if self.lengths:
            L = self.lengths
            out.append(f"Tokens{' (sample of ' + str(L['count']) + ')' if L.get('sampled') else ''}: "
                       f"min {L['min']}, mean {L['mean']}, p50 {L['p50']}, p95 {L['p95']}, max {L['max']}; "
                       f"{L['over_max_length']} over max_length {L['max_length']} "
                       f"({L['truncated_share']:.1%} truncated)")
        if self.problems:
            out.append(f"Problems: {len(self.errors)} error(s), {len(self.warnings)} warning(s)")
            out += [f"  {p.severity}: {p}" for p in self.problems]
        for sample in self.samples[:1]:
            if "segments" in sample:
                text = "".join(f"[[{s['text']}]]" if s["trained"] else s["text"] for s in sample["segments"])
                text = text if len(text) <= 1500 else text[:1500] + " ..."
                out.append(f"First example as trained ([[...]] is in the loss: {sample['trained_tokens']} of "
                           f"{sample['tokens']} tokens):\n{text}")
        out.append("Ready to train." if self.ok else "Not ready: fix the errors above.")
        return "\n".join(out)


def validate_file(path: str | Path, *, requirement: Requirement, dataset_format: str = "auto", column_map: dict | None = None,
                  template_vars: dict | None = None, system_prompt: str = "", tokenizer=None,
                  max_length: int = 512, min_rows: int = 2, max_rows: int | None = None,
                  seed: int = 42, render=None, text_chunk_chars: int | None = None) -> ValidationReport:
    """Load ``path`` and check it for ``task``/``strategy``. Never raises for bad data.

    Args:
        path: a data file (or hub id); see :func:`core.data.loading.load_rows`.
        requirement: what the data will train (the accepted kinds): see :func:`requirements`,
            and :func:`core.checks.validate_file`, which takes a task and a strategy name.
        dataset_format: a format name, or "auto" to detect it.
        column_map: renames ``{old: new}`` applied before detection.
        template_vars: values for ``{{placeholders}}``.
        system_prompt: added to conversations without a system message.
        tokenizer: a transformers tokenizer for token-length statistics (None: skipped).
        max_length: the training sequence length to compare lengths with.
        min_rows: fewer usable rows than this is an error.
        max_rows: read at most this many rows (None/0: all).
        seed: seeds the sample used for token lengths.
        render: how conversations are rendered and masked (a core.data.chat.RenderOptions;
            None: the defaults); with a tokenizer the chat template is checked on the data and
            the first examples are rendered as segments (``samples``).
        text_chunk_chars: a .txt file without blank lines is cut into pieces of this size.
    """
    report = ValidationReport(str(path), min_rows=min_rows)
    try:
        report.requirement = requirement.description
        data = load_rows(path, max_rows=max_rows, **({"chunk_chars": text_chunk_chars} if text_chunk_chars else {}))
    except DataError as exc:
        partial = getattr(exc, "partial", None)  # JSON Lines with broken lines: check the good ones
        if partial is None or not partial.rows:
            report.problems += _problems_of(exc, str(path))
            return report
        report = validate_rows(partial.rows, file=partial.file, lines=partial.lines, unit=partial.unit,
                               requirement=requirement, dataset_format=dataset_format, column_map=column_map,
                               template_vars=template_vars, system_prompt=system_prompt, tokenizer=tokenizer,
                               max_length=max_length, min_rows=min_rows, seed=seed, render=render)
        report.problems[:0] = _problems_of(exc, str(path))
        report.details["broken_lines"] = len([p for p in exc.problems if p.line is not None])
        return report
    return validate_rows(data.rows, file=data.file, lines=data.lines, unit=data.unit,
                         requirement=requirement, dataset_format=dataset_format, column_map=column_map,
                         template_vars=template_vars, system_prompt=system_prompt,
                         tokenizer=tokenizer, max_length=max_length, min_rows=min_rows, seed=seed,
                         render=render)


def validate_rows(rows: list[dict], *, file: str = "<data>", lines: list[int] | None = None,
                  unit: str = "row", requirement: Requirement, dataset_format: str = "auto", column_map: dict | None = None,
                  template_vars: dict | None = None, system_prompt: str = "", tokenizer=None,
                  max_length: int = 512, min_rows: int = 2, seed: int = 42, render=None) -> ValidationReport:
    """Check rows already in memory (see :func:`validate_file` for the arguments).

    Args:
        rows: raw rows; lines/unit say where each came from (default: row 1..n).
    """
    report = ValidationReport(file, rows=len(rows), min_rows=min_rows, unit=unit)
    try:
        req = requirement
        report.requirement = req.description
        report.problems += _column_map_problems(column_map, columns_of(rows), file)
        rows = apply_column_map(rows, column_map)
        cols = columns_of(rows)
        fmt = _format(rows, dataset_format, cols, file)
        report.format = fmt
        kind = data_kind(fmt, rows)
        target = req.target_for(fmt, kind)
        if target is None:
            report.kind = kind
            report.problems.append(_mismatch(req, fmt, kind, cols, file))
            return report
        res = normalise_rows(rows, fmt, lines=lines, file=file, unit=unit, template_vars=template_vars,
                             system_prompt=system_prompt, target_kind=target)
    except DataError as exc:
        report.problems += _problems_of(exc, file)
        return report
    report.kind, report.examples, report.lines = target, res.examples, res.lines
    report.usable_rows, report.details = len(res.examples), res.details
    report.problems += res.problems
    if report.usable_rows < min_rows:
        report.problems.append(Problem(
            f"only {report.usable_rows} usable row(s) of {len(rows)}; at least {min_rows} needed",
            "add rows (a few hundred is a good start) or fix the rows reported above", file=file))
    report.problems += _duplicates(res.examples, res.lines, file, unit)
    if tokenizer is not None and res.examples:
        report.lengths, extra = _lengths(res.examples, res.lines, target, tokenizer, max_length, seed, file,
                                         render)
        report.problems += extra
        if target in ("conversation", "text"):
            from core.data.chat import check_template, sample_segments

            if target == "conversation":
                report.problems += check_template(res.examples, tokenizer, render, lines=res.lines, file=file)
            attach_samples(report, tokenizer, render)
    _set_unit(report.problems, file, unit)
    return report


def attach_samples(report: ValidationReport, tokenizer, render=None, n: int = 3) -> ValidationReport:
    """Render the report's first ``n`` conversation/text examples as ``{"text", "trained"}``
    segments into ``report.samples`` (what the Dataset tab draws and ``validate --json`` prints)."""
    from core.data.chat import sample_segments

    if report.kind not in ("conversation", "text") or not report.examples:
        return report
    report.samples = sample_segments(report.examples, tokenizer, render, n=n)
    for s in report.samples:
        s["line"] = report.lines[s["index"]] if s["index"] < len(report.lines) else None
    return report


def _set_unit(problems: list[Problem], file: str, unit: str) -> None:
    """Say "row N" rather than "line N" for records of a JSON array or parquet file."""
    for p in problems:
        if p.line is not None and p.file == file:
            p.unit = unit


# -- checks -------------------------------------------------------------------------------------------
def _problems_of(exc: DataError, file: str) -> list[Problem]:
    if not exc.problems:
        return [Problem(exc.message, exc.hint, file=file)]
    return [p if p.file else Problem(p.message, p.hint or exc.hint, file=file, line=p.line,
                                     field=p.field, severity=p.severity) for p in exc.problems]


def _column_map_problems(column_map: dict | None, cols: list[str], file: str) -> list[Problem]:
    out = []
    for old, new in (column_map or {}).items():
        if str(old) not in cols:
            out.append(Problem(f"column_map renames '{old}', but the data has no column '{old}'",
                               f"columns are: {', '.join(cols)}", file=file, field=str(old),
                               severity="warning"))
    return out


def _format(rows: list[dict], dataset_format: str, cols: list[str], file: str) -> str:
    if dataset_format in (None, "", "auto"):
        return detect_format(rows)
    if dataset_format not in FORMATS:
        raise DataError(f"unknown dataset_format '{dataset_format}'",
                        f"use auto or one of: {', '.join(FORMATS)}")
    missing = missing_columns(cols, dataset_format)
    if missing:
        msg = (f"dataset_format is '{dataset_format}' but the data has no column(s) "
               f"{', '.join(missing)} (columns found: {', '.join(cols)})")
        hint = "set dataset_format to auto, or rename columns with column_map"
        raise DataError(msg, hint, problems=[Problem(msg, hint, file=file, field=missing[0])])
    return dataset_format


def _mismatch(req: Requirement, fmt: str, kind: str, cols: list[str], file: str) -> Problem:
    have = set(cols)
    options = [(min(([c for c in alt if c not in have] for alt in alts), key=len), f)
               for f, alts in req.formats().items()]
    missing, best = min(options, key=lambda o: len(o[0]))
    if not missing:  # e.g. alpaca rows also hold input/output: say which format to pick
        return Problem(
            f"{req.task} with strategy '{req.strategy}' needs {' or '.join(req.kinds)} data; this was "
            f"detected as {fmt} data, but its columns also fit the {best} format",
            f"set dataset_format to {best}", file=file, field="dataset_format")
    return Problem(
        f"{req.task} with strategy '{req.strategy}' needs {' or '.join(req.kinds)} data, but this "
        f"is {fmt} data ({kind}; columns: {', '.join(cols)}): missing column(s) "
        f"{', '.join(missing)} (as in the {best} format)",
        req.description + " Or pick a strategy that fits this data.", file=file,
        field=missing[0] if missing else None)


def _duplicates(examples: list[dict], lines: list, file: str, unit: str) -> list[Problem]:
    # The hash of each example's text, not the text: a 100,000-row file would otherwise hold a
    # second copy of every row until the check ends. A false match of two 64-bit hashes (it would
    # only add a warning) has odds of about 1 in 10^9 at a million rows.
    seen: dict[int, int] = {}
    pairs = []
    for i, ex in enumerate(examples):
        first = seen.setdefault(hash(repr(ex)), i)
        if first != i:
            if not pairs or pairs[-1] != (lines[i], lines[first]):  # kto pairs share a line
                pairs.append((lines[i], lines[first]))
    if not pairs:
        return []
    shown = "; ".join(f"{unit} {a} repeats {unit} {b}" for a, b in pairs[:5])
    return [Problem(f"{len(pairs)} duplicate example(s) (same content as an earlier row): {shown}"
                    + (" ..." if len(pairs) > 5 else ""),
                    "remove duplicates: they weigh extra in training and leak into the evaluation split",
                    file=file, line=pairs[0][0], severity="warning")]


def _lengths(examples: list[dict], lines: list, kind: str, tokenizer, max_length: int, seed: int,
             file: str, render=None) -> tuple[dict, list[Problem]]:
    """Token-length statistics on at most LENGTH_SAMPLE examples (seeded sample)."""
    idx = list(range(len(examples)))
    sampled = len(idx) > LENGTH_SAMPLE
    if sampled:
        idx = sorted(random.Random(seed).sample(idx, LENGTH_SAMPLE))
    templ = bool(getattr(tokenizer, "chat_template", None))
    problems: list[Problem] = []
    failed: list = []

    renderer = None
    if templ and kind == "conversation":
        from core.data.chat import Renderer

        try:
            renderer = Renderer(tokenizer, render)
        except Exception:  # noqa: BLE001 - reported by the template check
            renderer = None

    def render_conv(ex: dict, line) -> str:
        if renderer is not None:
            try:
                return renderer.text(ex)
            except Exception as exc:  # noqa: BLE001 - e.g. a template that insists on alternating roles
                failed.append((line, str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__))
        return "\n".join(m["content"] for m in ex["messages"])

    def render(msgs: list[dict], line) -> str:
        if templ:
            try:
                return tokenizer.apply_chat_template(msgs, tokenize=False)
            except Exception as exc:  # e.g. a template that insists on alternating roles
                failed.append((line, str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__))
        return "\n".join(m["content"] for m in msgs)

    texts: list[str] = []
    owner: list[int] = []
    for i in idx:
        ex, line = examples[i], lines[i]
        if kind == "conversation":
            parts = [render_conv(ex, line)]
        elif kind == "preference":
            parts = [render(ex["prompt"] + ex["chosen"], line), render(ex["prompt"] + ex["rejected"], line)]
        elif kind == "kto":
            parts = [render(ex["prompt"] + ex["completion"], line)]
        elif kind == "summarization":
            parts = [ex["document"]]
        elif kind == "qa":
            parts = [ex["question"] + "\n" + ex["context"]]
        else:
            parts = [ex["text"]]
        texts += parts
        owner += [i] * len(parts)
    try:
        ids = tokenizer(texts, add_special_tokens=not templ)["input_ids"]
    except Exception as exc:
        return {}, [Problem(f"could not measure token lengths: {str(exc).splitlines()[0][:200]}",
                            "check the tokenizer", file=file, severity="warning")]
    per: dict[int, int] = {}
    for i, t in zip(owner, ids):
        per[i] = max(per.get(i, 0), len(t))
    values = sorted(per.values())
    longest = max(per, key=per.get)
    over = sum(1 for v in values if v > max_length)
    n = len(values)
    stats = {"count": n, "min": values[0], "mean": round(sum(values) / n, 1),
             "p50": values[(n - 1) // 2], "p95": values[int(0.95 * (n - 1))], "max": values[-1],
             "over_max_length": over, "truncated_share": round(over / n, 4), "max_length": max_length,
             "sampled": sampled, "total": len(examples)}
    if failed:
        problems.append(Problem(
            f"the tokenizer's chat template rejects {len(failed)} example(s): {failed[0][1]}",
            "check the order of roles (some models need user/assistant turns alternating) or use "
            "another model", file=file, line=failed[0][0], severity="warning"))
    if over:
        problems.append(Problem(
            f"{over / n:.1%} of examples ({over} of {n}{' sampled' if sampled else ''}) are longer than "
            f"max_length={max_length} tokens and will be truncated (longest: {per[longest]} tokens)",
            "raise max_length or shorten examples", file=file, line=lines[longest], severity="warning"))
    return stats, problems


# The held-out data rule (issue 16), one place for the engine, the CLI, the Dataset tab, evaluation
# and export. validation_split AUTO (-1, the default) holds out AUTO_SHARE of the rows once there are
# AUTO_MIN_ROWS of them, none below: a 91-row data set loses a tenth of what it teaches for an eval
# loss over 5 rows, which says little; at 200 rows 5% is 10 rows, enough for a curve.
AUTO = -1.0
AUTO_SHARE = 0.05
AUTO_MIN_ROWS = 200
# At most this many rows are held out, whatever validation_split says: more would slow every
# evaluation and take rows from training for little gain.
MAX_EVAL_ROWS = 300


@dataclass(frozen=True)
class HeldOut:
    """How many of ``rows`` are held out, and the one line that says why (logs, CLI, UI)."""

    count: int
    rows: int
    text: str


def held_out(rows: int, validation_split: float) -> HeldOut:
    """Apply the held-out rule to a data set of ``rows`` rows.

    Args:
        rows: usable rows (after max_samples).
        validation_split: AUTO (-1): 5% once there are 200 rows, none below; 0: none; otherwise
            that share, at least 1 row. Always at most MAX_EVAL_ROWS, and training keeps at least 1.
    """
    auto = validation_split < 0
    share = AUTO_SHARE if auto else validation_split
    if auto and rows < AUTO_MIN_ROWS:
        return HeldOut(0, rows, f"validation: none (auto: {rows} rows is too few, {AUTO_MIN_ROWS} needed; "
                                "set validation_split to hold some out)")
    if share <= 0 or rows < 2:
        why = "validation_split is 0" if share <= 0 else f"{rows} row{'s' if rows != 1 else ''}"
        return HeldOut(0, rows, f"validation: none ({why})")
    k = min(max(1, round(rows * share)), rows - 1, MAX_EVAL_ROWS)
    how = f"auto: {AUTO_SHARE:.0%}" if auto else f"validation_split {validation_split:g}"
    capped = f", at most {MAX_EVAL_ROWS}" if k == MAX_EVAL_ROWS and round(rows * share) > k else ""
    return HeldOut(k, rows, f"validation: {k} of {rows} rows held out ({how}{capped})")


def split_train_eval(examples: list, validation_split: float, seed: int) -> tuple[list, list]:
    """Shuffle deterministically and hold out rows for evaluation, by :func:`held_out`'s rule.

    Args:
        examples: the normalised examples.
        validation_split: AUTO (-1), 0 (none) or the share for evaluation (see :func:`held_out`).
        seed: seeds the shuffle (same seed, same split).
    """
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    k = held_out(len(order), validation_split).count
    return [examples[i] for i in order[k:]], [examples[i] for i in order[:k]]
