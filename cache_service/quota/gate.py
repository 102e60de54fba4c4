"""Admission in front of any quota ledger: a priority queue for requests that hit a limit,
and the `Hold` that closes each admitted reservation exactly once.

Waiters are served highest priority first, FIFO within a priority. A waiter refused on a
scope blocks every later waiter needing that scope (so a busy low-priority stream cannot
starve a high-priority one) but not waiters on other scopes.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import math
from dataclasses import dataclass, field
from types import TracebackType

from cache_service.errors import RateLimited
from cache_service.pricing import Price, Usage
from cache_service.quota.ledger import Held, QuotaLedger
from cache_service.quota.limits import Denial, Scope


@dataclass(order=True, slots=True)
class _Waiter:
    rank: tuple[int, int]
    scopes: tuple[Scope, ...] = field(compare=False)
    tokens: int = field(compare=False)
    cost: float = field(compare=False)
    future: asyncio.Future[Held] = field(compare=False)


class QuotaGate:
    def __init__(self, ledger: QuotaLedger, *, on_limit: str, max_wait_s: float) -> None:
        self.ledger = ledger
        self.on_limit = on_limit
        self.max_wait_s = max_wait_s
        self._queue: list[_Waiter] = []
        self._seq = itertools.count()
        self._changed = asyncio.Event()
        self._pump: asyncio.Task[None] | None = None
        self.waited = 0

    def notify(self) -> None:
        """Something was released, settled or reconfigured: queued requests may fit now."""
        self._changed.set()

    async def acquire(
        self, scopes: tuple[Scope, ...], tokens: int, cost: float, priority: int
    ) -> Held:
        if not self._queue:
            result = await self.ledger.reserve(scopes, tokens, cost)
            if isinstance(result, Held):
                return result
            denial: Denial | None = result
        else:
            # Others queued first: even if room exists now, it is theirs before ours.
            denial = await self.ledger.check(scopes, tokens, cost)
        if denial is not None and (
            self.on_limit == "reject"
            or not denial.retryable
            or denial.retry_after_s > self.max_wait_s
        ):
            raise limit_error(denial)
        future: asyncio.Future[Held] = asyncio.get_running_loop().create_future()
        waiter = _Waiter((-priority, next(self._seq)), scopes, tokens, cost, future)
        heapq.heappush(self._queue, waiter)
        if self._pump is None or self._pump.done():
            self._pump = asyncio.create_task(self._run())
        self.notify()
        self.waited += 1
        try:
            return await asyncio.wait_for(asyncio.shield(future), self.max_wait_s)
        except TimeoutError:
            if future.done() and not future.cancelled():
                return future.result()  # admitted at the last moment
            future.cancel()
            last = await self.ledger.check(scopes, tokens, cost) or denial
            if last is None:  # room appeared but others still hold the queue
                last = Denial(*scopes[0], "rpm", 1.0, True, "too many requests are queued")
            raise limit_error(last, waited=self.max_wait_s) from None
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                await self.ledger.release(future.result())
            future.cancel()
            raise

    async def settle(self, held: Held, tokens: int, cost: float) -> None:
        await self.ledger.settle(held, tokens, cost)
        self.notify()

    async def release(self, held: Held) -> None:
        await self.ledger.release(held)
        self.notify()

    async def _run(self) -> None:
        while self._queue:
            self._changed.clear()
            blocked: set[Scope] = set()
            next_try = math.inf
            kept: list[_Waiter] = []
            for waiter in sorted(self._queue):
                if waiter.future.done():
                    continue
                if blocked.intersection(waiter.scopes):
                    kept.append(waiter)
                    continue
                result = await self.ledger.reserve(waiter.scopes, waiter.tokens, waiter.cost)
                if isinstance(result, Held):
                    if waiter.future.done():  # gave up while the ledger answered
                        await self.ledger.release(result)
                    else:
                        waiter.future.set_result(result)
                else:
                    blocked.add(result.scope)
                    next_try = min(next_try, result.retry_after_s)
                    kept.append(waiter)
            self._queue = kept
            heapq.heapify(self._queue)
            if not self._queue:
                return
            # Wake when the earliest limit clears, or sooner if a settlement frees room.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(max(next_try, 0.01), 1.0))


class Hold:
    """One admitted upstream call's reservation. It is closed exactly once, by `settle` with
    the answer's usage or by `release`; leaving `async with hold:` any other way (an error,
    a cancellation, a path that forgot) releases it, so no path can leak held budget. As
    httpx ties a response's bookkeeping to closing its stream."""

    def __init__(self, gate: QuotaGate, held: Held, price: Price | None) -> None:
        self._gate = gate
        self.held = held
        self._price = price
        self.closed = False

    async def settle(self, usage: Usage) -> float:
        """Charge the real usage at the called model's price (cached prompt tokens at its
        cached-input price); returns what was charged. An answer without usage is charged
        at the estimate: upstream billed something."""
        if self.closed:
            return 0.0
        self.closed = True
        if usage.total:
            cost = self._price.cost(usage) if self._price else 0.0
            tokens = usage.total
        else:
            cost, tokens = self.held.cost_usd, self.held.tokens
        await self._gate.settle(self.held, tokens, cost)
        return cost

    async def release(self) -> None:
        if self.closed:
            return
        self.closed = True
        await self._gate.release(self.held)

    async def __aenter__(self) -> Hold:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Shielded: a cancelled request must still give its reservation back.
        await asyncio.shield(self.release())


def limit_error(denial: Denial, waited: float | None = None) -> RateLimited:
    headers = {}
    retry = denial.retry_after_header()
    if retry is not None:
        headers["retry-after"] = retry
    suffix = f" (waited {waited:g} s in the queue)" if waited else ""
    error = RateLimited(
        f"Rate limit reached: {denial.message}{suffix}.",
        param=None,
        code=f"{denial.scope_kind}_{denial.limit}_exceeded",
        headers=headers,
    )
    error.denial = denial
    return error
