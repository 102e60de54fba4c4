"""Log lines written off the event loop, in batches.

Every proxied request logs one line. Formatting it (a `json.dumps`) and writing it (a
`write` and a flush on stderr) on the event loop cost ~0.2-0.4 ms of server CPU per exact
hit under uvicorn (INFO against WARNING, interleaved runs), whose whole server CPU was
~1.5 ms. Here the loop only queues the record; a thread formats the queued records and
writes them with one write (README, side by side: the request path's cuts).

Records wait at most `flush_interval_s`; a WARNING or worse wakes the writer at once, so an
error reaches the log before whatever follows it can kill the process. The order is kept
(one queue). `close` (at exit, and when logging shuts down) writes what is queued; a
SIGKILL loses at most the last interval's INFO lines.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections import deque
from typing import TextIO


class BackgroundHandler(logging.Handler):
    def __init__(
        self,
        stream: TextIO | None = None,
        *,
        flush_interval_s: float = 0.2,
        batch_records: int = 500,
    ) -> None:
        super().__init__()
        self.stream = stream if stream is not None else sys.stderr
        self.flush_interval_s = flush_interval_s
        self.batch_records = batch_records
        self._pending: deque[logging.LogRecord] = deque()
        self._wake = threading.Event()
        # Its own lock, not the handler's: `Handler.handle` holds that one around `emit`, on
        # the event loop, which must never wait while a batch is formatted and written.
        self._writing = threading.Lock()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="log-writer", daemon=True)
        self._thread.start()

    def emit(self, record: logging.LogRecord) -> None:
        # deque.append is atomic: no lock on the caller's side.
        self._pending.append(record)
        if record.levelno >= logging.WARNING or len(self._pending) >= self.batch_records:
            self._wake.set()

    def flush(self) -> None:
        """Write what is queued now, in the caller's thread (the writer may be racing it;
        each record is taken from the queue once)."""
        self._write_pending()

    def close(self) -> None:
        self._stopping = True
        self._wake.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout=5)
        self._write_pending()
        super().close()

    def _run(self) -> None:
        while not self._stopping:
            self._wake.wait(self.flush_interval_s)
            self._wake.clear()
            self._write_pending()

    def _write_pending(self) -> None:
        # Taken and written under one lock: a flush from another thread racing the writer
        # must not write a later batch before an earlier one.
        with self._writing:
            lines: list[str] = []
            while self._pending:
                record = self._pending.popleft()
                try:
                    lines.append(self.format(record))
                except Exception:
                    self.handleError(record)
            if not lines:
                return
            try:
                self.stream.write("\n".join(lines) + "\n")
                self.stream.flush()
            except Exception:
                # The stream is gone (closed at exit, a broken pipe): nothing to tell.
                pass
