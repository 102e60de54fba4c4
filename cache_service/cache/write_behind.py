"""A miss's entry stored after its answer, without losing it or a hit on it.

Storing an entry (the SQLite commit, the index add, the thread hop to do them off the event
loop) took 0.6 ms of a miss at 1k entries and 1.1 ms at a million, measured by stage timers;
the answer waited for all of it so that `X-Cache-Stored: true` would survive a crash right
after the answer. Here the answer waits for one ``write`` of the entry's record to the
journal (`backends/entry_journal.py`, replayed into the store at start), and a thread of its
own stores it moments later, in order, batching whatever queued meanwhile.

Until it is stored the entry is *pending*, and nothing may behave as if it were not there:
- an exact lookup reads the pending entries first (`pending`), so the next identical request
  hits;
- a semantic search, and every API route that reads or changes stored entries (lookup,
  invalidation, feedback, stats), first stores what is pending (`flush`), so it sees the
  entry, and an invalidation can never be undone by a store (or a replay) that comes after
  it. The flush is a no-op without pending entries, which is the usual case: the writer
  stores a miss's entry long before the next request's embedding is done.

Only for a store this process owns (the local diskcache): a fleet's replicas read their
entries from Redis, where an entry must be before its lease is released.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from pathlib import Path

from cache_service.backends.entry_journal import EntryJournal, Segment, encode
from cache_service.backends.records import from_record, to_record
from cache_service.protocols import Entry

log = logging.getLogger(__name__)


class WriteBehind:
    def __init__(self, put: Callable[[Entry], object], journal: EntryJournal) -> None:
        """`put` stores one entry (store, then index); it runs in the writer's thread, or in
        the thread of whoever flushes."""
        self._put = put
        self._journal = journal
        self._queue: deque[Entry] = deque()
        self._pending: dict[str, Entry] = {}
        # Held only to journal-and-queue (on the event loop) or to take the queue and swap
        # the journal's segment (a writer): microseconds, so the loop never waits on a store.
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        # Held while storing a batch: a flush waits for the batch in flight, so that when it
        # returns every entry submitted before it is stored, in submission order.
        self._storing = threading.Lock()
        self._in_flight = 0
        self._closed = False
        self._thread: threading.Thread | None = None
        self.stored = 0
        self.failed = 0

    # --- the event loop's side

    def submit(self, entry: Entry) -> None:
        """Journal the entry and queue it for the store; raises OSError if the journal
        write failed (the caller then stores it itself)."""
        frame = encode(to_record(entry))
        with self._lock:
            self._journal.append(frame)
            self._queue.append(entry)
            self._pending[entry.exact_key] = entry
            self._wake.notify()
        if self._thread is None:
            self._start()

    def pending(self, exact_key: str) -> Entry | None:
        """The newest pending entry under this exact key (a dict read: no lock needed)."""
        return self._pending.get(exact_key)

    @property
    def busy(self) -> bool:
        """Entries queued or being stored: a flush would have work to wait for."""
        return bool(self._queue) or self._in_flight > 0

    # --- the writer's side (and any thread that flushes)

    def flush(self) -> None:
        """Blocks until every entry submitted before the call is stored."""
        with self._storing:
            self._store_queued()

    def _store_queued(self) -> None:
        if not self._queue:
            return  # a flush that only waited for the batch in flight
        try:
            spare: Segment | None = self._journal.create()
        except OSError:
            # No new segment (a full disk): the next record tries to make one, and if that
            # fails too its miss is stored before its answer (`CacheFront`).
            log.exception("entry journal segment not created")
            spare = None
        with self._lock:
            # Swapped with the queue taken: the closed segment holds exactly this batch (and
            # entries of earlier batches, already stored), so once the batch is stored it
            # may go, while anything submitted from now on lands in the next segment.
            segments = self._journal.swap(spare)
            # Counted in flight before the queue empties: `busy`, read without the lock,
            # must never see neither.
            self._in_flight = len(self._queue)
            batch = list(self._queue)
            self._queue.clear()
        try:
            for entry in batch:
                try:
                    self._put(entry)
                    self.stored += 1
                except Exception:
                    # Lost as it would have been before (a failed store costs a future hit,
                    # never an answer), but its `X-Cache-Stored: true` was already sent:
                    # counted and logged, and not retried forever from the journal.
                    self.failed += 1
                    log.exception("store failed", extra={"entry": entry.id})
        finally:
            with self._lock:
                for entry in batch:
                    # Only after the store has it: an exact lookup finds the entry in one
                    # place or the other at every moment. A newer entry under the same key
                    # stays pending.
                    if self._pending.get(entry.exact_key) is entry:
                        del self._pending[entry.exact_key]
                self._in_flight = 0
        for segment in segments:
            self._journal.discard(segment)

    def _start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="entry-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._queue and not self._closed:
                    self._wake.wait()
                if self._closed and not self._queue:
                    return
            try:
                self.flush()
            except Exception:
                log.exception("entry writer failed; will try again")

    def close(self) -> None:
        """Store what is pending and stop the writer (the journal is then empty)."""
        with self._lock:
            self._closed = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join()
        self.flush()
        self._journal.close()


def replay(journal: EntryJournal, put: Callable[[Entry], object], now: float) -> int:
    """Store the entries of every segment a previous process left (oldest first, so the
    newest entry under an exact key wins), then delete the segments; returns how many were
    stored. Run at start, before the index is built from the store."""
    count = 0
    for segment in journal.segments():
        try:
            for record in journal.read(segment):
                try:
                    entry = from_record(record)
                except (KeyError, TypeError, ValueError):
                    log.warning("skipped an unreadable entry journal record")
                    continue
                if not entry.expired(now):
                    put(entry)
                    count += 1
        except Exception:
            # Kept for the next start (the store refused, e.g. a full disk): the sidecar
            # still starts, and a replayed entry stored twice is the same entry.
            log.exception("entry journal replay failed", extra={"segment": segment.name})
            continue
        journal.discard(segment)
    return count


def journal_dir(data_dir: Path) -> Path:
    return data_dir / "entry-journal"
