"""The data layer: read a file, recognise its format, convert rows to canonical examples,
and report every problem before training starts (see loading, formats, validate)."""

from core.data.formats import detect_format, normalise
from core.data.loading import LoadedData, load_rows
from core.data.validate import (Requirement, ValidationReport, requirements, split_train_eval,
                                validate_file, validate_rows)

__all__ = [
    "LoadedData", "Requirement", "ValidationReport", "detect_format", "load_rows", "normalise",
    "requirements", "split_train_eval", "validate_file", "validate_rows",
]
