"""Giving memory back after large requests.

glibc keeps the heap a large request freed (the body, its parse, the forwarded copy, the
stored entry) for reuse instead of returning it, so resident memory ratchets up with the
largest requests seen: ten ~4 MB prompts left a `serve` process ~900 MB above its start
(benchmarks/memory.py; README, Benchmarks). After a request whose body was large this asks
glibc to return its free pages (`malloc_trim`), off the event loop, one trim at a time.
Elsewhere (no glibc) it does nothing.
"""

from __future__ import annotations

import asyncio
import logging

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cache_service.heap import malloc_trim

log = logging.getLogger("cache_service")

LARGE_BODY_BYTES = 1024 * 1024
"""Bodies from this size on are followed by a trim (smaller ones reuse the freed heap)."""


class TrimAfterLargeBodies:
    def __init__(self, app: ASGIApp, threshold_bytes: int = LARGE_BODY_BYTES) -> None:
        self.app = app
        self.threshold_bytes = threshold_bytes
        self._trim = malloc_trim()
        self._running: asyncio.Task[None] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self._trim is None:
            await self.app(scope, receive, send)
            return
        received = 0

        async def counting(message_source: Receive = receive) -> Message:
            nonlocal received
            message = await message_source()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
            return message

        try:
            await self.app(scope, counting, send)
        finally:
            if received >= self.threshold_bytes:
                self._schedule()

    def _schedule(self) -> None:
        # One at a time: requests finishing while a trim runs are covered by it or the next.
        if self._running is not None and not self._running.done():
            return
        self._running = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        trim = self._trim
        if trim is None:
            return
        try:
            await asyncio.to_thread(trim, 0)
        except Exception:
            log.warning("malloc_trim failed", exc_info=True)
