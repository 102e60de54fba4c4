"""Async front of a model: off the event loop, batched, with a deadline.

One dedicated thread runs the model, so forward passes never compete with each other for
the cores (measured: one thread per pass is fastest on this 2-core box) and a burst of
concurrent calls becomes one batched forward pass instead of a queue of single ones. Generic
over the model: the embedder uses it today, a verifier reading prompt pairs can use its own.

The model's thread takes its next batch itself, as soon as a pass ends: inputs queue in a
deque under a lock, and results go back to each caller's event loop. When the loop handed
out each batch (`run_in_executor` from a task on the loop), the model waited for a busy
loop between passes: under 32 clients at 1k entries, 198 of 550 passes ended with inputs
already queued and the next started a mean 5.5 ms later, 4.4 % of the model's time idle
while work waited.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from cache_service.protocols import Embedder, Vector

log = logging.getLogger(__name__)

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


@dataclass(slots=True)
class _Job(Generic[In, Out]):
    item: In
    future: asyncio.Future[Out]
    abandoned: bool = False
    """Set on the loop when the caller gave up; read by the model's thread (a plain flag:
    the future itself is the loop's to touch)."""


class ModelBatcher(Generic[In, Out]):
    """`run` takes a batch of inputs and returns one output per input, in order."""

    def __init__(
        self, run: Callable[[list[In]], Sequence[Out]], *, max_batch: int = 32, name: str = "model"
    ) -> None:
        self._run_batch = run
        self.max_batch = max_batch
        self.name = name
        self._pending: deque[_Job[In, Out]] = deque()
        self._ready = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False
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

    async def run(
        self,
        item: In,
        timeout_s: float | None = None,
        *,
        meanwhile: Callable[[], object] | None = None,
    ) -> Out:
        """The model's output for one input; raises TimeoutError past the deadline (the
        caller decides what that means: a miss for the embedder, a refusal for a verifier).

        Admission: an input expected to wait more than ADMIT_FRACTION of its deadline is
        refused at once (`ModelBusy`). Waiting for it would mostly end in a timeout anyway,
        and queued behind the backlog it would make every later caller later still. An
        idle model admits whatever its last measured cost: only a queue is evidence.

        `meanwhile` is work the caller may need next, run on this thread while the model
        computes this input, so that it costs no time of its own; only when the model was
        idle, since under load this thread's time belongs to the other callers. A failure
        in it is the caller's to meet again later: it is swallowed here."""
        busy = bool(self._pending) or self._running > 0  # an idle model always admits
        limit = None if timeout_s is None else timeout_s * ADMIT_FRACTION
        if busy and limit is not None and self.expected_wait_s() > limit:
            self.shed += 1
            raise ModelBusy(f"model queue ~{self.expected_wait_s() * 1000:.0f} ms deep")
        job: _Job[In, Out] = _Job(item, asyncio.get_running_loop().create_future())
        with self._ready:
            if self._closed:
                raise ModelBusy(f"the {self.name} batcher is closed")
            self._pending.append(job)
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name=self.name, daemon=True)
                self._thread.start()
            self._ready.notify()
        if meanwhile is not None and not busy:
            try:
                meanwhile()
            except Exception:
                log.debug("work beside the model failed", exc_info=True)
        # The future is this caller's alone, so a cancellation that reaches it touches no one
        # else's input. A timeout scope rather than `wait_for`, which wraps the wait in a
        # task of its own (Python 3.11): a task and a loop turn more on every embedding.
        try:
            async with asyncio.timeout(timeout_s):
                return await job.future
        except (TimeoutError, asyncio.CancelledError):
            # Nobody waits for this input any more: the batcher skips it instead of computing
            # it late, so an overloaded model sheds work rather than queueing more of it.
            job.abandoned = True
            job.future.cancel()
            raise

    def _work(self) -> None:
        """The model's thread: whatever queued while the last pass ran is the next batch.
        No waiting to fill a batch, so an idle service adds zero latency and a busy one
        batches."""
        while True:
            with self._ready:
                while not self._pending and not self._closed:
                    self._ready.wait()
                if self._closed:
                    return
                batch = [
                    self._pending.popleft() for _ in range(min(self.max_batch, len(self._pending)))
                ]
                live = [job for job in batch if not job.abandoned]
                self._running = len(live)
            if not live:
                continue
            started = time.perf_counter()
            outputs: Sequence[Out] = ()
            error: BaseException | None = None
            try:
                outputs = self._run_batch([job.item for job in live])
                if len(outputs) != len(live):
                    error = RuntimeError(f"{len(live)} inputs gave {len(outputs)} outputs")
            except Exception as e:
                error = e
            finally:
                self._running = 0
            if error is None:
                cost = (time.perf_counter() - started) / len(live)
                self.per_input_s = (
                    cost if self.batches == 0 else (1 - _EWMA) * self.per_input_s + _EWMA * cost
                )
                self.batches += 1
                self.processed += len(live)
            _deliver(live, outputs, error)

    def close(self) -> None:
        """Stop the model's thread after its current pass. Inputs still queued, and any
        asked for later, are refused as `ModelBusy` (a timeout to every caller: a lookup
        fails open to the upstream, a verifier refuses), never an error that fails a
        request."""
        with self._ready:
            self._closed = True
            left = list(self._pending)
            self._pending.clear()
            self._ready.notify_all()
        _deliver(left, (), ModelBusy(f"the {self.name} batcher closed"))


def _deliver(
    jobs: Sequence[_Job[In, Out]], outputs: Sequence[Out], error: BaseException | None
) -> None:
    """Hand each job its output (or the error) on its own loop, from any thread."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Out], Out | None]]] = {}
    results: Sequence[Out | None] = outputs if error is None else [None] * len(jobs)
    for job, out in zip(jobs, results, strict=True):
        by_loop.setdefault(job.future.get_loop(), []).append((job.future, out))
    for loop, settled in by_loop.items():
        # A closed loop raises RuntimeError: nobody is left there to wait for these.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(_settle, settled, error)


def _settle(
    settled: list[tuple[asyncio.Future[Out], Out | None]], error: BaseException | None
) -> None:
    for future, out in settled:
        if future.done():  # its caller gave up
            continue
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(out)  # type: ignore[arg-type]


class EmbeddingBatcher(ModelBatcher[str, Vector]):
    """The embedder behind the batcher: texts in, normalised vectors out."""

    def __init__(self, embedder: Embedder, *, max_batch: int = 32) -> None:
        # Rows of the (n, dim) array, as views: no copy.
        super().__init__(
            lambda texts: list(embedder.embed(texts)), max_batch=max_batch, name="embed"
        )
        self.embedder = embedder

    async def embed(
        self,
        text: str,
        timeout_s: float | None = None,
        *,
        meanwhile: Callable[[], object] | None = None,
    ) -> Vector:
        return await self.run(text, timeout_s, meanwhile=meanwhile)
