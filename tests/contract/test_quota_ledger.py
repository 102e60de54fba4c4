"""The QuotaLedger contract: what every quota ledger promises (see cache_service/quota/
ledger.py), written against the protocol alone. A new implementation (a Redis ledger shared
by replicas) is proved by adding one line to IMPLEMENTATIONS."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from redis.asyncio import Redis

from cache_service.backends.journal import SpendJournal
from cache_service.backends.jsonfile import JsonFile
from cache_service.quota.ledger import Held, QuotaLedger
from cache_service.quota.limits import Denial, Limits
from cache_service.quota.local import LocalLedger
from cache_service.quota.redis_ledger import RedisLedger
from tests.fakes import FakeClock

P = ("project", "default")
U = ("upstream", "primary")
G = ("global", "total")
SCOPES = (P, U, G)

LedgerFactory = Callable[[FakeClock, Path], QuotaLedger]
"""Makes an empty ledger on the given clock, with the given directory for any files."""


def _durable(clock: FakeClock, data: Path) -> LocalLedger:
    return LocalLedger(
        clock, snapshot_file=JsonFile(data / "spend.json"), journal=SpendJournal(data)
    )


IMPLEMENTATIONS = [
    pytest.param(lambda clock, _data: LocalLedger(clock), id="local"),
    pytest.param(_durable, id="local-journalled"),
    # Shared by replicas: its factory is given the test's Redis URL (see `ledger`). Leases
    # far longer than any test's clock moves, as in-process holds never expire.
    pytest.param("redis", id="redis"),
]


@pytest.fixture
def clock() -> FakeClock:
    # Noon UTC: calendar windows are not about to roll over under a test.
    return FakeClock(wall=datetime(2026, 11, 30, 12, tzinfo=UTC).timestamp())


@pytest.fixture(params=IMPLEMENTATIONS)
async def ledger(
    request: pytest.FixtureRequest, clock: FakeClock, tmp_path: Path
) -> AsyncIterator[QuotaLedger]:
    if request.param != "redis":
        factory: LedgerFactory = request.param
        yield factory(clock, tmp_path)
        return
    # Only this implementation needs a Redis (started on first use).
    client = Redis.from_url(request.getfixturevalue("redis_url"))
    redis_ledger = RedisLedger(client, replica_id="test", lease_s=10 * 86_400, clock=clock)
    yield redis_ledger
    await redis_ledger.close()


async def admit(ledger: QuotaLedger, tokens: int = 10, cost: float = 0.0) -> Held:
    result = await ledger.reserve(SCOPES, tokens, cost)
    assert isinstance(result, Held), result
    return result


async def test_reserve_hands_out_an_opaque_hold_of_the_estimate(ledger: QuotaLedger) -> None:
    a, b = await admit(ledger, 10, 0.5), await admit(ledger, 20, 0.25)
    assert a.id != b.id
    assert (a.tokens, a.cost_usd, set(a.scopes)) == (10, 0.5, set(SCOPES))
    snap = await ledger.snapshot()
    assert snap.in_flight == 2
    use = await ledger.scope_use(P)
    assert (use.requests.used, use.tokens.used) == (2, 30)
    assert use.daily_budget.held == pytest.approx(0.75)


async def test_admission_is_all_or_nothing_across_scopes(ledger: QuotaLedger) -> None:
    await ledger.configure(*U, Limits(rpm=1))
    await admit(ledger)
    before = {s: await ledger.scope_use(s) for s in (P, G)}
    denial = await ledger.reserve(SCOPES, 10, 0.0)
    assert isinstance(denial, Denial)
    assert (denial.scope, denial.limit) == (U, "rpm")
    # The scopes that would have admitted it took nothing.
    for scope, use in before.items():
        assert await ledger.scope_use(scope) == use


async def test_check_takes_nothing(ledger: QuotaLedger) -> None:
    await ledger.configure(*P, Limits(rpm=1))
    assert await ledger.check(SCOPES, 10, 0.0) is None
    assert (await ledger.scope_use(P)).requests.used == 0
    await admit(ledger)
    denial = await ledger.check(SCOPES, 10, 0.0)
    assert denial is not None and denial.limit == "rpm" and denial.retry_after_s > 0


async def test_requests_per_minute_admit_exactly_the_limit_per_window(
    ledger: QuotaLedger, clock: FakeClock
) -> None:
    await ledger.configure(*P, Limits(rpm=3))
    results = [await ledger.reserve(SCOPES, 1, 0.0) for _ in range(5)]
    assert [isinstance(r, Held) for r in results] == [True, True, True, False, False]
    clock.advance(60)
    assert isinstance(await ledger.reserve(SCOPES, 1, 0.0), Held)


async def test_tokens_per_minute_count_the_estimate_then_the_actual(ledger: QuotaLedger) -> None:
    await ledger.configure(*P, Limits(tpm=100))
    held = await admit(ledger, 80)
    assert isinstance(await ledger.reserve(SCOPES, 30, 0.0), Denial)
    await ledger.settle(held, 50, 0.0)  # less than estimated frees the difference at once
    assert (await ledger.scope_use(P)).tokens.used == 50
    assert isinstance(await ledger.reserve(SCOPES, 30, 0.0), Held)


async def test_budget_spent_plus_held_never_exceeds_the_limit(ledger: QuotaLedger) -> None:
    await ledger.configure(*P, Limits(daily_budget_usd=1.0))
    holds = [await ledger.reserve(SCOPES, 1, 0.3) for _ in range(4)]
    assert [isinstance(h, Held) for h in holds] == [True, True, True, False]
    denial = holds[3]
    assert isinstance(denial, Denial) and denial.limit == "daily_budget"
    use = (await ledger.scope_use(P)).daily_budget
    assert use.spent + use.held <= 1.0


async def test_settle_charges_the_actual_and_is_idempotent(ledger: QuotaLedger) -> None:
    held = await admit(ledger, 10, 0.5)
    await ledger.settle(held, 12, 0.2)
    await ledger.settle(held, 12, 0.2)
    await ledger.release(held)  # closed already: nothing happens
    use = await ledger.scope_use(P)
    assert use.daily_budget.spent == pytest.approx(0.2)
    assert use.daily_budget.held == 0
    assert use.tokens.used == 12
    assert (await ledger.snapshot()).in_flight == 0


async def test_release_frees_everything_and_is_idempotent(ledger: QuotaLedger) -> None:
    held = await admit(ledger, 10, 0.5)
    await ledger.release(held)
    await ledger.release(held)
    await ledger.settle(held, 10, 0.5)  # closed already: nothing is charged
    use = await ledger.scope_use(P)
    assert (use.requests.used, use.tokens.used) == (0, 0)
    assert use.daily_budget.spent == 0 and use.daily_budget.held == 0
    assert (await ledger.snapshot()).in_flight == 0


async def test_requests_and_tokens_per_day(ledger: QuotaLedger, clock: FakeClock) -> None:
    await ledger.configure(*P, Limits(rpd=2, tpd=1000))
    a = await admit(ledger, 100)
    await ledger.settle(a, 100, 0.0)
    clock.advance(120)  # past the minute windows, same UTC day
    await admit(ledger, 100)
    clock.advance(120)
    denial = await ledger.reserve(SCOPES, 100, 0.0)
    assert isinstance(denial, Denial) and denial.limit == "rpd"
    use = (await ledger.scope_use(P)).daily_requests
    assert (use.used, use.limit, use.remaining) == (2, 2, 0)


async def test_configure_changes_limits_and_keeps_usage(ledger: QuotaLedger) -> None:
    await ledger.configure(*P, Limits(rpm=10))
    await admit(ledger)
    await admit(ledger)
    await ledger.configure(*P, Limits(rpm=2))
    use = await ledger.scope_use(P)
    assert (use.limits.rpm, use.requests.used, use.requests.remaining) == (2, 2, 0)
    assert isinstance(await ledger.reserve(SCOPES, 1, 0.0), Denial)


async def test_a_limit_changed_at_run_time_outlives_the_same_configuration_applied_again(
    ledger: QuotaLedger,
) -> None:
    configured, changed = Limits(rpm=10), Limits(rpm=3)
    assert await ledger.configure(*P, configured) == configured
    assert await ledger.configure(*P, changed, at_run_time=True) == changed
    # A replica restarting (a rolling deploy) applies its configuration again.
    assert await ledger.configure(*P, configured) == changed
    assert (await ledger.scope_use(P)).limits == changed
    # A changed configuration is newer than the operator's change, and wins; applied
    # again, it stays.
    assert await ledger.configure(*P, Limits(rpm=20)) == Limits(rpm=20)
    assert await ledger.configure(*P, Limits(rpm=20)) == Limits(rpm=20)
    assert (await ledger.scope_use(P)).limits == Limits(rpm=20)
    # Run-time changes still replace each other.
    await ledger.configure(*P, changed, at_run_time=True)
    assert await ledger.configure(*P, Limits(rpm=4), at_run_time=True) == Limits(rpm=4)


async def test_a_limit_set_at_run_time_before_any_configuration_is_kept_by_the_first(
    ledger: QuotaLedger,
) -> None:
    """An unlisted project gets the "default" project's limits on its first request: an
    operator's limits for it, set before that request, stay."""
    await ledger.configure(*P, Limits(rpm=3), at_run_time=True)
    assert await ledger.configure(*P, Limits(rpm=10)) == Limits(rpm=3)
    assert await ledger.configure(*P, Limits(rpm=10)) == Limits(rpm=3)
    assert await ledger.configure(*P, Limits(rpm=11)) == Limits(rpm=11)


async def test_a_limit_changed_at_run_time_outlives_a_restart_of_the_process(
    clock: FakeClock, tmp_path: Path
) -> None:
    first = _durable(clock, tmp_path)
    await first.configure(*P, Limits(rpm=10))
    await first.configure(*P, Limits(rpm=3), at_run_time=True)
    first.close()
    second = _durable(clock, tmp_path)
    assert (await second.scope_use(P)).limits == Limits(rpm=3)
    assert await second.configure(*P, Limits(rpm=10)) == Limits(rpm=3)  # the start's
    assert await second.configure(*P, Limits(rpm=20)) == Limits(rpm=20)  # a changed config
    second.close()
    assert json.loads((tmp_path / "spend.json").read_text())["run_time_limits"] == []
    # A spend file whose rows are malformed still starts, with the configuration's limits.
    saved = json.loads((tmp_path / "spend.json").read_text())
    saved["run_time_limits"] = [{"kind": "project", "name": "default", "limits": {"rpx": 1}}]
    (tmp_path / "spend.json").write_text(json.dumps(saved))
    third = _durable(clock, tmp_path)
    assert await third.configure(*P, Limits(rpm=20)) == Limits(rpm=20)
    third.close()


async def test_snapshot_lists_every_scope_typed_and_json_ready(ledger: QuotaLedger) -> None:
    await ledger.configure(*P, Limits(rpm=5, daily_budget_usd=2.0))
    await admit(ledger, 10, 0.5)
    snap = await ledger.snapshot()
    assert {(s.kind, s.name) for s in snap.scopes} >= set(SCOPES)
    project = next(s for s in snap.scopes if (s.kind, s.name) == P)
    assert project.daily_budget.limit == 2.0
    as_json = snap.as_json()
    scope = next(s for s in as_json["scopes"] if (s["kind"], s["name"]) == P)
    assert scope["requests"]["limit"] == 5
    assert scope["daily_budget"]["used"] == pytest.approx(0.5)


async def test_ratelimit_headers_for_per_minute_limits(ledger: QuotaLedger) -> None:
    await ledger.configure(*P, Limits(rpm=5, tpm=1000))
    await admit(ledger, 100)
    headers = await ledger.ratelimit_headers(P)
    assert headers["x-ratelimit-limit-requests"] == "5"
    assert headers["x-ratelimit-remaining-requests"] == "4"
    assert headers["x-ratelimit-remaining-tokens"] == "900"
    assert await ledger.ratelimit_headers(G) == {}  # no per-minute limits there
