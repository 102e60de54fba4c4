"""The on-disk outcome log: one row per request, so reports survive restarts.

Why SQLite (stdlib sqlite3) and not JSON lines with rotation:

* Reports ask "everything since T": an index on time answers that without scanning or parsing
  every rotated file.
* Retention by age *and* by row count is two DELETE statements inside a transaction; with
  JSON lines, a row cap means rewriting files or rotating at a granularity that overshoots.
* A crash mid-write leaves a torn last line in a JSON file; SQLite's transactions leave
  either the whole batch or none of it.
* WAL mode lets `python -m cache_service report` read while the server writes, with neither
  blocking the other.

The request path never touches the disk: `append` puts the event on an in-memory deque
(an atomic operation under the GIL) and returns; a single worker thread owns the only
connection and writes batches every `flush_interval_s` or `batch_rows` rows, whichever comes
first. `close()` writes whatever is pending before it returns, so a clean shutdown loses
nothing.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from cache_service.protocols import Clock, SystemClock
from cache_service.telemetry.events import OutcomeEvent
from cache_service.telemetry.stats import Outcome

# The package's logger name from before the split, so log lines keep their "logger" field.
log = logging.getLogger("cache_service.telemetry")

T = TypeVar("T")


_SCHEMA = """
CREATE TABLE IF NOT EXISTS outcomes (
    id INTEGER PRIMARY KEY,
    time REAL NOT NULL,
    request_id TEXT NOT NULL,
    namespace TEXT NOT NULL,
    project TEXT NOT NULL,
    model TEXT NOT NULL,
    outcome TEXT NOT NULL,
    similarity REAL,
    best_rejected REAL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    dollars_saved REAL NOT NULL,
    dollars_spent REAL NOT NULL,
    latency_ms REAL NOT NULL,
    stages TEXT NOT NULL,
    upstream_status INTEGER,
    embed_timeout INTEGER NOT NULL,
    prompt TEXT,
    rejected_by TEXT,
    entry_id TEXT
);
CREATE INDEX IF NOT EXISTS outcomes_time ON outcomes (time);
"""
# Columns added after the first release: a log written before them gains them on open
# (NULL in old rows), and a read-only reader selects NULL in their place.
_ADDED = {"rejected_by": "TEXT", "entry_id": "TEXT"}
_FIELDS = (
    "time", "request_id", "namespace", "project", "model", "outcome", "similarity",
    "best_rejected", "prompt_tokens", "completion_tokens", "dollars_saved", "dollars_spent",
    "latency_ms", "stages", "upstream_status", "embed_timeout", "prompt", "rejected_by",
    "entry_id",
)  # fmt: skip
_COLUMNS = ", ".join(_FIELDS)
_INSERT = f"INSERT INTO outcomes ({_COLUMNS}) VALUES ({', '.join('?' * len(_FIELDS))})"


def _row(e: OutcomeEvent) -> tuple[Any, ...]:
    d = {f: getattr(e, f) for f in _FIELDS}
    d["outcome"] = e.outcome.value
    d["stages"] = json.dumps(e.stages, separators=(",", ":"))
    d["embed_timeout"] = int(e.embed_timeout)
    return tuple(d[f] for f in _FIELDS)


def _event(row: tuple[Any, ...]) -> OutcomeEvent:
    d = dict(zip(_FIELDS, row, strict=True))
    d["outcome"] = Outcome(d["outcome"])
    d["stages"] = json.loads(d["stages"])
    d["embed_timeout"] = bool(d["embed_timeout"])
    return OutcomeEvent(**d)


@dataclass(frozen=True, slots=True)
class OutcomeFilter:
    """Which rows a dashboard query reads: since <= time < until, and each label given
    equal (None: any)."""

    since: float | None = None
    until: float | None = None
    namespace: str | None = None
    model: str | None = None
    project: str | None = None
    namespaces: tuple[str, ...] | None = None
    """Only these namespaces (a caller's own tenants); None: every one."""

    def where(self) -> tuple[str, list[Any]]:
        lo = -float("inf") if self.since is None else self.since
        hi = float("inf") if self.until is None else self.until
        sql = ["time >= ?", "time < ?"]
        args: list[Any] = [lo, hi]
        for column in ("namespace", "model", "project"):
            value = getattr(self, column)
            if value is not None:
                sql.append(f"{column} = ?")
                args.append(value)
        if self.namespaces is not None:
            marks = ", ".join("?" * len(self.namespaces))
            sql.append(f"namespace IN ({marks})" if marks else "0")
            args.extend(self.namespaces)
        return " AND ".join(sql), args


def _present(conn: sqlite3.Connection) -> set[str]:
    return {r[1] for r in conn.execute("PRAGMA table_info(outcomes)")}


def _select_list(conn: sqlite3.Connection) -> str:
    have = _present(conn)
    return ", ".join(f if f in have else f"NULL AS {f}" for f in _FIELDS)


def _select(conn: sqlite3.Connection, since: float | None, until: float | None) -> list[Any]:
    # Insertion order, which is the order Stats saw them: float sums then agree to the bit.
    sql = f"SELECT {_select_list(conn)} FROM outcomes WHERE time >= ? AND time < ? ORDER BY id"
    lo = -float("inf") if since is None else since
    hi = float("inf") if until is None else until
    return conn.execute(sql, (lo, hi)).fetchall()


def _recent(conn: sqlite3.Connection, flt: OutcomeFilter, limit: int) -> list[Any]:
    where, args = flt.where()
    sql = f"SELECT {_COLUMNS} FROM outcomes WHERE {where} ORDER BY id DESC LIMIT ?"
    return conn.execute(sql, [*args, limit]).fetchall()


def _filtered(conn: sqlite3.Connection, flt: OutcomeFilter) -> list[Any]:
    where, args = flt.where()
    return conn.execute(
        f"SELECT {_COLUMNS} FROM outcomes WHERE {where} ORDER BY id", args
    ).fetchall()


def _column(conn: sqlite3.Connection, name: str) -> str:
    """`name`, or NULL where a log written before that column was added is read without
    being migrated (the read-only reader of the report CLI)."""
    return name if name in _present(conn) else "NULL"


def _miss_reasons(conn: sqlite3.Connection, flt: OutcomeFilter) -> dict[str, int]:
    where, args = flt.where()
    sql = (
        f"SELECT coalesce({_column(conn, 'rejected_by')}, 'unknown'), count(*) FROM outcomes "
        f"WHERE {where} AND outcome = 'miss' GROUP BY 1 ORDER BY 2 DESC, 1"
    )
    return {r: n for r, n in conn.execute(sql, args)}


def _series(conn: sqlite3.Connection, flt: OutcomeFilter, buckets: int) -> list[dict[str, Any]]:
    where, args = flt.where()
    lo, hi = conn.execute(
        f"SELECT min(time), max(time) FROM outcomes WHERE {where}", args
    ).fetchone()
    if lo is None:
        return []
    width = max((hi - lo) / buckets, 1.0)
    sql = (
        f"SELECT CAST((time - ?) / ? AS INTEGER) AS b, count(*), "
        f"sum(outcome IN ('exact_hit', 'semantic_hit')), "
        f"sum(outcome IN ('exact_hit', 'semantic_hit', 'miss')), "
        f"sum(dollars_saved), sum(dollars_spent) FROM outcomes WHERE {where} "
        f"GROUP BY b ORDER BY b"
    )
    out = []
    for b, requests, hits, eligible, saved, spent in conn.execute(sql, [lo, width, *args]):
        out.append(
            {
                "time": lo + b * width,
                "width_s": width,
                "requests": requests,
                "hits": hits,
                "hit_rate": round(hits / eligible, 4) if eligible else 0.0,
                "dollars_saved": saved,
                "dollars_spent": spent,
            }
        )
    return out


TOP_ENTRY_KEYS = (
    "entry_id", "hits", "tokens_saved", "dollars_saved", "last_hit", "namespace", "model",
)  # fmt: skip


def _top_entries(conn: sqlite3.Connection, flt: OutcomeFilter, limit: int) -> list[dict[str, Any]]:
    where, args = flt.where()
    entry_id = _column(conn, "entry_id")
    sql = (
        f"SELECT {entry_id}, count(*), sum(prompt_tokens + completion_tokens), "
        f"sum(dollars_saved), max(time), min(namespace), min(model) FROM outcomes "
        f"WHERE {where} AND {entry_id} IS NOT NULL GROUP BY 1 "
        f"ORDER BY 2 DESC, 5 DESC LIMIT ?"
    )
    rows = conn.execute(sql, [*args, limit]).fetchall()
    return [dict(zip(TOP_ENTRY_KEYS, r, strict=True)) for r in rows]


def _read_only(path: Path | str, fn: Callable[[sqlite3.Connection], T], empty: T) -> T:
    """`fn` on a read-only connection to a log another process may be writing; `empty` when
    there is no log yet."""
    path = Path(path)
    if not path.exists():
        return empty
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=5.0)
    try:
        return fn(conn)
    finally:
        conn.close()


def read_miss_reasons(path: Path | str, flt: OutcomeFilter) -> dict[str, int]:
    """`OutcomeLog.miss_reasons` without writing to the log (the report CLI)."""
    return _read_only(path, lambda conn: _miss_reasons(conn, flt), {})


def read_top_entries(path: Path | str, flt: OutcomeFilter, limit: int) -> list[dict[str, Any]]:
    """`OutcomeLog.top_entries` without writing to the log (the report CLI)."""
    return _read_only(path, lambda conn: _top_entries(conn, flt, limit), [])


def read_outcomes(
    path: Path | str, since: float | None = None, until: float | None = None
) -> list[OutcomeEvent]:
    """Read a log another process may be writing, without writing to it (the report CLI)."""
    rows: list[Any] = _read_only(path, lambda conn: _select(conn, since, until), [])
    return [_event(r) for r in rows]


class OutcomeLog:
    """A bounded, append-only log of outcomes in SQLite; see the module docstring.

    Retention: rows older than `retention_days` and all but the newest `max_rows` are pruned
    on open, then every `prune_interval_s`, and on `prune()`.
    """

    def __init__(
        self,
        path: Path | str,
        *,
        retention_days: float = 30.0,
        max_rows: int = 1_000_000,
        clock: Clock | None = None,
        flush_interval_s: float = 0.5,
        batch_rows: int = 200,
        max_pending: int = 100_000,
        prune_interval_s: float = 60.0,
    ) -> None:
        if retention_days <= 0 or max_rows <= 0:
            raise ValueError("retention_days and max_rows must be > 0")
        self.path = Path(path)
        self.retention_days = retention_days
        self.max_rows = max_rows
        self.clock: Clock = clock or SystemClock()
        self.flush_interval_s = flush_interval_s
        self.batch_rows = batch_rows
        self.max_pending = max_pending
        self.prune_interval_s = prune_interval_s
        self.written = 0
        self.dropped = 0
        self._pending: deque[OutcomeEvent] = deque()
        self._calls: deque[tuple[Callable[[sqlite3.Connection], Any], Future[Any]]] = deque()
        self._wake = threading.Event()
        self._closed = False
        # Orders append() against close() (which may run in another thread): a row is either
        # refused or queued before the writer's final drain, never lost in between.
        self._gate = threading.Lock()
        self._thread: threading.Thread | None = None

    @classmethod
    def open(
        cls,
        path: Path | str,
        retention_days: float = 30.0,
        max_rows: int = 1_000_000,
        **options: Any,
    ) -> OutcomeLog:
        """Create the file if needed, prune it, and start the writer thread. Blocking."""
        self = cls(path, retention_days=retention_days, max_rows=max_rows, **options)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        ready: Future[None] = Future()
        self._thread = threading.Thread(
            target=self._run, args=(ready,), name="outcome-log", daemon=True
        )
        self._thread.start()
        ready.result()  # surface a bad path or a corrupt file here, not in the thread
        return self

    # --- called from the event loop

    def append(self, event: OutcomeEvent) -> bool:
        """Queue one row; never waits on the disk. False if the row was dropped (closed, or
        the writer is `max_pending` rows behind: memory stays bounded even if the disk
        stalls)."""
        with self._gate:
            if self._closed or len(self._pending) >= self.max_pending:
                self.dropped += 1
                return False
            self._pending.append(event)
        if len(self._pending) >= self.batch_rows:
            self._wake.set()
        return True

    # --- blocking: call from a worker thread, the CLI, or tests

    def flush(self) -> None:
        """Return once everything appended so far is on disk."""
        self._call(lambda conn: None)

    def query(self, since: float | None = None, until: float | None = None) -> list[OutcomeEvent]:
        """Rows with since <= time < until in the order they were recorded, including rows
        still queued."""
        rows = self._call(lambda conn: _select(conn, since, until))
        return [_event(r) for r in rows]

    def filtered(self, flt: OutcomeFilter) -> list[OutcomeEvent]:
        """Every row `flt` admits, in the order recorded (pending rows included)."""
        return [_event(r) for r in self._call(lambda conn: _filtered(conn, flt))]

    def recent(self, flt: OutcomeFilter, limit: int) -> list[OutcomeEvent]:
        """The newest `limit` rows `flt` admits, newest first (pending rows included)."""
        return [_event(r) for r in self._call(lambda conn: _recent(conn, flt, limit))]

    def miss_reasons(self, flt: OutcomeFilter) -> dict[str, int]:
        """Misses counted by why they missed (`OutcomeEvent.rejected_by`), most first."""
        reasons: dict[str, int] = self._call(lambda conn: _miss_reasons(conn, flt))
        return reasons

    def series(self, flt: OutcomeFilter, buckets: int = 60) -> list[dict[str, Any]]:
        """Requests, hit rate and dollars in up to `buckets` equal slices of the time the
        admitted rows span (at least a second each), oldest first; empty slices left out."""
        out: list[dict[str, Any]] = self._call(lambda conn: _series(conn, flt, buckets))
        return out

    def top_entries(self, flt: OutcomeFilter, limit: int) -> list[dict[str, Any]]:
        """The entries served most often (`TOP_ENTRY_KEYS`: hits, the tokens and dollars
        they saved, the last hit, a namespace and model), most hits first."""
        out: list[dict[str, Any]] = self._call(lambda conn: _top_entries(conn, flt, limit))
        return out

    def prune(self) -> int:
        """Apply retention now; returns rows deleted."""
        n: int = self._call(self._prune)
        return n

    def count(self) -> int:
        n: int = self._call(
            lambda conn: conn.execute("SELECT count(*) FROM outcomes").fetchone()[0]
        )
        return n

    def close(self) -> None:
        """Write everything pending, then stop the writer. Idempotent."""
        if self._thread is None:
            return
        with self._gate:
            self._closed = True
        thread, self._thread = self._thread, None
        self._wake.set()
        thread.join()

    def __enter__(self) -> OutcomeLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- writer thread

    def _call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._thread is None or self._closed or not self._thread.is_alive():
            raise RuntimeError("outcome log is closed")
        fut: Future[T] = Future()
        self._calls.append((fn, fut))
        self._wake.set()
        return fut.result()

    def _run(self, ready: Future[None]) -> None:
        try:
            conn = sqlite3.connect(self.path, timeout=5.0, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            # NORMAL: a power cut may lose the last batch, never corrupt the file; FULL would
            # fsync every 0.5 s for rows that only feed reports.
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.executescript(_SCHEMA)
            have = _present(conn)
            for column, kind in _ADDED.items():
                if column not in have:
                    conn.execute(f"ALTER TABLE outcomes ADD COLUMN {column} {kind}")
            self._prune(conn)
        except BaseException as e:
            ready.set_exception(e)
            return
        ready.set_result(None)
        last_prune = time.monotonic()
        try:
            while True:
                self._wake.wait(self.flush_interval_s)
                self._wake.clear()
                closing = self._closed
                self._write_pending(conn)
                while self._calls:
                    fn, fut = self._calls.popleft()
                    if fut.set_running_or_notify_cancel():
                        try:
                            fut.set_result(fn(conn))
                        except Exception as e:
                            fut.set_exception(e)
                if time.monotonic() - last_prune >= self.prune_interval_s:
                    last_prune = time.monotonic()
                    self._safely(self._prune, conn)
                if closing:
                    # `_closed` was set under the gate before we read it, so every accepted
                    # row is already queued and the drain above wrote it.
                    break
        finally:
            self._fail_calls()
            conn.close()

    def _write_pending(self, conn: sqlite3.Connection) -> None:
        while self._pending:
            batch: list[OutcomeEvent] = []
            # popleft on a deque is atomic, so append() from the loop can run concurrently.
            while self._pending and len(batch) < 5000:
                batch.append(self._pending.popleft())
            try:
                with _transaction(conn):
                    conn.executemany(_INSERT, [_row(e) for e in batch])
                self.written += len(batch)
            except Exception:
                with self._gate:
                    self.dropped += len(batch)
                log.exception("outcome log write failed", extra={"rows": len(batch)})

    def _prune(self, conn: sqlite3.Connection) -> int:
        cutoff = self.clock.now() - self.retention_days * 86400
        with _transaction(conn):
            n = conn.execute("DELETE FROM outcomes WHERE time < ?", (cutoff,)).rowcount
            n += conn.execute(
                "DELETE FROM outcomes WHERE id <= "
                "(SELECT id FROM outcomes ORDER BY id DESC LIMIT 1 OFFSET ?)",
                (self.max_rows,),
            ).rowcount
        return n

    def _safely(self, fn: Callable[[sqlite3.Connection], Any], conn: sqlite3.Connection) -> None:
        try:
            fn(conn)
        except Exception:
            log.exception("outcome log maintenance failed")

    def _fail_calls(self) -> None:
        while self._calls:
            _, fut = self._calls.popleft()
            if fut.set_running_or_notify_cancel():
                fut.set_exception(RuntimeError("outcome log is closed"))


@contextlib.contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    conn.execute("BEGIN")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
