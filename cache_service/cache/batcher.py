"""Async front of a model: off the event loop, batched, with a deadline.

One dedicated thread runs the model, so forward passes never compete with each other for
the cores (measured: one thread per pass is fastest on this 2-core box) and a burst of
concurrent calls becomes one batched forward pass instead of a queue of single ones. Generic
over the model: the embedder uses it today, a verifier reading prompt pairs can use its own.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

from cache_service.protocols import Embedder, Vector

In = TypeVar("In")
Out = TypeVar("Out")

ADMIT_FRACTION = 0.8
"""Share of a caller's deadline the queue's expected wait may take for an input to be
admitted. Half (what this was) shed lookups the model would have answered in time: 32
concurrent clients queue ~32 inputs at ~5-8 ms each on this box, 160-260 ms against a
500 ms deadline, and every shed paraphrase went upstream. The fifth left is the estimate's
room to be wrong."""

# Weight of the newest batch in the running per-input cost: enough to follow a change in
# load within a few batches, not so much that one slow batch (a GC pause) sheds a burst.
_EWMA = 0.2


class ModelBusy(TimeoutError):
    """Refused at admission: the queue ahead is expected to outlast the caller's deadline.

    A `TimeoutError`, so every caller already treats it as one (a miss for the embedder, a
    refusal for a verifier); it is raised at once instead of after the deadline, and the
    input never joins the queue, so an overloaded model stops growing its backlog."""


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
        self.shed = 0
        # Seconds of model time per input, measured over recent batches (0 until the first).
        self.per_input_s = 0.0
        self._running = 0  # inputs in the batch on the model thread now

    def expected_wait_s(self) -> float:
        """How long a new input would wait for its result: everything ahead of it at the
        recently measured cost per input (batches amortise, so this is per input in the
        batch sizes the current load produces)."""
        return (len(self._pending) + self._running + 1) * self.per_input_s

    async def run(self, item: In, timeout_s: float | None = None) -> Out:
        """The model's output for one input; raises TimeoutError past the deadline (the
        caller decides what that means: a miss for the embedder, a refusal for a verifier).

        Admission: an input expected to wait more than ADMIT_FRACTION of its deadline is
        refused at once (`ModelBusy`). Waiting for it would mostly end in a timeout anyway,
        and queued behind the backlog it would make every later caller later still. An
        idle model admits whatever its last measured cost: only a queue is evidence."""
        busy = bool(self._pending) or self._running > 0  # an idle model always admits
        limit = None if timeout_s is None else timeout_s * ADMIT_FRACTION
        if busy and limit is not None and self.expected_wait_s() > limit:
            self.shed += 1
            raise ModelBusy(f"model queue ~{self.expected_wait_s() * 1000:.0f} ms deep")
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
            self._running = len(live)
            started = time.perf_counter()
            try:
                outputs = await loop.run_in_executor(
                    self._executor, self._run_batch, [t for t, _ in live]
                )
            except Exception as e:
                for _, f in live:
                    if not f.done():
                        f.set_exception(e)
                continue
            finally:
                self._running = 0
            cost = (time.perf_counter() - started) / len(live)
            self.per_input_s = (
                cost if self.batches == 0 else (1 - _EWMA) * self.per_input_s + _EWMA * cost
            )
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
