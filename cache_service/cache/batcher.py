"""Async front of a model: off the event loop, batched, with a deadline.

One dedicated thread runs the model, so forward passes never compete with each other for
the cores (measured: one thread per pass is fastest on this 2-core box) and a burst of
concurrent calls becomes one batched forward pass instead of a queue of single ones. Generic
over the model: the embedder uses it today, a verifier reading prompt pairs can use its own.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections import deque
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

from cache_service.protocols import Embedder, Vector

In = TypeVar("In")
Out = TypeVar("Out")


class ModelBatcher(Generic[In, Out]):
    """`run` takes a batch of inputs and returns one output per input, in order."""

    def __init__(
        self, run: Callable[[list[In]], Sequence[Out]], *, max_batch: int = 32, name: str = "model"
    ) -> None:
        self._run_batch = run
        self.max_batch = max_batch
        self._pending: deque[tuple[In, asyncio.Future[Out]]] = deque()
        self._worker: asyncio.Task[None] | None = None
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=name)
        self.batches = 0
        self.processed = 0

    async def run(self, item: In, timeout_s: float | None = None) -> Out:
        """The model's output for one input; raises TimeoutError past the deadline (the
        caller decides what that means: a miss for the embedder, a refusal for a verifier)."""
        future: asyncio.Future[Out] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._drain())
        # shield: a caller giving up must not cancel the batch others are waiting on.
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout_s)
        except (TimeoutError, asyncio.CancelledError):
            # Nobody waits for this input any more: the batcher skips it instead of computing
            # it late, so an overloaded model sheds work rather than queueing more of it.
            future.cancel()
            raise

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
                outputs = await loop.run_in_executor(
                    self._executor, self._run_batch, [t for t, _ in live]
                )
            except Exception as e:
                for _, f in live:
                    if not f.done():
                        f.set_exception(e)
                continue
            self.batches += 1
            self.processed += len(live)
            for (_, f), out in zip(live, outputs, strict=True):
                if not f.done():
                    f.set_result(out)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


class EmbeddingBatcher(ModelBatcher[str, Vector]):
    """The embedder behind the batcher: texts in, normalised vectors out."""

    def __init__(self, embedder: Embedder, *, max_batch: int = 32) -> None:
        # Rows of the (n, dim) array, as views: no copy.
        super().__init__(
            lambda texts: list(embedder.embed(texts)), max_batch=max_batch, name="embed"
        )
        self.embedder = embedder

    async def embed(self, text: str, timeout_s: float | None = None) -> Vector:
        return await self.run(text, timeout_s)
