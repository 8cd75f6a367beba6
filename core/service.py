"""Starting a run from a form or an API call: the pre-flight check once, then the job manager.

One Start press runs the config validation, the memory estimate and the duplicate-run check
once each: :func:`start` runs :func:`core.checks.run_checks` (validation, plugin adjustments,
data, one memory estimate shared by the memory and disk checks) and hands the adjusted config
to :meth:`core.jobs.JobManager.submit` with ``checked=True``, whose lock holds the one
duplicate check (tests/test_engine.py counts the calls).
"""

from __future__ import annotations

from dataclasses import dataclass

from core.checks import MemoryCheck, run_checks
from core.config import RunConfig
from core.errors import ConfigError
from core.jobs import JobManager


@dataclass
class Started:
    """A submitted run: its id, where it stands in the queue, and the memory estimate it passed."""

    run_id: str
    position: int            # runs ahead of it on this device (0: training now)
    behind: str | None       # the run training (or next) when it waits
    memory: MemoryCheck


def start(jobs: JobManager, config: RunConfig) -> Started:
    """Check ``config`` once and submit it.

    Raises:
        ConfigError: every problem with the config and its data (nothing is recorded).
        BusyError: the same configuration is already training or waiting, or the queue is full.
    """
    checked = run_checks(config)
    if checked.problems:
        raise ConfigError(f"{len(checked.problems)} problem(s) must be fixed before training",
                          "fix them in Configure/Dataset (Check configuration lists them too)",
                          problems=checked.problems)
    run_id = jobs.submit(checked.config, checked=True)
    # Asked after submitting, of the manager itself: two Starts at the same moment must not both
    # read "nothing is training" and both say "started".
    position, behind = jobs.ahead(run_id)
    return Started(run_id, position, behind, checked.memory)
