"""Pure: retry delays and circuit breakers for upstream calls. Clock and randomness are
injected, so every decision is reproducible in a test."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC
from email.utils import parsedate_to_datetime

from cache_service.protocols import Clock

RETRYABLE_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504, 529})


def parse_retry_after(headers: dict[str, str], now: float | None = None) -> float | None:
    """Seconds from `retry-after-ms`, or `retry-after` as seconds or as an HTTP-date
    (RFC 9110), the date read relative to `now` (the injected clock's wall time; a date
    already past is 0). Without `now` a date cannot be placed and counts as absent."""
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    if now is None:
        return None
    try:
        when = parsedate_to_datetime(value.strip())
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # "-0000" parses zone-less; an HTTP-date is GMT anyway
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - now)


def backoff_delay(
    attempt: int,
    *,
    base_s: float,
    max_s: float,
    retry_after_s: float | None = None,
    retry_after_cap_s: float = 30.0,
    rand: Callable[[], float] = random.random,
) -> float:
    """Delay before retry number `attempt` (0-based).

    Exponential backoff with full jitter (uniform in [0, min(max, base·2^attempt)]) spreads
    retries from many clients instead of having them hit the upstream in lockstep. When the
    upstream said Retry-After, it knows better than our guess: wait at least that (capped,
    so one bad header cannot park a request for an hour).
    """
    jittered = rand() * min(max_s, base_s * (2.0**attempt))
    if retry_after_s is None:
        return jittered
    return max(min(retry_after_s, retry_after_cap_s), jittered)


@dataclass(slots=True)
class CircuitBreaker:
    """Closed → (N consecutive failures) → open for `cooldown_s` → half-open: one trial
    call decides whether it closes again or reopens. An open upstream is skipped, so a
    failing primary costs a fallback, not a timeout per request."""

    clock: Clock
    failure_threshold: int = 5
    cooldown_s: float = 30.0
    failures: int = 0
    opened_at: float | None = None
    trial_in_flight: bool = False

    @property
    def state(self) -> str:
        if self.opened_at is None:
            return "closed"
        if self.clock.monotonic() - self.opened_at >= self.cooldown_s:
            return "half_open"
        return "open"

    def allow(self) -> bool:
        state = self.state
        if state == "closed":
            return True
        if state == "half_open" and not self.trial_in_flight:
            self.trial_in_flight = True
            return True
        return False

    def abandon(self) -> None:
        """An allowed call never reached the upstream: free the half-open trial for the
        next one instead of leaving the breaker waiting for a verdict that cannot come."""
        self.trial_in_flight = False

    def success(self) -> None:
        self.failures = 0
        self.opened_at = None
        self.trial_in_flight = False

    def failure(self) -> None:
        self.failures += 1
        self.trial_in_flight = False
        if self.opened_at is not None or self.failures >= self.failure_threshold:
            self.opened_at = self.clock.monotonic()
