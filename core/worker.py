"""The program ``accelerate launch`` runs once per device of a multi-process run.

``python -m core.worker --run-dir RUN_DIR --run-id RUN_ID [--resume CHECKPOINT]``, started by
:func:`core.distributed.run_distributed` (never by hand). Every process runs the ordinary
in-process engine (:func:`core.engine.run_training`) on the run config saved in
``RUN_DIR/distributed/run_config.json``; the Trainer inside meets the other processes through
the environment that accelerate set (RANK, WORLD_SIZE, MASTER_ADDR, ...).

Only global rank 0 has a real record store and an event log that writes ``events.jsonl``; the
others get stand-ins that write nothing, so events, metrics and the model record are written
once. Checkpoints and the saved model are the Trainer's business: it writes them from rank 0
(or, for FSDP/DeepSpeed shards, from each rank into its own file).

Exit status: 0 when the run completed or was stopped, 1 when it failed. A failing rank must exit
non-zero: that is how torchrun knows to end the other ranks instead of leaving them waiting.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from pathlib import Path

from core import distributed
from core.config import RunConfig
from core.events import EventLog


class _SilentEventLog(EventLog):
    """The event log of ranks other than 0: kept in memory only, never written to the file."""

    def attach_file(self, path: Path) -> None:
        return None


class _NoRecords:
    """The record store of ranks other than 0: every call does nothing (rank 0 records the run)."""

    def __init__(self, url: str = ""):
        self.url = url

    def __getattr__(self, name: str):
        return lambda *args, **kwargs: None


def _set_parent_death_signal() -> None:
    """Die with the launcher: if torchrun's agent is killed, its workers must not run on alone."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # pragma: no cover - best effort
        pass


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, default=str), encoding="utf-8")
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m core.worker", description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--run-id", required=True)
    parser.add_argument("--resume", default=None, help="checkpoint folder to resume from")
    args = parser.parse_args(argv)

    _set_parent_death_signal()
    from core.engine import run_training
    from core.paths import database_url
    from core.records import RecordStore

    run_dir = Path(args.run_dir)
    dist_dir = run_dir / distributed.DIST_DIR
    config = RunConfig.from_dict(json.loads((dist_dir / distributed.RUN_CONFIG).read_text(encoding="utf-8")),
                                 source=str(dist_dir / distributed.RUN_CONFIG))
    main_rank = distributed.is_main_process()
    store = RecordStore(database_url()) if main_rank else _NoRecords()
    events = EventLog(args.run_id) if main_rank else _SilentEventLog(args.run_id)
    # SIGTERM keeps its default (end now): the graceful stop is the stop file, checked after each
    # step; SIGTERM comes from the parent only when that did not work, and from torchrun when
    # another rank failed, and in both cases waiting for the next step would only hang.
    result = run_training(config, store, events, args.run_id, run_dir, stop_event=threading.Event(),
                          resume_from=args.resume)
    if main_rank:
        _write_json(dist_dir / "result.json", result.to_dict())
    elif os.environ.get("LOCAL_RANK") == "0":  # the first process of another machine: how it ended there
        _write_json(dist_dir / "result-local.json", result.to_dict())
    elif result.status == "failed":
        _write_json(dist_dir / f"result-rank{distributed.rank()}.json", result.to_dict())
    return 1 if result.status == "failed" else 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
