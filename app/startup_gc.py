"""Start-up without the cyclic garbage collector's rescans (issue 18).

While ``modelforge ui`` imports Gradio and builds the Blocks, Python allocates millions of
objects that live as long as the process (modules, classes, components, the page config), and
the cyclic collector rescans that growing heap again and again: ~0.4 s of CPU on this 2-core
machine, ~20% of the start. After the build, the first page request triggered one more full
collection (~0.1-0.2 s before the page was sent). So collection is paused during start-up, then
what start-up built is frozen (``gc.freeze``: never scanned again, it is never garbage) and
collection resumes for everything that follows. Reference counting frees ordinary garbage all
along; only cycles wait.

The same scan costs at exit: a command that imported torch/transformers/trl spends ~1.6 s of its
exit (2 cores) in the interpreter's final collection of a heap that is about to be discarded
anyway, so :func:`before_exit` freezes it first (measured: 1.68 s -> 0.17 s from the last line
printed to the process's end). atexit handlers and reference counting still run as usual.
"""

from __future__ import annotations

import gc


def pause() -> None:
    """Pause cyclic collection for the start-up (``modelforge ui``, before Gradio is imported)."""
    gc.disable()


def resume() -> None:
    """Freeze the start-up heap and resume collection; nothing to do when it was not paused."""
    if not gc.isenabled():
        gc.freeze()
        gc.enable()


def before_exit() -> None:
    """Skip the final cyclic collection of a process that is about to exit (only the program's
    own entry point calls this, never code running inside another process such as a test)."""
    gc.disable()
    gc.freeze()
