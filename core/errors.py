"""The exception hierarchy of ModelForge.

Every error that can reach a user carries a one-line ``message`` (what went wrong) and a
``hint`` (how to fix it). The CLI prints them and exits 2; the app shows them as a Gradio
error. Anything that is *not* a ``ModelForgeError`` is a bug: the CLI exits 1 and the
traceback goes to the log file, never to the user's screen.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Problem:
    """One thing wrong with a file, a row or a config field.

    Attributes:
        message: what is wrong, in plain words.
        hint: how to fix it.
        file: the file concerned, if any.
        line: 1-based line (JSONL, CSV) or row index (JSON array, parquet), if known.
        field: the config field or data column concerned, if any.
        severity: "error" blocks training; "warning" is reported but does not.
        unit: "line" (JSONL, CSV, YAML) or "row" (the Nth record of a JSON array or parquet).
    """

    message: str
    hint: str = ""
    file: str | None = None
    line: int | None = None
    field: str | None = None
    severity: str = "error"
    unit: str = "line"

    def where(self) -> str:
        parts = []
        if self.file:
            parts.append(str(self.file))
        if self.line is not None:
            parts.append(f"{self.unit} {self.line}")
        if self.field:
            parts.append(f"field '{self.field}'")
        return ", ".join(parts)

    def __str__(self) -> str:
        where = self.where()
        text = f"{where}: {self.message}" if where else self.message
        if self.hint:
            text += f" (fix: {self.hint})"
        return text

    def to_dict(self) -> dict:
        return {
            "severity": self.severity,
            "file": self.file,
            "line": self.line,
            "unit": self.unit,
            "field": self.field,
            "message": self.message,
            "hint": self.hint,
        }


class ModelForgeError(Exception):
    """Base of all user-facing errors. ``str(err)`` is safe to show to a user."""

    def __init__(self, message: str, hint: str = "", problems: list[Problem] | None = None):
        self.message = message
        self.hint = hint
        self.problems: list[Problem] = list(problems or [])
        super().__init__(message)

    def __str__(self) -> str:
        lines = [self.message]
        lines += [f"  - {p}" for p in self.problems]
        if self.hint:
            lines.append(f"Hint: {self.hint}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {
            "error": type(self).__name__,
            "message": self.message,
            "hint": self.hint,
            "problems": [p.to_dict() for p in self.problems],
        }


class ConfigError(ModelForgeError):
    """The run configuration is invalid; ``problems`` lists every bad field at once."""


class DataError(ModelForgeError):
    """A data file cannot be read or does not fit the task/strategy."""


class ModelLoadError(ModelForgeError):
    """A model or tokenizer cannot be loaded (missing folder, bad files, hub unreachable)."""


class OfflineError(ModelLoadError):
    """The Hugging Face Hub is needed but cannot be reached."""


class NotAvailableError(ModelForgeError):
    """A provider, strategy or task exists by name but cannot run here (and why)."""


class TrainingError(ModelForgeError):
    """Training started but failed (out of memory, NaN loss, disk full...)."""


class NotFoundError(ModelForgeError):
    """A run or model record does not exist."""


class BusyError(ModelForgeError):
    """The device is already training another run."""
