"""The fail-over ledger: a real Redis ledger that goes away (the server stopped) and comes
back. While it is away each replica admits within its share of the limits; what it charged
meanwhile is booked into Redis once, when Redis answers again."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from cache_service.errors import QuotaUnavailable
from cache_service.quota.failover import FailoverLedger, Policy, share_of
from cache_service.quota.ledger import Booking, Held
from cache_service.quota.limits import Denial, Limits
from cache_service.quota.redis_ledger import RedisLedger
from tests.fakes import FakeClock
from tests.redis_server import RedisServer

P = ("project", "default")
G = ("global", "total")
SCOPES = (P, G)


def test_a_replicas_share_never_adds_up_to_more_than_the_whole() -> None:
    limits = Limits(rpm=10, tpm=1000, daily_budget_usd=1.0, rpd=7)
    share = share_of(limits, 3, None)
    assert (share.rpm, share.tpm, share.rpd) == (3, 333, 2)
    assert share.daily_budget_usd == pytest.approx(1 / 3)
    assert share.monthly_budget_usd is None and share.tpd is None
    assert share_of(limits, 0, None).rpm == 10  # never divided by less than one replica


@pytest.fixture
async def ledgers(
    redis_server: RedisServer, redis_url: str
) -> AsyncIterator[tuple[RedisLedger, FakeClock]]:
    clock = FakeClock()
    client = Redis.from_url(
        redis_url, socket_timeout=0.5, socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0)
    )
    shared = RedisLedger(client, replica_id="r1", lease_s=30)
    yield shared, clock
    if redis_server.process is None:
        redis_server.start()  # a failed test must not leave the session without Redis
    await shared.close()


def failover(
    shared: RedisLedger, clock: FakeClock, policy: Policy, replica: str = "r1"
) -> FailoverLedger:
    return FailoverLedger(
        shared, clock, policy=policy, replicas=lambda: 2, replica_id=replica, retry_s=1.0
    )


async def test_share_policy_admits_a_share_then_books_it_when_redis_returns(
    ledgers: tuple[RedisLedger, FakeClock], redis_server: RedisServer
) -> None:
    shared, clock = ledgers
    ledger = failover(shared, clock, "share")
    await ledger.configure(*P, Limits(rpm=10))
    first = await ledger.reserve(SCOPES, 5, 0.01)
    assert isinstance(first, Held)
    await ledger.settle(first, 5, 0.01)
    await ledger.remember_use()

    redis_server.stop()
    try:
        admitted = [await ledger.reserve(SCOPES, 5, 0.01) for _ in range(8)]
        # Two replicas alive: this one's share of rpm 10 is 5, whatever it admitted before.
        assert [isinstance(h, Held) for h in admitted] == [True] * 5 + [False] * 3
        assert isinstance(admitted[-1], Denial) and admitted[-1].limit == "rpm"
        for held in admitted[:5]:
            assert isinstance(held, Held)
            await ledger.settle(held, 4, 0.02)
        assert ledger.down_since is not None
    finally:
        redis_server.start()

    clock.advance(1.5)  # past retry_s: the next call tries Redis again, books, resumes
    use = await ledger.scope_use(P)
    assert ledger.down_since is None and ledger.booked == 5
    assert use.daily_requests.used == 6
    assert use.daily_budget.spent == pytest.approx(0.01 + 5 * 0.02)
    assert use.requests.used == 6  # the booked requests count in the shared window too
    # Booking is once per id: a second pass adds nothing.
    await shared.book([Booking("again", SCOPES, 1, 0.0, 0.0)] * 2)
    assert (await ledger.scope_use(P)).daily_requests.used == 7


async def test_reject_policy_answers_503_while_redis_is_away(
    ledgers: tuple[RedisLedger, FakeClock], redis_server: RedisServer
) -> None:
    shared, clock = ledgers
    ledger = failover(shared, clock, "reject")
    redis_server.stop()
    try:
        with pytest.raises(QuotaUnavailable) as caught:
            await ledger.reserve(SCOPES, 1, 0.0)
        assert caught.value.status == 503 and caught.value.headers["retry-after"] == "1"
    finally:
        redis_server.start()
    clock.advance(1.5)
    assert isinstance(await ledger.reserve(SCOPES, 1, 0.0), Held)


async def test_allow_policy_admits_everything_and_still_books_it(
    ledgers: tuple[RedisLedger, FakeClock], redis_server: RedisServer
) -> None:
    shared, clock = ledgers
    ledger = failover(shared, clock, "allow")
    await ledger.configure(*P, Limits(rpm=1))
    redis_server.stop()
    try:
        held = [await ledger.reserve(SCOPES, 1, 0.0) for _ in range(3)]
        assert all(isinstance(h, Held) for h in held)
        for h in held:
            assert isinstance(h, Held)
            await ledger.settle(h, 1, 0.0)
    finally:
        redis_server.start()
    clock.advance(1.5)
    use = await ledger.scope_use(P)
    assert use.daily_requests.used == 3 and use.requests.remaining == 0
    assert math.isclose(use.daily_budget.spent, 0.0)


async def test_two_replicas_bookings_both_count(
    ledgers: tuple[RedisLedger, FakeClock], redis_server: RedisServer, redis_url: str
) -> None:
    """Each replica numbers its local reservations from 1: booked by those numbers alone,
    the second replica's charges would be taken for repeats of the first's and dropped."""
    shared, clock = ledgers
    other = RedisLedger(Redis.from_url(redis_url), replica_id="r2")
    try:
        one, two = failover(shared, clock, "allow", "r1"), failover(other, clock, "allow", "r2")
        redis_server.stop()
        try:
            for ledger in (one, two):
                for _ in range(3):
                    held = await ledger.reserve(SCOPES, 1, 0.0)
                    assert isinstance(held, Held)
                    await ledger.settle(held, 1, 0.0)
        finally:
            redis_server.start()
        clock.advance(1.5)
        await one.remember_use()
        await two.remember_use()
        assert (one.booked, two.booked) == (3, 3)
        assert (await one.scope_use(P)).daily_requests.used == 6
    finally:
        await other.close()


async def test_a_replica_started_while_redis_is_away_keeps_the_operators_limits_after(
    ledgers: tuple[RedisLedger, FakeClock], redis_server: RedisServer
) -> None:
    shared, clock = ledgers
    running = failover(shared, clock, "share", "r0")
    await running.configure(*P, Limits(rpm=10))
    await running.configure(*P, Limits(rpm=4), at_run_time=True)
    redis_server.stop()
    try:
        restarted = failover(shared, clock, "share", "r1")
        # All it can know while Redis is away: its configuration (its share is of that).
        assert await restarted.configure(*P, Limits(rpm=10)) == Limits(rpm=10)
    finally:
        redis_server.start()
    clock.advance(1.0)  # its next try at the shared ledger
    use = await restarted.scope_use(P)
    assert restarted.down_since is None
    # Applied once Redis answered, as a configuration: the operator's change is newer.
    assert use.limits == Limits(rpm=4)
    assert await restarted.configure(*P, Limits(rpm=10)) == Limits(rpm=4)
