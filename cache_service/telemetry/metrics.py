"""Prometheus metrics of one app instance.

`Metrics` owns its own `CollectorRegistry`, so several apps (tests) can live in one process
without "duplicated timeseries" errors from the global default registry.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

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

from cache_service.errors import StoreUnavailable
from cache_service.telemetry.events import HITS, UPSTREAM_PAID, OutcomeEvent
from cache_service.telemetry.stats import Outcome

if TYPE_CHECKING:
    from cache_service.cache.batcher import ModelBatcher
    from cache_service.cache.cross_encoder import CrossEncoderVerifier
    from cache_service.telemetry.outcome_log import OutcomeLog

# The package's logger name from before the split, so log lines keep their "logger" field.
log = logging.getLogger("cache_service.telemetry")


# fmt: off
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_STAGE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                  0.5, 1.0)
# Dense near the usual 0.8-0.95 thresholds, where moving the threshold changes the hit rate.
_SIMILARITY_BUCKETS = (0.5, 0.6, 0.7, 0.75, 0.8, 0.82, 0.84, 0.86, 0.88, 0.9, 0.92, 0.94, 0.96,
                       0.98, 0.99, 1.0)
_WAIT_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
# fmt: on


@dataclass(frozen=True, slots=True)
class FleetGauges:
    """A replica's view of its fleet, read at each scrape (plain numbers, no Redis call)."""

    redis_up: float
    replicas: float
    quota_local: float
    booked: float
    feed_lag_s: float
    feed_events: float
    store_unavailable: float
    flights_led: float
    flights_followed: float


class _ScrapeTimeCollector(Collector):
    """Values read at scrape time: cache size (from a callback, since counting entries costs a
    store call nobody needs between scrapes) and the outcome log's own health."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.size_source: Callable[[], tuple[int, int]] | None = None
        self.size: tuple[int, int] = (0, 0)
        self.outcome_log: OutcomeLog | None = None
        self.embedder: ModelBatcher[Any, Any] | None = None
        self.verifier: CrossEncoderVerifier | None = None
        self.fleet: Callable[[], FleetGauges] | None = None
        self.size_limit: int | None = None

    def collect(self) -> Iterator[Metric]:
        entries, volume = self.size
        if self.size_source is not None:
            try:
                entries, volume = self.size_source()
            except StoreUnavailable:
                pass  # a shared store that is away: its outage is counted elsewhere
            except Exception:
                # A failing callback must not fail the whole scrape; stale beats nothing.
                log.exception("cache size callback failed")
        yield GaugeMetricFamily(
            f"{self.prefix}_entries", "Entries in the cache store.", value=entries
        )
        yield GaugeMetricFamily(
            f"{self.prefix}_bytes", "Bytes the cache store occupies on disk.", value=volume
        )
        if self.size_limit is not None:
            yield GaugeMetricFamily(
                f"{self.prefix}_bytes_limit",
                "The store's size limit (store_size_limit_bytes): past it the oldest entries "
                "are evicted (counted in _evicted).",
                value=self.size_limit,
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
        if self.embedder is not None:
            yield CounterMetricFamily(
                f"{self.prefix}_embeddings_shed",
                "Lookups refused at the embedder's admission (queue deeper than half the "
                "deadline): served exact-only, never queued.",
                value=self.embedder.shed,
            )
            yield GaugeMetricFamily(
                f"{self.prefix}_embedder_queue_seconds",
                "Expected wait of a new input at the embedder (queue x measured cost).",
                value=self.embedder.expected_wait_s(),
            )
        if self.verifier is not None:
            yield from self._verifier(self.verifier)
        if self.fleet is not None:
            yield from self._fleet(self.fleet())

    def _fleet(self, f: FleetGauges) -> Iterator[Metric]:
        p = self.prefix
        yield GaugeMetricFamily(
            f"{p}_redis_up", "Whether this replica's last heartbeat reached Redis.", f.redis_up
        )
        yield GaugeMetricFamily(
            f"{p}_fleet_replicas", "Replicas alive at the last heartbeat.", f.replicas
        )
        yield GaugeMetricFamily(
            f"{p}_quota_local",
            "1 while quota is enforced by this replica alone (Redis away: redis_down_quota).",
            f.quota_local,
        )
        yield CounterMetricFamily(
            f"{p}_quota_booked",
            "Requests charged locally while Redis was away, booked into Redis since.",
            f.booked,
        )
        yield GaugeMetricFamily(
            f"{p}_index_feed_lag_seconds",
            "Age of the newest index event applied from the other replicas (0: caught up).",
            f.feed_lag_s,
        )
        yield CounterMetricFamily(
            f"{p}_index_feed_events", "Index events read from the fleet's stream.", f.feed_events
        )
        yield CounterMetricFamily(
            f"{p}_store_unavailable",
            "Lookups and stores that found the shared store unreachable (failed open).",
            f.store_unavailable,
        )
        flights = CounterMetricFamily(
            f"{p}_fleet_flights",
            "Misses that led a fleet-wide single flight, or waited on another replica's.",
            labels=["role"],
        )
        flights.add_metric(["led"], f.flights_led)
        flights.add_metric(["followed"], f.flights_followed)
        yield flights

    def _verifier(self, v: CrossEncoderVerifier) -> Iterator[Metric]:
        p = self.prefix
        # Plain attribute reads of ints the event loop bumps: a scrape sees a value at most
        # one lookup stale, no lock needed.
        verdicts = CounterMetricFamily(
            f"{p}_verifier_verdicts",
            "Candidates the cross-encoder verifier judged, by verdict (timeout and error "
            "verdicts refuse: the lookup is a miss).",
            labels=["verdict"],
        )
        for verdict, n in (
            ("accepted", v.accepted),
            ("refused", v.refused),
            ("timeout", v.timeouts),
        ):
            verdicts.add_metric([verdict], n)
        yield verdicts
        yield CounterMetricFamily(
            f"{p}_verifier_errors",
            "Lookups whose verifier model call failed (all their candidates refused).",
            value=v.errors,
        )
        yield CounterMetricFamily(
            f"{p}_verifier_shed",
            "Pairs refused at the verifier's admission (queue deeper than half its deadline).",
            value=v.shed,
        )
        yield GaugeMetricFamily(
            f"{p}_verifier_threshold", "Probability a pair must reach.", value=v.threshold
        )
        yield GaugeMetricFamily(
            f"{p}_verifier_floor", "Cosine a candidate must reach to be judged.", value=v.floor
        )
        yield GaugeMetricFamily(
            f"{p}_verifier_queue_seconds",
            "Expected wait of a new pair at the verifier (queue x measured cost).",
            value=v.batcher.expected_wait_s(),
        )


class Metrics:
    """Every metric of one app instance, in its own registry. Thread-safe (prometheus_client
    locks per metric), cheap enough to call on the event loop."""

    def __init__(self, prefix: str = "llm_cache") -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._children: dict[tuple[Any, ...], Any] = {}
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
        child = self._child
        child(self.requests, *who, e.outcome.value).inc()
        child(self.request_latency, e.outcome.value).observe(e.latency_ms / 1000)
        if e.outcome in HITS:
            child(self.tokens_saved, *who, "prompt").inc(e.prompt_tokens)
            child(self.tokens_saved, *who, "completion").inc(e.completion_tokens)
            child(self.dollars_saved, *who).inc(e.dollars_saved)
        elif e.outcome in UPSTREAM_PAID:
            child(self.upstream_tokens, *who, "prompt").inc(e.prompt_tokens)
            child(self.upstream_tokens, *who, "completion").inc(e.completion_tokens)
            child(self.dollars_spent, *who).inc(e.dollars_spent)
        # Exact hits are 1.0 by definition and would drown the distribution that matters.
        if e.outcome is Outcome.SEMANTIC_HIT and e.similarity is not None:
            child(self.similarity, "served").observe(e.similarity)
        if e.best_rejected is not None:
            child(self.similarity, "best_rejected").observe(e.best_rejected)
        for stage, ms in e.stages.items():
            child(self.stage_latency, stage).observe(ms / 1000)
        if e.embed_timeout:
            child(self.embed_timeouts, e.namespace, e.model).inc()

    def _child(self, metric: Any, *values: str) -> Any:
        """`metric.labels(*values)`, kept: prometheus_client checks the values and takes a
        lock on every call (1.4 us against 0.35 for the child's own inc, 6-9 calls a
        request). A child is the same object for the metric's life (these per-request
        series are never removed), and their label values are capped (`LabelCaps`)."""
        key = (metric, *values)
        got = self._children.get(key)
        if got is None:
            got = self._children[key] = metric.labels(*values)
        return got

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

    def watch_size_limit(self, limit_bytes: int) -> None:
        self._scrape.size_limit = limit_bytes

    def watch_fleet(self, source: Callable[[], FleetGauges]) -> None:
        """`source()` is read at every scrape (Redis is not: these are the replica's own
        counters of how its Redis behaves)."""
        self._scrape.fleet = source

    def watch_embedder(self, batcher: ModelBatcher[Any, Any]) -> None:
        self._scrape.embedder = batcher

    def watch_verifier(self, verifier: CrossEncoderVerifier) -> None:
        self._scrape.verifier = verifier

    # --- exposition

    def render(self) -> tuple[bytes, str]:
        """(body, content type) for GET /metrics. Runs the size callback: call off the loop."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def _remove(metric: Gauge, *labels: str) -> None:
    with contextlib.suppress(KeyError):
        metric.remove(*labels)
