"""The overall deadline of one request's upstream part: every retry, fallback and backoff
wait, and a stream to its last byte, happen before it.

Time is read from the injected clock, so backoff waits on a test's fake clock count without
taking real seconds; and from the event loop, because a fake clock does not move while a
call is really waited for. With the real clock both say the same.
"""

from __future__ import annotations

import asyncio

from cache_service.errors import UpstreamTimeout
from cache_service.protocols import Clock


class Deadline:
    def __init__(self, clock: Clock, seconds: float) -> None:
        self.clock = clock
        self.seconds = seconds
        self._clock_start = clock.monotonic()
        self._loop_start = asyncio.get_running_loop().time()

    def left(self) -> float:
        """Seconds still to spend (≤ 0 once past)."""
        elapsed = max(
            self.clock.monotonic() - self._clock_start,
            asyncio.get_running_loop().time() - self._loop_start,
        )
        return self.seconds - elapsed

    def error(self) -> UpstreamTimeout:
        return UpstreamTimeout(
            f"upstream gave no answer within the request deadline ({self.seconds:g} s)",
            code="upstream_deadline",
        )
