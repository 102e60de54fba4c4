"""A readers-writer lock for threads: many readers at once, or one writer, writers first."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator


class ReadWriteLock:
    """Many searches at once, or one add/remove. FAISS releases the GIL while it scans, so
    concurrent lookups in one large scope can use both cores instead of queueing; waiting
    writers go first, so a stream of lookups cannot starve the stores behind them.

    Except behind a long read (`read(long=True)`: a snapshot copying a whole scope, ~1.1 s
    at a million vectors). A writer cannot get in before that read ends however new readers
    are treated, so holding them back behind it would only stall every search for as long
    as the copy runs, as soon as one store came along; they go in beside it instead."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._long_readers = 0
        self._writing = False
        self._writers_waiting = 0

    @contextlib.contextmanager
    def read(self, *, long: bool = False) -> Iterator[None]:
        with self._cond:
            while self._writing or (self._writers_waiting and not self._long_readers):
                self._cond.wait()
            self._readers += 1
            self._long_readers += long
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                self._long_readers -= long
                if not self._readers:
                    self._cond.notify_all()

    @contextlib.contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            self._writers_waiting += 1
            while self._writing or self._readers:
                self._cond.wait()
            self._writers_waiting -= 1
            self._writing = True
        try:
            yield
        finally:
            with self._cond:
                self._writing = False
                self._cond.notify_all()
