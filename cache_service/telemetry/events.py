"""What one request did: `OutcomeEvent`, recorded once per request by the recorder, and the
small helpers that build it (cost split, per-stage timing)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from cache_service.telemetry.stats import Outcome

HITS = (Outcome.EXACT_HIT, Outcome.SEMANTIC_HIT)
UPSTREAM_PAID = (Outcome.MISS, Outcome.BYPASS)
"""Outcomes whose tokens and dollars were spent upstream (the same rule as `Stats.record`)."""

STAGES = ("exact", "embed", "search", "verify")


@dataclass(frozen=True, slots=True)
class OutcomeEvent:
    """What one request did, as recorded once per request by the recorder.

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
    rejected_by: str | None = None
    """Why a miss missed: the guard that refused the best candidate, "below_threshold",
    "no_candidates", "embed_timeout", "max_age" (a hit too old for the caller) or
    "not_searched" (exact-only request, index not ready, store unreachable). None otherwise."""
    entry_id: str | None = None
    """The entry a hit was served from."""

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
