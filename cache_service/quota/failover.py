"""A shared quota ledger (Redis) that keeps its promises while it cannot be reached.

Every call goes to the shared ledger while it answers. When it does not (a connection or
timeout error), the request is admitted by this replica's own in-process ledger under the
operator's policy (`redis_down_quota`):

- ``share`` (the default): each replica enforces its share of every limit, the limit ÷ the
  replicas last seen alive, and for calendar limits (budgets, rpd, tpd) its share of what
  was left of them when the shared ledger was last read. Replicas that cannot talk to
  each other then still stay within the fleet's limits together, at the price of using
  only part of them.
- ``reject``: misses are refused with 503 `quota_unavailable` (a cache that must never
  overspend).
- ``allow``: misses go upstream unmetered (a cache that must never refuse).

What was settled locally is booked into the shared ledger once it answers again (each
charge once, by its reservation id), so the day's spend there stays whole; then sharing
resumes, without a restart. Reservations made by the shared ledger are settled there; if
it is away at that moment, its lease expiry counts them at their estimate (the crash rule).
A replica that dies while the shared ledger is away loses its unbooked charges: they were
only in its memory.
"""

from __future__ import annotations

import logging
import math
import secrets
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Literal, Protocol

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from cache_service.errors import QuotaUnavailable
from cache_service.protocols import Clock
from cache_service.quota.ledger import Booking, Held, QuotaLedger
from cache_service.quota.limits import Denial, Limits, Scope
from cache_service.quota.local import LocalLedger
from cache_service.quota.usage import QuotaSnapshot, ScopeUse

log = logging.getLogger("cache_service.quota")

Policy = Literal["share", "reject", "allow"]

UNREACHABLE = (RedisConnectionError, RedisTimeoutError, OSError)
"""What "the shared ledger is away" looks like. Anything else is a bug and propagates."""

_LOCAL = "local:"


class SharedLedger(QuotaLedger, Protocol):
    async def book(self, bookings: Sequence[Booking]) -> None:
        """Add charges made elsewhere, as settled requests, once each by id."""
        ...


def share_of(limits: Limits, replicas: int, used: ScopeUse | None) -> Limits:
    """One replica's part of a scope's limits while replicas cannot coordinate: rates ÷
    replicas; calendar limits, what was left of them ÷ replicas (rounded down: the parts
    must not add up to more than the whole)."""
    n = max(1, replicas)

    def part(limit: int | None, spent: float = 0) -> int | None:
        return None if limit is None else max(0, math.floor((limit - spent) / n))

    def money(limit: float | None, spent: float = 0.0) -> float | None:
        return None if limit is None else max(0.0, (limit - spent) / n)

    return Limits(
        rpm=part(limits.rpm),
        tpm=part(limits.tpm),
        daily_budget_usd=money(limits.daily_budget_usd, used.daily_budget.used if used else 0),
        monthly_budget_usd=money(
            limits.monthly_budget_usd, used.monthly_budget.used if used else 0
        ),
        rpd=part(limits.rpd, used.daily_requests.used if used else 0),
        tpd=part(limits.tpd, used.daily_tokens.used if used else 0),
    )


class FailoverLedger:
    def __init__(
        self,
        shared: SharedLedger,
        clock: Clock,
        *,
        policy: Policy,
        replicas: Callable[[], int],
        replica_id: str,
        retry_s: float = 1.0,
    ) -> None:
        """`replicas()`: how many replicas were last seen alive (this one included)."""
        # Bookings are deduplicated by id fleet-wide: local ids ("1", "2"...) repeat on
        # every replica and at every start, so they are qualified by both.
        self._id_prefix = f"{_LOCAL}{replica_id}.{secrets.token_hex(4)}."
        self.shared = shared
        self.local = LocalLedger(clock)
        self.clock = clock
        self.policy = policy
        self.replicas = replicas
        self.retry_s = retry_s
        self.down_since: float | None = None
        self._next_try = 0.0
        self._limits: dict[Scope, Limits] = {}
        self._unconfigured: dict[Scope, bool] = {}
        """Scopes configured while the shared ledger was away: whether at run time."""
        self._last_use: dict[Scope, ScopeUse] = {}
        self._open: dict[str, Held] = {}
        self._unbooked: list[Booking] = []
        self.booked = 0

    # ------------------------------------------------------------------ which ledger

    async def _shared_ok(self) -> bool:
        """Whether to try the shared ledger now: always while it answers; once per
        `retry_s` while it does not, first booking what was charged locally meanwhile."""
        if self.down_since is None:
            return True
        now = self.clock.monotonic()
        if now < self._next_try:
            return False
        self._next_try = now + self.retry_s
        try:
            for scope, at_run_time in list(self._unconfigured.items()):
                self._limits[scope] = await self.shared.configure(
                    *scope, self._limits[scope], at_run_time=at_run_time
                )
                del self._unconfigured[scope]
            if self._unbooked:
                await self.shared.book(self._unbooked)
                self.booked += len(self._unbooked)
                self._unbooked.clear()
        except UNREACHABLE:
            return False
        log.warning("shared quota ledger is back", extra={"down_s": now - self.down_since})
        self.down_since = None
        return True

    async def _went_down(self, error: BaseException) -> None:
        if self.down_since is None:
            now = self.clock.monotonic()
            self.down_since = now
            self._next_try = now + self.retry_s
            log.warning(
                "shared quota ledger unreachable; local policy",
                extra={"policy": self.policy, "replicas": self.replicas(), "error": str(error)},
            )
            if self.policy == "share":
                for scope, limits in self._limits.items():
                    share = share_of(limits, self.replicas(), self._last_use.get(scope))
                    await self.local.configure(*scope, share)

    # ------------------------------------------------------------------ the ledger protocol

    async def reserve(self, scopes: Sequence[Scope], tokens: int, cost_usd: float) -> Held | Denial:
        if await self._shared_ok():
            try:
                return await self.shared.reserve(scopes, tokens, cost_usd)
            except UNREACHABLE as e:
                await self._went_down(e)
        if self.policy == "reject":
            raise QuotaUnavailable(
                "the shared quota ledger is unreachable; misses are refused until it is back",
                headers={"retry-after": str(max(1, math.ceil(self.retry_s)))},
            )
        result = await self.local.reserve(scopes, tokens, cost_usd)
        if isinstance(result, Denial):
            return result
        held = replace(result, id=self._id_prefix + result.id)
        self._open[held.id] = result
        return held

    async def check(self, scopes: Sequence[Scope], tokens: int, cost_usd: float) -> Denial | None:
        if await self._shared_ok():
            try:
                return await self.shared.check(scopes, tokens, cost_usd)
            except UNREACHABLE as e:
                await self._went_down(e)
        return await self.local.check(scopes, tokens, cost_usd)

    async def settle(self, held: Held, tokens: int, cost_usd: float) -> None:
        inner = self._open.pop(held.id, None)
        if inner is not None:
            await self.local.settle(inner, tokens, cost_usd)
            self._unbooked.append(
                Booking(held.id, held.scopes, max(0, tokens), max(0.0, cost_usd), self.clock.now())
            )
            return
        if held.id.startswith(_LOCAL):
            return  # closed already
        try:
            await self.shared.settle(held, tokens, cost_usd)
        except UNREACHABLE as e:
            # Its lease runs out and it is counted at its estimate: never under-counted.
            await self._went_down(e)

    async def release(self, held: Held) -> None:
        inner = self._open.pop(held.id, None)
        if inner is not None:
            await self.local.release(inner)
            return
        if held.id.startswith(_LOCAL):
            return
        try:
            await self.shared.release(held)
        except UNREACHABLE as e:
            await self._went_down(e)

    async def configure(
        self, kind: str, name: str, limits: Limits, *, at_run_time: bool = False
    ) -> Limits:
        scope = (kind, name)
        self._limits[scope] = limits
        try:
            self._limits[scope] = await self.shared.configure(
                kind, name, limits, at_run_time=at_run_time
            )
            self._unconfigured.pop(scope, None)
        except UNREACHABLE as e:
            # Applied when the shared ledger is back, as what it was: a run-time change or
            # the configuration's, which the shared ledger may keep an operator's over.
            self._unconfigured[scope] = at_run_time
            await self._went_down(e)
        if self.policy == "share":
            share = share_of(self._limits[scope], self.replicas(), self._last_use.get(scope))
            await self.local.configure(kind, name, share)
        return self._limits[scope]

    async def scope_use(self, scope: Scope) -> ScopeUse:
        if await self._shared_ok():
            try:
                use = await self.shared.scope_use(scope)
                self._last_use[scope] = use
                return use
            except UNREACHABLE as e:
                await self._went_down(e)
        return await self.local.scope_use(scope)

    async def snapshot(self) -> QuotaSnapshot:
        if await self._shared_ok():
            try:
                snap = await self.shared.snapshot()
                for use in snap.scopes:
                    self._last_use[(use.kind, use.name)] = use
                return snap
            except UNREACHABLE as e:
                await self._went_down(e)
        return await self.local.snapshot()

    async def ratelimit_headers(self, scope: Scope) -> dict[str, str]:
        if await self._shared_ok():
            try:
                return await self.shared.ratelimit_headers(scope)
            except UNREACHABLE as e:
                await self._went_down(e)
        return await self.local.ratelimit_headers(scope)

    async def remember_use(self) -> None:
        """Read every scope's use from the shared ledger (call it now and then): what
        `share` divides when the shared ledger goes away."""
        await self.snapshot()
