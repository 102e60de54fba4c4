"""The Hold: an admitted call's reservation is closed exactly once, whatever path the
request takes, so no path can leak held budget."""

from __future__ import annotations

import asyncio

import pytest

from cache_service.pricing import NO_USAGE, Price, Usage
from cache_service.quota.gate import Hold, QuotaGate
from cache_service.quota.local import LocalLedger
from tests.fakes import FakeClock

P = ("project", "p")
PRICE = Price(1.0, 2.0, cached_input=0.1)  # USD per million tokens


async def held(ledger: LocalLedger, cost: float = 0.01) -> Hold:
    gate = QuotaGate(ledger, on_limit="reject", max_wait_s=1)
    return Hold(gate, await gate.acquire((P,), 1000, cost, 1), PRICE)


async def spent(ledger: LocalLedger) -> tuple[float, float, int]:
    use = await ledger.scope_use(P)
    return use.daily_budget.spent, use.daily_budget.held, (await ledger.snapshot()).in_flight


async def test_settle_charges_the_usage_at_the_called_models_price() -> None:
    ledger = LocalLedger(FakeClock())
    hold = await held(ledger)
    assert await hold.settle(Usage(1_000_000, 500_000)) == pytest.approx(2.0)
    assert await spent(ledger) == pytest.approx((2.0, 0, 0))


async def test_settle_charges_cached_prompt_tokens_at_the_cached_price() -> None:
    ledger = LocalLedger(FakeClock())
    hold = await held(ledger)
    # 1M prompt tokens of which 800k cached: 200k at $1 + 800k at $0.10, no completion.
    assert await hold.settle(Usage(1_000_000, 0, cached=800_000)) == pytest.approx(0.28)
    assert await spent(ledger) == pytest.approx((0.28, 0, 0))


async def test_an_answer_without_usage_is_charged_the_estimate() -> None:
    ledger = LocalLedger(FakeClock())
    hold = await held(ledger, cost=0.25)
    assert await hold.settle(NO_USAGE) == 0.25
    assert await spent(ledger) == (0.25, 0, 0)


async def test_a_hold_closes_once() -> None:
    ledger = LocalLedger(FakeClock())
    hold = await held(ledger)
    await hold.settle(Usage(10, 10))
    assert await hold.settle(Usage(10, 10)) == 0.0
    await hold.release()
    async with hold:
        pass
    assert (await spent(ledger))[2] == 0
    assert (await ledger.scope_use(P)).requests.used == 1  # settled: the request counts


async def test_leaving_the_block_without_settling_releases() -> None:
    ledger = LocalLedger(FakeClock())
    hold = await held(ledger)
    with pytest.raises(RuntimeError):
        async with hold:
            raise RuntimeError("the answer could not be read")
    assert hold.closed
    assert await spent(ledger) == (0, 0, 0)
    assert (await ledger.scope_use(P)).requests.used == 0  # released: it never counted


async def test_a_cancelled_request_gives_its_hold_back() -> None:
    ledger = LocalLedger(FakeClock())
    hold = await held(ledger)
    started = asyncio.Event()

    async def request() -> None:
        async with hold:
            started.set()
            await asyncio.sleep(10)

    task = asyncio.create_task(request())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await spent(ledger) == (0, 0, 0)
