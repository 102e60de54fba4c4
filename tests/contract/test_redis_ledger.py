"""What only the Redis ledger has to prove beyond the ledger contract: that its Lua scripts
decide exactly as the in-process ledger does, that admission stays exact when replicas race,
and that a dead replica's holds are charged once their leases run out."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis

from cache_service.quota.alerts import AlertSink
from cache_service.quota.ledger import Held
from cache_service.quota.limits import Denial, Limits
from cache_service.quota.local import LocalLedger
from cache_service.quota.redis_ledger import RedisLedger
from tests.fakes import FakeClock

P = ("project", "a")
U = ("upstream", "b")
G = ("global", "total")
SCOPES = (P, U, G)

# Two minutes before midnight at the end of a month: sequences cross a UTC day and month.
START = datetime(2026, 11, 30, 23, 58, tzinfo=UTC).timestamp()
NEVER = 1e9  # a lease no test outlives: in-process holds never expire

_prefixes = itertools.count()


def fresh_prefix() -> str:
    return f"t{next(_prefixes)}"


# ----------------------------------------------------------------------- same decisions

# Times move in sixteenths of a second, so that the wall clock (which the Redis ledger
# reads) and the monotonic one (the in-process sliding windows) hold them exactly and
# agree to the last bit on every window edge and every wait.
steps = st.one_of(
    st.sampled_from([0.0, 1.0, 30.0, 59.9375, 60.0, 60.0625, 600.0]),
    st.integers(0, 90 * 16).map(lambda k: k / 16),
)


def limits(zero: bool) -> st.SearchStrategy[Limits]:
    """Mostly limits that admit something and fill up, or none; zero (refuse everything)
    only if `zero`, as a zero anywhere would decide most reserves."""

    def limit(low: int, high: int, scale: float = 1) -> st.SearchStrategy[float | None]:
        values = st.integers(low, high).map(lambda v: v * scale if scale != 1 else v)
        return st.one_of(st.none(), values, *([st.just(0)] if zero else []))

    return st.builds(
        Limits,
        rpm=limit(1, 5),
        tpm=limit(100, 800),
        daily_budget_usd=limit(10, 120, 0.01),
        monthly_budget_usd=limit(10, 200, 0.01),
        rpd=limit(1, 10),
        tpd=limit(200, 2000),
    )


scope_lists = st.lists(st.sampled_from(SCOPES), min_size=1, max_size=4)
cents = st.integers(0, 30).map(lambda c: c / 100)
edges = st.tuples(st.just("edge"), st.integers(0, 3), st.sampled_from([-1 / 16, 0.0, 1 / 16]))
reserve = st.tuples(st.just("reserve"), scope_lists, st.integers(0, 200), cents)
operations = st.lists(
    st.one_of(
        st.tuples(st.just("configure"), st.sampled_from(SCOPES), limits(zero=True)),
        st.lists(reserve, min_size=1, max_size=5),  # a burst: limits matter when full
        reserve,
        st.tuples(st.just("check"), scope_lists, st.integers(0, 200), cents),
        st.tuples(st.just("settle"), st.integers(0, 50), st.integers(0, 400), cents),
        st.tuples(st.just("release"), st.integers(0, 50)),
        st.tuples(st.just("advance"), steps),
        # To a window edge of one of the admissions still counting, where an off-by-a-little
        # window or wait would show.
        edges,
        edges,
    ),
    min_size=4,
    max_size=30,
).map(lambda items: [o for i in items for o in (i if isinstance(i, list) else [i])])


async def run_both(url: str, initial: list[Limits], ops: list[tuple[object, ...]]) -> None:
    clock = FakeClock(wall=START)
    local = LocalLedger(clock)
    remote = RedisLedger(
        Redis.from_url(url), prefix=fresh_prefix(), replica_id="r", lease_s=NEVER, clock=clock
    )
    open_pairs: list[tuple[Held, Held]] = []
    admitted: list[float] = []
    try:
        for scope, lim in zip(SCOPES, initial, strict=True):
            await local.configure(*scope, lim)
            await remote.configure(*scope, lim)
        for op in ops:
            match op:
                case ("configure", (kind, name), Limits() as lim):
                    await local.configure(str(kind), str(name), lim)
                    await remote.configure(str(kind), str(name), lim)
                case ("reserve", list(scopes), int(tokens), float(cost)):
                    mine = await local.reserve(scopes, tokens, cost)
                    theirs = await remote.reserve(scopes, tokens, cost)
                    if isinstance(mine, Denial):
                        assert theirs == mine
                    else:
                        assert isinstance(theirs, Held), (mine, theirs)
                        assert (theirs.scopes, theirs.tokens) == (mine.scopes, mine.tokens)
                        open_pairs.append((mine, theirs))
                        admitted.append(clock.wall)
                case ("check", list(scopes), int(tokens), float(cost)):
                    assert await remote.check(scopes, tokens, cost) == await local.check(
                        scopes, tokens, cost
                    )
                case ("settle", int(index), int(tokens), float(cost)) if open_pairs:
                    mine, theirs = open_pairs.pop(index % len(open_pairs))
                    await local.settle(mine, tokens, cost)
                    await remote.settle(theirs, tokens, cost)
                case ("release", int(index)) if open_pairs:
                    mine, theirs = open_pairs.pop(index % len(open_pairs))
                    await local.release(mine)
                    await remote.release(theirs)
                case ("advance", float(seconds)):
                    clock.advance(seconds)
                case ("edge", int(index), float(offset)):
                    counting = [at for at in admitted if at + 60 > clock.wall]
                    if counting:
                        edge = counting[min(index, len(counting) - 1)] + 60 + offset
                        clock.advance(max(0.0, edge - clock.wall))
                case _:
                    continue
            # Everything either reports, to the last float: windows, holds, resets.
            assert (await remote.snapshot()).as_json() == (await local.snapshot()).as_json()
    finally:
        await remote.close()


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(initial=st.lists(limits(zero=False), min_size=3, max_size=3), ops=operations)
def test_lua_ledger_decides_as_the_in_process_ledger(
    redis_url: str, initial: list[Limits], ops: list[tuple[object, ...]]
) -> None:
    """Same admissions, same denials (scope, limit, wait, wording) and same snapshots on the
    same sequences; each example under a fresh key prefix."""
    asyncio.run(run_both(redis_url, initial, ops))


# ----------------------------------------------------------------------- replicas racing


@pytest.fixture
async def replicas(redis_url: str) -> AsyncIterator[list[RedisLedger]]:
    """Four replicas on Redis's own clock, each with its own connection pool."""
    ledgers = [RedisLedger(Redis.from_url(redis_url), replica_id=f"replica-{i}") for i in range(4)]
    yield ledgers
    for ledger in ledgers:
        await ledger.close()


async def burst(ledgers: list[RedisLedger], cost: float) -> int:
    attempts = [ledger.reserve(SCOPES, 10, cost) for ledger in ledgers for _ in range(50)]
    results = await asyncio.gather(*attempts)
    return sum(isinstance(r, Held) for r in results)


async def test_a_burst_from_four_replicas_admits_exactly_rpm(replicas: list[RedisLedger]) -> None:
    await replicas[0].configure(*U, Limits(rpm=37))
    assert await burst(replicas, 0.0) == 37
    use = await replicas[1].scope_use(U)
    assert (use.requests.used, use.requests.remaining) == (37, 0)


async def test_a_burst_from_four_replicas_spends_exactly_the_budget(
    replicas: list[RedisLedger],
) -> None:
    await replicas[0].configure(*P, Limits(daily_budget_usd=1.0))
    assert await burst(replicas, 0.1) == 10
    use = (await replicas[2].scope_use(P)).daily_budget
    assert (use.held, use.spent) == pytest.approx((1.0, 0))


# ----------------------------------------------------------------------- dead replicas


async def test_a_dead_replicas_holds_are_charged_at_their_estimate_after_the_lease(
    redis_url: str,
) -> None:
    clock = FakeClock(wall=START - 3600)
    dead, live = (
        RedisLedger(Redis.from_url(redis_url), replica_id=name, lease_s=5, clock=clock)
        for name in ("dead", "live")
    )
    try:
        await live.configure(*P, Limits(rpm=10, daily_budget_usd=1.0))
        orphans = [await dead.reserve(SCOPES, 100, 0.2) for _ in range(3)]
        mine = await live.reserve(SCOPES, 50, 0.1)
        assert isinstance(mine, Held) and all(isinstance(h, Held) for h in orphans)

        clock.advance(3)
        await live.renew()  # the live replica's loop; the dead one's stopped
        clock.advance(3)  # past the dead holds' lease, not the renewed one
        snap = await live.snapshot()
        assert snap.in_flight == 1
        use = await live.scope_use(P)
        assert use.daily_budget.spent == pytest.approx(0.6)  # charged as estimated
        assert use.daily_budget.held == pytest.approx(0.1)
        assert (use.daily_requests.settled, use.daily_tokens.settled) == (3, 300)
        assert (use.requests.used, use.tokens.used) == (4, 350)  # still in the minute

        # The dead replica's late settle (or release) finds nothing to close.
        for held in orphans:
            assert isinstance(held, Held)
            await dead.settle(held, 1, 0.01)
            await dead.release(held)
        assert await live.scope_use(P) == use

        await live.settle(mine, 40, 0.05)
        use = await live.scope_use(P)
        assert (use.daily_budget.spent, use.daily_budget.held) == pytest.approx((0.65, 0))
        assert (await live.snapshot()).in_flight == 0
    finally:
        await dead.close()
        await live.close()


async def test_renewing_replicas_keep_their_holds_on_redis_time(redis_url: str) -> None:
    """Production timing: Redis TIME, a short lease and the real renewal loop."""
    dead, live = (
        RedisLedger(Redis.from_url(redis_url), replica_id=name, lease_s=0.3)
        for name in ("dead", "live")
    )
    renewal = asyncio.create_task(live.renew_forever())
    try:
        orphan = await dead.reserve(SCOPES, 100, 0.2)
        mine = await live.reserve(SCOPES, 100, 0.2)
        assert isinstance(orphan, Held) and isinstance(mine, Held)
        await asyncio.sleep(0.6)  # two leases
        snap = await live.snapshot()
        assert snap.in_flight == 1
        use = await live.scope_use(P)
        assert (use.daily_budget.spent, use.daily_budget.held) == pytest.approx((0.2, 0.2))
        await live.release(mine)
        assert (await live.snapshot()).in_flight == 0
    finally:
        renewal.cancel()
        with pytest.raises(asyncio.CancelledError):
            await renewal
        await dead.close()
        await live.close()


async def test_a_replica_restarted_under_its_name_never_reuses_a_reservation_id(
    redis_url: str,
) -> None:
    """Ids carry an incarnation: the restarted replica's first reservation must not take
    the place of its previous life's first one, still in the window."""
    before = RedisLedger(Redis.from_url(redis_url), replica_id="same")
    after = RedisLedger(Redis.from_url(redis_url), replica_id="same")
    try:
        await before.configure(*P, Limits(rpm=2))
        a = await before.reserve(SCOPES, 1, 0.0)
        assert isinstance(a, Held)
        await before.settle(a, 1, 0.0)
        b = await after.reserve(SCOPES, 1, 0.0)
        assert isinstance(b, Held) and b.id != a.id
        await after.settle(b, 1, 0.0)
        assert isinstance(await after.reserve(SCOPES, 1, 0.0), Denial)
        assert (await after.scope_use(P)).requests.used == 2
    finally:
        await before.close()
        await after.close()


# ----------------------------------------------------------------------- alerts


async def test_a_threshold_is_told_once_by_the_whole_fleet(redis_url: str) -> None:
    told: list[tuple[str, dict[str, object]]] = []

    def sink(replica: str) -> AlertSink:
        async def send(alert: dict[str, object]) -> None:
            told.append((replica, alert))

        return send

    clock = FakeClock(wall=START - 3600)
    a, b = (
        RedisLedger(Redis.from_url(redis_url), replica_id=name, clock=clock, on_alert=sink(name))
        for name in ("a", "b")
    )
    try:
        await a.configure(*P, Limits(daily_budget_usd=1.0))

        async def spend(ledger: RedisLedger, usd: float) -> None:
            held = await ledger.reserve(SCOPES, 10, usd)
            assert isinstance(held, Held)
            await ledger.settle(held, 10, usd)
            await asyncio.sleep(0)  # the sink runs as a task

        await spend(a, 0.5)
        await spend(b, 0.35)  # 85 %: b crosses 80 %
        await spend(a, 0.05)  # 90 %: a sees 80 % crossed, but b told it already
        await spend(a, 0.05)  # 95 %: a crosses 95 %
        await spend(b, 0.05)  # 100 %: b sees 95 % crossed, told already
        assert [(who, alert["limit"], alert["threshold"]) for who, alert in told] == [
            ("b", "daily_budget", 0.8),
            ("a", "daily_budget", 0.95),
        ]
        assert told[0][1]["message"] == (
            "project 'a' has used 85% of its daily budget for 2026-11-30 (0.85 of 1)"
        )
    finally:
        await a.close()
        await b.close()
