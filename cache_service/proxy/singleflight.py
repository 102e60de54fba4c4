"""Single flight: concurrent identical misses (same exact key) make one upstream call.

The first request for a key leads: it makes the call and publishes the answer; requests
arriving while it is in flight follow and share it. A follower is told it followed, so
the answer is paid for, stored and accounted once, by the leader. Requests that may not
read the cache (no-cache, no-store) neither lead nor follow: they asked for a fresh answer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from cache_service.proxy.fanout import Fanout

T = TypeVar("T")


class Flights(Generic[T]):
    """Exact key → the upstream call in flight for it."""

    def __init__(self) -> None:
        self._inflight: dict[str, asyncio.Future[T]] = {}

    def busy(self, key: str) -> bool:
        """Whether a call for `key` is in flight here (a new request would join it)."""
        return key in self._inflight

    async def run(self, key: str, share: bool, call: Callable[[], Awaitable[T]]) -> tuple[T, bool]:
        """Run `call`, or join an identical one in flight. Returns its result and whether
        this request led (made the call itself)."""
        inflight = self._inflight
        shared = inflight.get(key) if share else None
        if shared is not None:
            try:
                return await asyncio.shield(shared), False
            except asyncio.CancelledError:
                if not shared.cancelled():
                    raise  # this request itself was cancelled
                # the leader's client went away mid-call: make our own call
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        lead = share and key not in inflight
        if lead:
            inflight[key] = future
        try:
            result = await call()
        except asyncio.CancelledError:
            future.cancel()
            raise
        except Exception as e:
            future.set_exception(e)
            future.exception()  # mark retrieved: with no followers nobody else reads it
            raise
        else:
            future.set_result(result)
        finally:
            if lead:
                inflight.pop(key, None)
        return result, True


class StreamFlights:
    """Exact key → the upstream stream in flight for it, fanned out to every reader."""

    def __init__(self) -> None:
        self._inflight: dict[str, Fanout] = {}

    def joinable(self, key: str) -> Fanout | None:
        return self._inflight.get(key)

    def lead(self, key: str, fan: Fanout) -> bool:
        """Register before the upstream call: identical requests arriving while it connects
        wait for it instead of making calls of their own."""
        if key in self._inflight:
            return False
        self._inflight[key] = fan
        return True

    def end(self, key: str, fan: Fanout) -> None:
        if self._inflight.get(key) is fan:
            del self._inflight[key]
