"""The data layer: read a file, recognise its format, convert rows to canonical examples,
and report every problem before training starts (see loading, formats, validate)."""

from core.data.formats import detect_format, normalise
from core.data.loading import LoadedData, load_rows
from core.data.validate import (AUTO, MAX_EVAL_ROWS, HeldOut, Requirement, ValidationReport, held_out,
                                requirements, split_train_eval, validate_file, validate_rows)

__all__ = [
    "AUTO", "HeldOut", "LoadedData", "MAX_EVAL_ROWS", "Requirement", "held_out", "ValidationReport", "detect_format", "load_rows", "normalise",
    "requirements", "split_train_eval", "validate_file", "validate_rows",
]
