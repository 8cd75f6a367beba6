"""Faults of the machine, said in one line: a full disk, a data folder that cannot be written.

- :class:`QuietFileHandler`: a log file on a full (or read-only) disk stops logging silently
  instead of printing a "--- Logging error ---" traceback for every record.
- :func:`disk_full`: recognises a full disk also behind the errors libraries wrap it in
  (torch's checkpoint writer says ``PytorchStreamWriter failed writing file``, not ENOSPC).
- :func:`disk_full_message`: "the disk is full (N MB free on PATH): ...".
- :func:`home_problem`: the one line for a data folder that is missing permissions or read-only.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
from pathlib import Path

# What torch's zip writer raises when a write fails (it does not keep the OSError): only taken
# for a full disk when the disk really is (nearly) full.
_WRITER_FAILURES = ("pytorchstreamwriter failed", "inline_container", "file write failed", "unexpected pos")
NEARLY_FULL_BYTES = 64 * 2**20
DISK_FULL = "the disk is full"  # how a run's failure starts when the disk filled up


class QuietFileHandler(logging.FileHandler):
    """A FileHandler that, when its file cannot be written (disk full, read-only), stops quietly.

    Python's default ``handleError`` prints a traceback to stderr for every record that fails:
    on a full disk that is hundreds of lines around the one message that matters.
    """

    failed = False

    def emit(self, record: logging.LogRecord) -> None:
        if self.failed:
            return
        super().emit(record)

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 - logging's name
        self.failed = True

    def flush(self) -> None:
        try:
            super().flush()
        except OSError:
            self.failed = True

    def close(self) -> None:
        try:
            super().close()
        except OSError:  # the last buffered bytes could not be written: nothing more to do
            self.failed = True


def free_bytes(path: str | Path) -> int | None:
    """Free bytes on the disk of ``path`` (its nearest existing folder); None when unknown."""
    p = Path(path)
    while not p.exists() and p.parent != p:
        p = p.parent
    try:
        return shutil.disk_usage(p).free
    except OSError:
        return None


def disk_full(exc: BaseException | None, where: str | Path | None = None) -> bool:
    """No space left (ENOSPC) or over quota (EDQUOT), also when a library wrapped the OSError.

    Args:
        exc: the exception (its causes and contexts are looked at too).
        where: the folder being written; with it, torch's writer failures count as a full
            disk when less than NEARLY_FULL_BYTES are free there.
    """
    seen = set()
    writer_failed = False
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
            return True
        text = str(exc).lower()
        if "no space left on device" in text or "database or disk is full" in text:
            return True
        writer_failed = writer_failed or any(w in text for w in _WRITER_FAILURES)
        exc = exc.__cause__ or exc.__context__
    if writer_failed and where is not None:
        free = free_bytes(where)
        return free is not None and free < NEARLY_FULL_BYTES
    return False


def disk_full_message(where: str | Path, removed: list[str] | None = None) -> tuple[str, str]:
    """(message, hint) for a run that filled the disk of ``where``."""
    free = free_bytes(where)
    shown = f"{free / 2**20:.1f} MB free" if free is not None else "free space unknown"
    message = f"{DISK_FULL} ({shown} on {where})"
    if removed:
        message += f"; the half-written {', '.join(sorted(removed))} was removed"
    return message, ("free space or set save_total_limit lower (or output_dir / MODELFORGE_HOME on a "
                     "larger disk), then resume the run")


def home_problem(root: str | Path) -> str | None:
    """Why the data folder ``root`` cannot be used (None: it can): missing, not a folder, not writable.

    Creates it when missing (and its parent allows), then really writes a file: a read-only mount
    lets ``os.access`` say yes to root.
    """
    p = Path(root)
    try:
        p.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        return f"the data folder {p} is not a folder"
    except OSError as exc:
        return f"cannot create the data folder {p} ({_reason(exc)})"
    probe = p / f".modelforge-write-test-{os.getpid()}"
    try:
        with open(probe, "w", encoding="utf-8") as fh:
            fh.write("ok")
        probe.unlink()
    except OSError as exc:
        try:
            probe.unlink()
        except OSError:
            pass
        return f"cannot write to the data folder {p} ({_reason(exc)})"
    return None


def _reason(exc: OSError) -> str:
    return {errno.EACCES: "permission denied", errno.EPERM: "permission denied",
            errno.EROFS: "read-only file system", errno.ENOSPC: "the disk is full",
            errno.ENOTDIR: "a part of the path is a file"}.get(exc.errno, exc.strerror or type(exc).__name__)
