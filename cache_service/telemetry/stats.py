"""Counters behind GET /v1/cache/stats: what the cache answered and what that saved, and
the same counters rebuilt from logged outcome events."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from cache_service.telemetry.time_saved import TimeSaved

if TYPE_CHECKING:
    # Annotations only: events.py imports `Outcome` from here at runtime.
    from cache_service.telemetry.events import OutcomeEvent


class Outcome(StrEnum):
    EXACT_HIT = "exact_hit"
    SEMANTIC_HIT = "semantic_hit"
    MISS = "miss"
    BYPASS = "bypass"
    ERROR = "error"


@dataclass(slots=True)
class Counters:
    requests: int = 0
    exact_hits: int = 0
    semantic_hits: int = 0
    misses: int = 0
    bypasses: int = 0
    errors: int = 0
    embed_timeouts: int = 0
    prompt_tokens_saved: int = 0
    completion_tokens_saved: int = 0
    dollars_saved: float = 0.0
    upstream_prompt_tokens: int = 0
    upstream_completion_tokens: int = 0
    dollars_spent: float = 0.0
    time_saved_ms: float = 0.0
    """Estimated waiting the hits saved their callers (see time_saved.py)."""
    hits_unestimated: int = 0
    """Hits counted nothing in time_saved_ms: no miss latency of their model known yet."""

    def add(self, other: Counters) -> None:
        for name in self.__slots__:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        hits = self.exact_hits + self.semantic_hits
        # Bypasses are requests the caller told us not to look up: they do not count
        # against the hit rate of requests the cache was allowed to answer.
        eligible = hits + self.misses
        d["hits"] = hits
        d["hit_rate"] = round(hits / eligible, 4) if eligible else 0.0
        d["dollars_saved"] = round(self.dollars_saved, 10)
        d["dollars_spent"] = round(self.dollars_spent, 10)
        d["time_saved_ms"] = round(self.time_saved_ms, 3)
        return d


OTHER = "_other"


class LabelCap:
    """Keeps up to ``limit`` distinct values of one label (namespace, project, model) apart
    and counts the rest together as ``_other``. The values come from requests, and each
    distinct one costs a stats row and Prometheus series for good: without a cap, a client
    sending random model names grows memory and the scrape without bound."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._seen: set[str] = set()

    def __call__(self, value: str) -> str:
        if value in self._seen:
            return value
        if len(self._seen) < self.limit:
            self._seen.add(value)
            return value
        return OTHER

    def seed(self, values: Iterable[str]) -> None:
        """Values already counted (restored after a restart) keep their rows."""
        for v in values:
            if v != OTHER:
                self(v)


@dataclass(slots=True)
class LabelCaps:
    namespace: LabelCap
    project: LabelCap
    model: LabelCap

    @classmethod
    def of(cls, limit: int) -> LabelCaps:
        return cls(LabelCap(limit), LabelCap(limit), LabelCap(limit))


class Stats:
    """Updated only from the event loop, so no lock is needed."""

    def __init__(self) -> None:
        self._by_key: dict[tuple[str, str], Counters] = defaultdict(Counters)
        self.time_saved = TimeSaved()

    def record(
        self,
        namespace: str,
        model: str,
        outcome: Outcome,
        *,
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
        dollars: float = 0.0,
        embed_timeout: bool = False,
        latency_ms: float | None = None,
    ) -> None:
        """Tokens and dollars are saved on a hit and spent on a miss. `latency_ms` (the
        request's own, end to end) feeds the time-saved estimate: a miss's informs it, a
        hit's is subtracted from it; None leaves the estimate alone (a hit is then counted
        as unestimated)."""
        c = self._by_key[(namespace, model)]
        c.requests += 1
        if embed_timeout:
            c.embed_timeouts += 1
        if outcome is Outcome.EXACT_HIT:
            c.exact_hits += 1
        elif outcome is Outcome.SEMANTIC_HIT:
            c.semantic_hits += 1
        elif outcome is Outcome.MISS:
            c.misses += 1
        elif outcome is Outcome.BYPASS:
            c.bypasses += 1
        else:
            c.errors += 1
        if outcome in (Outcome.EXACT_HIT, Outcome.SEMANTIC_HIT):
            c.prompt_tokens_saved += prompt_tokens
            c.completion_tokens_saved += completion_tokens
            c.dollars_saved += dollars
            saved = None if latency_ms is None else self.time_saved.saved(model, latency_ms)
            if saved is None:
                c.hits_unestimated += 1
            else:
                c.time_saved_ms += saved
        elif outcome in (Outcome.MISS, Outcome.BYPASS):
            c.upstream_prompt_tokens += prompt_tokens
            c.upstream_completion_tokens += completion_tokens
            c.dollars_spent += dollars
            # Misses only: a bypass skipped the lookup, so it says less about what a
            # request that could have been a hit would have waited.
            if outcome is Outcome.MISS and latency_ms is not None:
                self.time_saved.miss(model, latency_ms)

    def rows(self) -> list[dict[str, Any]]:
        """Every (namespace, model) row's raw counters: what a replica publishes for the
        fleet's stats (`merge` reads it back)."""
        return [{"namespace": ns, "model": m, **asdict(c)} for (ns, m), c in self._by_key.items()]

    def merge(self, rows: Iterable[dict[str, Any]]) -> None:
        """Add another replica's `rows()`. Unknown fields are ignored (a newer replica may
        count more); a malformed row raises ValueError."""
        names = Counters.__slots__
        for row in rows:
            try:
                counters = Counters(**{n: row[n] for n in names if n in row})
                key = (str(row["namespace"]), str(row["model"]))
            except (KeyError, TypeError) as e:
                raise ValueError(f"malformed stats row: {row!r}") from e
            self._by_key[key].add(counters)

    def labels(self) -> tuple[set[str], set[str]]:
        """The namespaces and the models counted so far."""
        return {ns for ns, _ in self._by_key}, {m for _, m in self._by_key}

    def snapshot(
        self,
        visible: Callable[[str], bool] | None = None,
        *,
        namespace: str | None = None,
        model: str | None = None,
    ) -> dict[str, Any]:
        """Every row, or only the namespaces `visible` admits (a caller's own tenant), and
        only `namespace`'s and `model`'s rows when given (the dashboard's filters)."""
        total = Counters()
        namespaces: dict[str, Counters] = defaultdict(Counters)
        models: dict[str, Counters] = defaultdict(Counters)
        rows = {
            key: c
            for key, c in self._by_key.items()
            if (visible is None or visible(key[0]))
            and namespace in (None, key[0])
            and model in (None, key[1])
        }
        for (ns, model), c in rows.items():
            total.add(c)
            namespaces[ns].add(c)
            models[model].add(c)
        return {
            "total": total.as_dict(),
            "by_namespace": {k: v.as_dict() for k, v in sorted(namespaces.items())},
            "by_model": {k: v.as_dict() for k, v in sorted(models.items())},
            "by_namespace_model": [
                {"namespace": ns, "model": m, **c.as_dict()} for (ns, m), c in sorted(rows.items())
            ],
        }


def timed(outcome: Outcome, latency_ms: float, upstream_status: int | None) -> float | None:
    """The latency to give `Stats.record`: a miss's only where it went upstream (a miss of
    the cache API's lookup is the caller's to fetch: its latency is the lookup's alone, and
    would drag the misses' median down to a lookup's)."""
    if outcome is Outcome.MISS and upstream_status is None:
        return None
    return latency_ms


def record_event(stats: Stats, key: str, e: OutcomeEvent) -> None:
    """Feed one logged outcome to `stats` under `key` (a namespace, or a project), exactly as
    the recorder recorded it live, so figures rebuilt from the log match the live ones."""
    stats.record(
        key,
        e.model,
        e.outcome,
        prompt_tokens=e.prompt_tokens,
        completion_tokens=e.completion_tokens,
        dollars=e.dollars,
        embed_timeout=e.embed_timeout,
        latency_ms=timed(e.outcome, e.latency_ms, e.upstream_status),
    )


def replay_stats(events: Iterable[OutcomeEvent]) -> Stats:
    """The stats behind GET /v1/cache/stats, rebuilt from the outcome log at start, so a
    restart does not reset the counters (back to the log's retention)."""
    stats = Stats()
    for e in events:
        record_event(stats, e.namespace, e)
    return stats
