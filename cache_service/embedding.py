"""Async front of the embedder: off the event loop, batched, with a deadline.

One dedicated thread runs the model, so forward passes never compete with each other for
the cores (measured: one thread per pass is fastest on this 2-core box) and a burst of
concurrent lookups becomes one batched forward pass instead of a queue of single ones.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections import deque

from cache_service.protocols import Embedder, Vector


class EmbeddingBatcher:
    def __init__(self, embedder: Embedder, *, max_batch: int = 32) -> None:
        self.embedder = embedder
        self.max_batch = max_batch
        self._pending: deque[tuple[str, asyncio.Future[Vector]]] = deque()
        self._worker: asyncio.Task[None] | None = None
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="embed")
        self.batches = 0
        self.embedded = 0

    async def embed(self, text: str, timeout_s: float | None = None) -> Vector:
        """The normalised embedding of one text; raises TimeoutError past the deadline
        (the caller then fails open: the request is a miss, not an error)."""
        future: asyncio.Future[Vector] = asyncio.get_running_loop().create_future()
        self._pending.append((text, future))
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._drain())
        # shield: a caller giving up must not cancel the batch others are waiting on.
        return await asyncio.wait_for(asyncio.shield(future), timeout_s)

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        while self._pending:
            # No waiting to fill a batch: whatever queued while the last pass ran is the
            # next batch, so an idle service adds zero latency and a busy one batches.
            batch = [
                self._pending.popleft() for _ in range(min(self.max_batch, len(self._pending)))
            ]
            live = [(t, f) for t, f in batch if not f.done()]
            if not live:
                continue
            try:
                vectors = await loop.run_in_executor(
                    self._executor, self.embedder.embed, [t for t, _ in live]
                )
            except Exception as e:
                for _, f in live:
                    if not f.done():
                        f.set_exception(e)
                continue
            self.batches += 1
            self.embedded += len(live)
            for (_, f), v in zip(live, vectors, strict=True):
                if not f.done():
                    f.set_result(v)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
