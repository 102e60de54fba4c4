"""One upstream stream, many readers: each reader gets every event from the start, at its own
pace, including events pushed before it joined. The primitive behind single flight for
streams; it knows nothing of any wire format."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator


class Fanout:
    def __init__(self) -> None:
        self._events: list[tuple[bytes, bool]] = []
        self.done = False
        self._changed = asyncio.Event()
        self.started: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        """True once the upstream stream is open; False if it never opened."""

    def start(self) -> None:
        self.started.set_result(True)

    def abandon(self) -> None:
        """The upstream call failed before streaming: followers make their own calls."""
        if not self.started.done():
            self.started.set_result(False)
        self.finish()

    def push(self, data: bytes, *, usage_only: bool = False) -> None:
        self._events.append((data, usage_only))
        self._wake()

    def finish(self) -> None:
        self.done = True
        self._wake()

    def _wake(self) -> None:
        # A fresh Event per change: readers waiting on the old one wake, later waits block.
        self._changed.set()
        self._changed = asyncio.Event()

    async def follow(self, include_usage: bool) -> AsyncIterator[bytes]:
        """The events; the usage-only chunk only for readers that asked for usage."""
        i = 0
        while True:
            changed = self._changed
            while i < len(self._events):
                data, usage_only = self._events[i]
                i += 1
                if include_usage or not usage_only:
                    yield data
            if self.done:
                return
            await changed.wait()
