"""An object built in a background thread, and waited for by whoever first needs it.

The app's start-up uses it for the record store (issue 18): opening it imports SQLAlchemy and
checks the database, ~0.15 s of CPU that the first page does not need. Started once the web
server listens, it runs while the browser fetches and draws the page; the page-load events, the
first to read records, wait for it. Every caller gets the same object, or the same exception
(a damaged database, say) with its own message, never a half-built object.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Generic, TypeVar

T = TypeVar("T")


class Deferred(Generic[T]):
    """``build()`` run once, in a daemon thread started by :meth:`start` (or by the first
    :meth:`get`); attribute access is forwarded to the built object, waiting for it."""

    def __init__(self, build: Callable[[], T], name: str = "deferred"):
        self._build = build
        self._name = name
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        self._value: T | None = None
        self._error: BaseException | None = None

    def start(self) -> "Deferred[T]":
        with self._lock:  # two first callers at once start one thread, not two
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=f"open-{self._name}", daemon=True)
                self._thread.start()
        return self

    def _run(self) -> None:
        try:
            self._value = self._build()
        except BaseException as exc:  # noqa: BLE001 - handed to every caller of get()
            self._error = exc
        finally:
            self._done.set()

    def get(self) -> T:
        """The built object.

        Raises:
            Exception: whatever ``build()`` raised (to every caller).
        """
        self.start()
        self._done.wait()
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("_"):  # not forwarded: copy/pickle probes, and this class's own fields
            raise AttributeError(attr)
        return getattr(self.get(), attr)

    def __repr__(self) -> str:
        state = "ready" if self._done.is_set() else "started" if self._thread else "not started"
        return f"<Deferred {self._name}: {state}>"
