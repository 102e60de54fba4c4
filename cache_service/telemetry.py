"""Telemetry: Prometheus metrics and the on-disk outcome log, behind one facade.

`Metrics` owns its own `CollectorRegistry`, so several apps (tests) can live in one process
without "duplicated timeseries" errors from the global default registry.

`OutcomeLog` keeps one row per request so reports survive restarts. Why SQLite (stdlib
sqlite3) and not JSON lines with rotation:

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
import dataclasses
import json
import logging
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from cache_service.protocols import Clock, SystemClock
from cache_service.stats import Outcome, Stats

log = logging.getLogger("cache_service.telemetry")

T = TypeVar("T")

HITS = (Outcome.EXACT_HIT, Outcome.SEMANTIC_HIT)
UPSTREAM_PAID = (Outcome.MISS, Outcome.BYPASS)
"""Outcomes whose tokens and dollars were spent upstream (the same rule as `Stats.record`)."""

STAGES = ("exact", "embed", "search", "verify")


@dataclass(frozen=True, slots=True)
class OutcomeEvent:
    """What one request did, as recorded once per request by the pipeline.

    Tokens are the answer's usage: saved on a hit, spent upstream on a miss or bypass, and
    counted nowhere on an error (the same rule as `Stats.record`). `prompt` is dropped before
    anything is stored unless the operator turned `log_prompts` on.
    """

    time: float
    """Wall-clock seconds since the epoch when the outcome was known."""
    request_id: str
    namespace: str
    project: str
    model: str
    outcome: Outcome
    similarity: float | None = None
    """Similarity of the served entry (1.0 for exact hits)."""
    best_rejected: float | None = None
    """Highest similarity among candidates the acceptance policy refused."""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    dollars_saved: float = 0.0
    dollars_spent: float = 0.0
    latency_ms: float = 0.0
    stages: dict[str, float] = field(default_factory=dict)
    """Milliseconds spent per lookup stage (exact, embed, search, verify)."""
    upstream_status: int | None = None
    embed_timeout: bool = False
    prompt: str | None = None

    @property
    def dollars(self) -> float:
        """The amount `Stats.record` would have been given for this event."""
        if self.outcome in HITS:
            return self.dollars_saved
        if self.outcome in UPSTREAM_PAID:
            return self.dollars_spent
        return 0.0


def split_cost(outcome: Outcome, dollars: float) -> tuple[float, float]:
    """(dollars_saved, dollars_spent) for an answer that costs `dollars` at list price."""
    if outcome in HITS:
        return dollars, 0.0
    if outcome in UPSTREAM_PAID:
        return 0.0, dollars
    return 0.0, 0.0


class StageTimer:
    """`with StageTimer(ctx.stages, "embed"): await ...` adds the block's wall time, in ms, to
    `stages["embed"]` (a context manager, so it can wrap an `await`)."""

    __slots__ = ("_name", "_stages", "_t0")

    def __init__(self, stages: dict[str, float], name: str) -> None:
        self._stages = stages
        self._name = name
        self._t0 = 0.0

    def __enter__(self) -> None:
        self._t0 = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        ms = (time.perf_counter() - self._t0) * 1000
        self._stages[self._name] = self._stages.get(self._name, 0.0) + ms


# ------------------------------------------------------------------------------------ metrics

# fmt: off
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_STAGE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                  0.5, 1.0)
# Dense near the usual 0.8-0.95 thresholds, where moving the threshold changes the hit rate.
_SIMILARITY_BUCKETS = (0.5, 0.6, 0.7, 0.75, 0.8, 0.82, 0.84, 0.86, 0.88, 0.9, 0.92, 0.94, 0.96,
                       0.98, 0.99, 1.0)
_WAIT_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
# fmt: on


class _ScrapeTimeCollector(Collector):
    """Values read at scrape time: cache size (from a callback, since counting entries costs a
    store call nobody needs between scrapes) and the outcome log's own health."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.size_source: Callable[[], tuple[int, int]] | None = None
        self.size: tuple[int, int] = (0, 0)
        self.outcome_log: OutcomeLog | None = None

    def collect(self) -> Iterator[Metric]:
        entries, volume = self.size
        if self.size_source is not None:
            try:
                entries, volume = self.size_source()
            except Exception:
                # A failing callback must not fail the whole scrape; stale beats nothing.
                log.exception("cache size callback failed")
        yield GaugeMetricFamily(
            f"{self.prefix}_entries", "Entries in the cache store.", value=entries
        )
        yield GaugeMetricFamily(
            f"{self.prefix}_bytes", "Bytes the cache store occupies on disk.", value=volume
        )
        if self.outcome_log is not None:
            yield CounterMetricFamily(
                f"{self.prefix}_outcome_log_written",
                "Outcome rows written to the on-disk log.",
                value=self.outcome_log.written,
            )
            yield CounterMetricFamily(
                f"{self.prefix}_outcome_log_dropped",
                "Outcome rows lost (queue full or write failed).",
                value=self.outcome_log.dropped,
            )


class Metrics:
    """Every metric of one app instance, in its own registry. Thread-safe (prometheus_client
    locks per metric), cheap enough to call on the event loop."""

    def __init__(self, prefix: str = "llm_cache") -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        p = prefix
        who = ("namespace", "project", "model")
        self.requests = Counter(
            f"{p}_requests", "Requests by outcome.", [*who, "outcome"], registry=r
        )
        self.tokens_saved = Counter(
            f"{p}_tokens_saved", "Tokens answered from the cache.", [*who, "kind"], registry=r
        )
        self.dollars_saved = Counter(
            f"{p}_dollars_saved", "USD the cache saved (list price).", list(who), registry=r
        )
        self.upstream_tokens = Counter(
            f"{p}_upstream_tokens", "Tokens paid for upstream.", [*who, "kind"], registry=r
        )
        self.dollars_spent = Counter(
            f"{p}_dollars_spent", "USD spent upstream (list price).", list(who), registry=r
        )
        self.embed_timeouts = Counter(
            f"{p}_embed_timeouts",
            "Lookups that failed open on a slow embedder.",
            ["namespace", "model"],
            registry=r,
        )
        self.request_latency = Histogram(
            f"{p}_request_latency_seconds",
            "Time in the sidecar per request, by outcome.",
            ["outcome"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.similarity = Histogram(
            f"{p}_similarity",
            "Similarity of served semantic hits (kind=served) and of the best candidate the "
            "policy refused (kind=best_rejected).",
            ["kind"],
            buckets=_SIMILARITY_BUCKETS,
            registry=r,
        )
        self.stage_latency = Histogram(
            f"{p}_lookup_stage_seconds",
            "Lookup latency by stage.",
            ["stage"],
            buckets=_STAGE_BUCKETS,
            registry=r,
        )
        self.upstream_requests = Counter(
            f"{p}_upstream_requests",
            "Upstream calls by status ('error': no response).",
            ["upstream", "status"],
            registry=r,
        )
        self.upstream_latency = Histogram(
            f"{p}_upstream_latency_seconds",
            "Upstream call latency.",
            ["upstream"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.upstream_retries = Counter(
            f"{p}_upstream_retries", "Upstream retries.", ["upstream", "reason"], registry=r
        )
        self.upstream_fallbacks = Counter(
            f"{p}_upstream_fallbacks",
            "Requests moved to another upstream.",
            ["from", "to"],
            registry=r,
        )
        self.quota_rejections = Counter(
            f"{p}_quota_rejections",
            "Requests refused by a quota.",
            ["scope_kind", "scope_name", "limit"],
            registry=r,
        )
        self.quota_queue_wait = Histogram(
            f"{p}_quota_queue_wait_seconds",
            "Time requests waited in the quota queue.",
            ["project", "limit"],
            buckets=_WAIT_BUCKETS,
            registry=r,
        )
        self.budget_used = Gauge(
            f"{p}_budget_used_usd",
            "USD spent in the current budget window.",
            ["project", "window"],
            registry=r,
        )
        self.budget_limit = Gauge(
            f"{p}_budget_limit_usd",
            "Budget for the window (absent: unlimited).",
            ["project", "window"],
            registry=r,
        )
        self.remaining_requests = Gauge(
            f"{p}_quota_remaining_requests",
            "Requests left in the rate window (absent: no limit).",
            ["scope_kind", "scope_name"],
            registry=r,
        )
        self.remaining_tokens = Gauge(
            f"{p}_quota_remaining_tokens",
            "Tokens left in the rate window (absent: no limit).",
            ["scope_kind", "scope_name"],
            registry=r,
        )
        self.expirations = Counter(f"{p}_expired", "Entries removed on expiry.", registry=r)
        self.evictions = Counter(
            f"{p}_evicted", "Entries evicted for space or invalidated.", registry=r
        )
        self.audits = Counter(
            f"{p}_audits",
            "Semantic hits re-asked upstream, by verdict (agreed, disagreed, skipped).",
            ["verdict"],
            registry=r,
        )
        self.audit_precision = Gauge(
            f"{p}_audit_estimated_precision",
            "Share of audited semantic hits whose fresh answer agreed with the cached one.",
            registry=r,
        )
        self._scrape = _ScrapeTimeCollector(p)
        r.register(self._scrape)

    # --- per request

    def observe(self, e: OutcomeEvent) -> None:
        who = (e.namespace, e.project, e.model)
        self.requests.labels(*who, e.outcome.value).inc()
        self.request_latency.labels(e.outcome.value).observe(e.latency_ms / 1000)
        if e.outcome in HITS:
            self.tokens_saved.labels(*who, "prompt").inc(e.prompt_tokens)
            self.tokens_saved.labels(*who, "completion").inc(e.completion_tokens)
            self.dollars_saved.labels(*who).inc(e.dollars_saved)
        elif e.outcome in UPSTREAM_PAID:
            self.upstream_tokens.labels(*who, "prompt").inc(e.prompt_tokens)
            self.upstream_tokens.labels(*who, "completion").inc(e.completion_tokens)
            self.dollars_spent.labels(*who).inc(e.dollars_spent)
        # Exact hits are 1.0 by definition and would drown the distribution that matters.
        if e.outcome is Outcome.SEMANTIC_HIT and e.similarity is not None:
            self.similarity.labels("served").observe(e.similarity)
        if e.best_rejected is not None:
            self.similarity.labels("best_rejected").observe(e.best_rejected)
        for stage, ms in e.stages.items():
            self.stage_latency.labels(stage).observe(ms / 1000)
        if e.embed_timeout:
            self.embed_timeouts.labels(e.namespace, e.model).inc()

    # --- upstream

    def upstream_call(self, upstream: str, status: int | None, seconds: float) -> None:
        """One call to an upstream; `status` None when no response came back at all."""
        self.upstream_requests.labels(upstream, "error" if status is None else str(status)).inc()
        self.upstream_latency.labels(upstream).observe(seconds)

    def retry(self, upstream: str, reason: str) -> None:
        self.upstream_retries.labels(upstream, reason).inc()

    def fallback(self, from_: str, to: str) -> None:
        self.upstream_fallbacks.labels(from_, to).inc()

    # --- quota

    def quota_rejection(self, scope_kind: str, scope_name: str, limit: str) -> None:
        self.quota_rejections.labels(scope_kind, scope_name, limit).inc()

    def queue_wait(self, project: str, seconds: float, limit: str = "any") -> None:
        self.quota_queue_wait.labels(project, limit).observe(seconds)

    def set_budget(self, project: str, window: str, used: float, limit: float | None) -> None:
        """`window`: the period's name ("daily", "monthly"), not its key, so the series
        survives the rollover instead of starting a new one every day."""
        self.budget_used.labels(project, window).set(used)
        if limit is None:
            _remove(self.budget_limit, project, window)
        else:
            self.budget_limit.labels(project, window).set(limit)

    def set_remaining(
        self, scope_kind: str, scope_name: str, requests: int | None, tokens: int | None
    ) -> None:
        """None: that limit is off for the scope, so the series disappears."""
        for gauge, value in ((self.remaining_requests, requests), (self.remaining_tokens, tokens)):
            if value is None:
                _remove(gauge, scope_kind, scope_name)
            else:
                gauge.labels(scope_kind, scope_name).set(value)

    # --- cache contents

    def cache_size(self, entries: int, volume: int) -> None:
        self._scrape.size = (entries, volume)

    def cache_size_callback(self, source: Callable[[], tuple[int, int]] | None) -> None:
        """`source() -> (entries, bytes)` runs at every scrape (render() runs off the loop)."""
        self._scrape.size_source = source

    def expired(self, n: int) -> None:
        if n > 0:
            self.expirations.inc(n)

    def evicted(self, n: int) -> None:
        if n > 0:
            self.evictions.inc(n)

    def audit(self, verdict: str, estimated_precision: float | None) -> None:
        self.audits.labels(verdict).inc()
        if estimated_precision is not None:
            self.audit_precision.set(estimated_precision)

    def watch_outcome_log(self, outcome_log: OutcomeLog | None) -> None:
        self._scrape.outcome_log = outcome_log

    # --- exposition

    def render(self) -> tuple[bytes, str]:
        """(body, content type) for GET /metrics. Runs the size callback: call off the loop."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def _remove(metric: Gauge, *labels: str) -> None:
    with contextlib.suppress(KeyError):
        metric.remove(*labels)


# -------------------------------------------------------------------------------- outcome log

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
    prompt TEXT
);
CREATE INDEX IF NOT EXISTS outcomes_time ON outcomes (time);
"""
_FIELDS = (
    "time", "request_id", "namespace", "project", "model", "outcome", "similarity",
    "best_rejected", "prompt_tokens", "completion_tokens", "dollars_saved", "dollars_spent",
    "latency_ms", "stages", "upstream_status", "embed_timeout", "prompt",
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


def _select(conn: sqlite3.Connection, since: float | None, until: float | None) -> list[Any]:
    # Insertion order, which is the order Stats saw them: float sums then agree to the bit.
    sql = f"SELECT {_COLUMNS} FROM outcomes WHERE time >= ? AND time < ? ORDER BY id"
    lo = -float("inf") if since is None else since
    hi = float("inf") if until is None else until
    return conn.execute(sql, (lo, hi)).fetchall()


def read_outcomes(
    path: Path | str, since: float | None = None, until: float | None = None
) -> list[OutcomeEvent]:
    """Read a log another process may be writing, without writing to it (the report CLI)."""
    path = Path(path)
    if not path.exists():
        return []
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=5.0)
    try:
        return [_event(r) for r in _select(conn, since, until)]
    finally:
        conn.close()


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


# ------------------------------------------------------------------------------ quota adapters

_BUDGET_WINDOWS = (("daily", "daily_budget"), ("monthly", "monthly_budget"))


def budgets_of(quota_snapshot: dict[str, Any]) -> list[dict[str, Any]]:
    """Project budgets from `QuotaManager.snapshot()`, as `build_report(budgets=...)` takes
    them: windows with a limit or with spend, leaving out unused unlimited ones."""
    out: list[dict[str, Any]] = []
    for scope in quota_snapshot.get("scopes", []):
        if scope.get("kind") != "project":
            continue
        for window, key in _BUDGET_WINDOWS:
            b = scope.get(key) or {}
            if b.get("limit") is not None or b.get("used"):
                out.append(
                    {
                        "project": scope["name"],
                        "window": window,
                        "used_usd": b.get("used", 0.0),
                        "limit_usd": b.get("limit"),
                    }
                )
    return out


def apply_quota_snapshot(metrics: Metrics, quota_snapshot: dict[str, Any]) -> None:
    """Set the remaining-requests/tokens gauges of every scope and the budget gauges of
    every project from `QuotaManager.snapshot()` (remaining is None where unlimited)."""
    for scope in quota_snapshot.get("scopes", []):
        kind, name = scope["kind"], scope["name"]
        metrics.set_remaining(
            kind,
            name,
            (scope.get("requests") or {}).get("remaining"),
            (scope.get("tokens") or {}).get("remaining"),
        )
        if kind == "project":
            for window, key in _BUDGET_WINDOWS:
                b = scope.get(key) or {}
                metrics.set_budget(name, window, float(b.get("used") or 0.0), b.get("limit"))


# ------------------------------------------------------------------------------------- facade


class Telemetry:
    """What the pipeline holds: `record(event)` updates the metrics and queues the log row.

    Hooks, both called on the event loop (state like the quota manager's is only safe to
    read there): `budgets` returns the current budget use (dicts with project, window,
    used_usd, limit_usd) for the report's budget section; `before_scrape` refreshes gauges
    right before GET /metrics renders.
    """

    def __init__(
        self,
        metrics: Metrics,
        outcome_log: OutcomeLog | None = None,
        *,
        log_prompts: bool = False,
        budgets: Callable[[], list[dict[str, Any]]] | None = None,
        before_scrape: Callable[[], None] | None = None,
    ) -> None:
        self.metrics = metrics
        self.log = outcome_log
        self.log_prompts = log_prompts
        self.budgets = budgets
        self.before_scrape = before_scrape
        metrics.watch_outcome_log(outcome_log)

    @classmethod
    def open(
        cls,
        path: Path | str | None,
        *,
        retention_days: float = 30.0,
        max_rows: int = 1_000_000,
        log_prompts: bool = False,
        clock: Clock | None = None,
    ) -> Telemetry:
        """Blocking (opens the file): call via asyncio.to_thread. `path` None: metrics only."""
        outcome_log = (
            None if path is None else OutcomeLog.open(path, retention_days, max_rows, clock=clock)
        )
        return cls(Metrics(), outcome_log, log_prompts=log_prompts)

    def record(self, event: OutcomeEvent) -> None:
        if event.prompt is not None and not self.log_prompts:
            event = dataclasses.replace(event, prompt=None)
        self.metrics.observe(event)
        if self.log is not None:
            self.log.append(event)

    def events(self, since: float | None = None, until: float | None = None) -> list[OutcomeEvent]:
        """Blocking: call via asyncio.to_thread."""
        return [] if self.log is None else self.log.query(since, until)

    def current_budgets(self) -> list[dict[str, Any]] | None:
        if self.budgets is None:
            return None
        try:
            return self.budgets()
        except Exception:
            log.exception("budget source failed; report goes without it")
            return None

    def refresh(self) -> None:
        """Run `before_scrape`; a failing hook costs fresh gauges, never the scrape."""
        if self.before_scrape is None:
            return
        try:
            self.before_scrape()
        except Exception:
            log.exception("before_scrape hook failed; gauges may be stale")

    def close(self) -> None:
        """Flush and close the log. Blocking: call via asyncio.to_thread."""
        if self.log is not None:
            self.log.close()


def record_event(stats: Stats, key: str, e: OutcomeEvent) -> None:
    """Feed one logged outcome to `stats` under `key` (a namespace, or a project), exactly as
    the pipeline recorded it live, so figures rebuilt from the log match the live ones."""
    stats.record(
        key,
        e.model,
        e.outcome,
        prompt_tokens=e.prompt_tokens,
        completion_tokens=e.completion_tokens,
        dollars=e.dollars,
        embed_timeout=e.embed_timeout,
    )


def replay_stats(events: Iterable[OutcomeEvent]) -> Stats:
    """The stats behind GET /v1/cache/stats, rebuilt from the outcome log at start, so a
    restart does not reset the counters (back to the log's retention)."""
    stats = Stats()
    for e in events:
        record_event(stats, e.namespace, e)
    return stats
