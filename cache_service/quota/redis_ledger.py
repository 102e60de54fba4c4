"""The quota ledger shared by a fleet of replicas: the same counts and guarantees as the
in-process ledger (``manager.py`` states them), kept in Redis and changed only by one Lua
script per operation (``redis_scripts.py``), so admissions from every replica are checked
and taken atomically against one log.

Time is Redis ``TIME`` for both the sliding windows and the calendar windows (every replica
reads one clock), never stepping back below the latest time a script used. A test passes a
``Clock`` instead, whose ``now()`` each script receives as an argument.

Holds are leased: a reservation carries an expiry ``lease_s`` after its admission, which
:meth:`RedisLedger.renew_forever` pushes forward for this replica's open reservations. A
replica that dies stops renewing; the next reserve or snapshot anywhere reaps its holds,
charging each at its estimate (upstream may have billed it: the in-process crash rule), and
a late settle of a reaped hold is a no-op. Reservation ids are ``<replica_id>.<seq>``, so a
replica's ids must not repeat: give each process incarnation its own ``replica_id``.

Redis errors (``ConnectionError``, ``TimeoutError``...) propagate from every ledger method:
what to do without Redis is the caller's policy.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import math
import secrets
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from typing import Any, cast

from redis.asyncio import Redis
from redis.exceptions import RedisError

from cache_service.protocols import Clock
from cache_service.quota import redis_limits, redis_scripts
from cache_service.quota.alerts import Alert, AlertSink, AlertTracker, payload
from cache_service.quota.ledger import Booking, Held
from cache_service.quota.limits import Denial, LimitName, Limits, Scope, worst
from cache_service.quota.money import to_nano, to_usd
from cache_service.quota.scopes import denial, format_duration
from cache_service.quota.usage import BudgetUse, DayUse, QuotaSnapshot, RateUse, ScopeUse
from cache_service.quota.windows import (
    HELD_RETRY_S,
    WINDOW_S,
    Period,
    wait_until,
    window_key,
    window_reset_at,
)

log = logging.getLogger("cache_service.quota")

_BUDGETS = ("daily_budget", "monthly_budget")
_READ_FIELDS = 13  # values per scope in the READ script's reply
_ALERT_FIELDS = 9  # values per scope in the CLOSE script's reply


def _sid(scope: Scope) -> str:
    """A scope's id in Redis keys: JSON never contains a raw newline, which separates the
    scopes of a reservation."""
    return json.dumps([scope[0], scope[1]])


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _int(value: Any) -> int:
    # Sent by the scripts as %.17g, which prints any integer below 10^17 in full.
    return int(float(_text(value)))


class RedisLedger:
    """A :class:`~cache_service.quota.ledger.QuotaLedger` in Redis, shared by every replica
    using the same ``prefix``. The client may decode responses or not. :meth:`close` closes
    it: the ledger owns the client it is given."""

    def __init__(
        self,
        redis_client: Redis,
        *,
        prefix: str = "llmcache",
        replica_id: str,
        lease_s: float = 30.0,
        clock: Clock | None = None,
        window_s: float = WINDOW_S,
        alert_thresholds: Sequence[float] = (0.8, 0.95),
        on_alert: AlertSink | None = None,
    ) -> None:
        if lease_s <= 0 or window_s <= 0:
            raise ValueError("lease_s and window_s must be > 0")
        self._redis = redis_client
        self._tag = f"{{{prefix}}}:"
        self._keys = [self._tag + "time"]
        self.replica_id = replica_id
        self.lease_s = lease_s
        self._clock = clock
        self._window_s = window_s
        self._seq = itertools.count(1)
        # This replica's open reservations, whose leases it renews. A reservation leaves
        # this set before its settle is sent: if that call fails, the lease runs out and
        # the hold is charged at its estimate instead of being renewed for ever.
        self._open: set[str] = set()
        # What this replica has already seen fire (or asked Redis about), so that past a
        # threshold each settle does not ask again; Redis decides which replica tells.
        self._alerts = AlertTracker(alert_thresholds)
        self.on_alert = on_alert
        self._alert_tasks: set[asyncio.Task[None]] = set()
        self._reserve = redis_client.register_script(redis_scripts.RESERVE)
        self._close = redis_client.register_script(redis_scripts.CLOSE)
        self._renew = redis_client.register_script(redis_scripts.RENEW)
        self._read = redis_client.register_script(redis_scripts.READ)
        self._book = redis_client.register_script(redis_scripts.BOOK)
        self._configure = redis_client.register_script(redis_limits.CONFIGURE)
        # Per incarnation: a replica restarted under the same name must not reuse the ids
        # of its previous life, which may still sit in a window log (a reused id would
        # move that entry to now and drop the old request from the count).
        self._incarnation = secrets.token_hex(4)

    def _args(self, *rest: object) -> list[str]:
        time_arg = "" if self._clock is None else repr(self._clock.now())
        return [self._tag, repr(self._window_s), time_arg, *(str(x) for x in rest)]

    # ------------------------------------------------------------------ the ledger protocol

    async def reserve(self, scopes: Sequence[Scope], tokens: int, cost_usd: float) -> Held | Denial:
        _validate(tokens, cost_usd)
        unique = tuple(dict.fromkeys(scopes))
        held_id = f"{self.replica_id}.{self._incarnation}.{next(self._seq)}"
        reply = await self._reserve(
            keys=self._keys,
            args=self._args(
                "take",
                held_id,
                tokens,
                to_nano(cost_usd),
                repr(self.lease_s),
                *map(_sid, unique),
            ),
        )
        status = int(reply[0])
        if status < 0:
            raise RuntimeError(
                f"reservation id {held_id} is already open in Redis: two ledgers share "
                f"replica id {self.replica_id!r}"
            )
        if status == 0:
            denied = worst(self._denials(unique, reply, tokens, cost_usd))
            assert denied is not None
            return denied
        self._open.add(held_id)
        return Held(held_id, unique, tokens, cost_usd)

    async def check(self, scopes: Sequence[Scope], tokens: int, cost_usd: float) -> Denial | None:
        _validate(tokens, cost_usd)
        unique = tuple(dict.fromkeys(scopes))
        reply = await self._reserve(
            keys=self._keys,
            args=self._args("check", "", tokens, to_nano(cost_usd), "0", *map(_sid, unique)),
        )
        return worst(self._denials(unique, reply, tokens, cost_usd))

    async def settle(self, held: Held, tokens: int, cost_usd: float) -> None:
        await self._close_held(held, max(0, tokens), to_nano(max(0.0, cost_usd)), 1)

    async def release(self, held: Held) -> None:
        await self._close_held(held, 0, 0, 0)

    async def configure(
        self, kind: str, name: str, limits: Limits, *, at_run_time: bool = False
    ) -> Limits:
        sid = _sid((kind, name))
        as_json = json.dumps(asdict(limits))
        values: dict[str, str] = {"json": as_json}
        numeric: tuple[tuple[str, float | None], ...] = (
            ("rpm", limits.rpm),
            ("tpm", limits.tpm),
            ("rpd", limits.rpd),
            ("tpd", limits.tpd),
            ("db", _nano_or_none(limits.daily_budget_usd)),
            ("mb", _nano_or_none(limits.monthly_budget_usd)),
        )
        values.update((field, repr(value)) for field, value in numeric if value is not None)
        # Limits live in Redis and the scripts read them there, so every replica applies a
        # change from its next call on; one script, so no other sees half of it, and so a
        # replica's start cannot undo an operator's change made in between (see the
        # protocol's rule).
        in_force = await self._configure(
            keys=[f"{self._tag}l:{sid}", self._tag + "scopes"],
            args=[sid, "1" if at_run_time else "0", as_json, *itertools.chain(*values.items())],
        )
        return Limits(**json.loads(_text(in_force)))

    async def scope_use(self, scope: Scope) -> ScopeUse:
        _, _, uses = await self._read_scopes([scope])
        return uses[0]

    async def snapshot(self) -> QuotaSnapshot:
        now, in_flight, uses = await self._read_scopes(None)
        return QuotaSnapshot(
            now=now,
            in_flight=in_flight,
            scopes=tuple(sorted(uses, key=lambda use: (use.kind, use.name))),
        )

    async def ratelimit_headers(self, scope: Scope) -> dict[str, str]:
        _, _, uses = await self._read_scopes([scope])
        headers: dict[str, str] = {}
        for suffix, rate in (("requests", uses[0].requests), ("tokens", uses[0].tokens)):
            if rate.limit is None:
                continue
            headers[f"x-ratelimit-limit-{suffix}"] = str(rate.limit)
            headers[f"x-ratelimit-remaining-{suffix}"] = str(rate.remaining)
            headers[f"x-ratelimit-reset-{suffix}"] = format_duration(rate.reset_in_s)
        return headers

    async def book(self, bookings: Sequence[Booking]) -> None:
        """Charge requests settled elsewhere (a replica's own ledger while Redis was away)
        as admitted and settled now, each once by id: a retry after a failure part-way
        books only those not booked yet."""
        for b in bookings:
            await self._book(
                keys=self._keys,
                args=self._args(
                    b.id, max(0, b.tokens), to_nano(max(0.0, b.cost_usd)), *map(_sid, b.scopes)
                ),
            )

    # ------------------------------------------------------------------ leases and lifecycle

    async def renew(self) -> None:
        """Extend the leases of this replica's open reservations, in one call; forget those
        no longer open (reaped after a stall longer than the lease)."""
        if not self._open:
            return
        ids = list(self._open)
        gone = await self._renew(keys=self._keys, args=self._args(repr(self.lease_s), *ids))
        for held_id in gone:
            self._open.discard(_text(held_id))

    async def renew_forever(self) -> None:
        """Renew every third of a lease, so one failed renewal still leaves time for the next.
        A Redis error is logged and retried at the next tick (the request path sees Redis
        errors itself); the loop ends only when cancelled."""
        while True:
            await asyncio.sleep(self.lease_s / 3)
            try:
                await self.renew()
            except RedisError:
                log.warning("quota lease renewal failed; retrying", exc_info=True)

    async def close(self) -> None:
        """Close the Redis client. Reservations still open are left to their leases."""
        await self._redis.aclose()

    # ------------------------------------------------------------------ helpers

    async def _close_held(self, held: Held, tokens: int, nano: int, requests: int) -> None:
        self._open.discard(held.id)
        reply = await self._close(keys=self._keys, args=self._args(held.id, tokens, nano, requests))
        if int(reply[0]) and len(reply) > 2:
            try:
                await self._alert(float(_text(reply[1])), reply[2:])
            except RedisError:
                # The settlement is done: a caller told otherwise might charge it again.
                log.warning("quota alert check failed", exc_info=True)

    async def _alert(self, now: float, counts: list[Any]) -> None:
        """Threshold crossings on what a settlement left charged (holds may still be
        released, so they would raise false alarms), told once fleet-wide: the replica whose
        ``SET NX`` creates the threshold's key for the window tells it."""
        day, month = window_key("day", now), window_key("month", now)
        for i in range(0, len(counts), _ALERT_FIELDS):
            sid, dr, dt, dn, mn, rpd, tpd, db, mb = (
                _text(v) for v in counts[i : i + _ALERT_FIELDS]
            )
            if not (rpd or tpd or db or mb):
                continue  # no calendar limit, nothing to cross
            kind, name = json.loads(sid)
            checks = (
                ("daily_budget", day, to_usd(_int(dn)), to_usd(_int(db)) if db else None),
                ("monthly_budget", month, to_usd(_int(mn)), to_usd(_int(mb)) if mb else None),
                ("rpd", day, _int(dr), _int(rpd) if rpd else None),
                ("tpd", day, _int(dt), _int(tpd) if tpd else None),
            )
            for limit_name, window, used, limit in checks:
                for alert in self._alerts.check((kind, name), limit_name, window, used, limit):
                    key = f"{self._tag}alert:{sid}:{limit_name}:{window}:{alert.threshold!r}"
                    ttl = 3 * 86_400 if window == day else 40 * 86_400
                    if await self._redis.set(key, self.replica_id, nx=True, ex=ttl):
                        self._tell(alert)

    def _tell(self, alert: Alert) -> None:
        told = payload(alert)
        log.warning(alert.message, extra={"alert": told})  # "message" is reserved
        if self.on_alert is not None:
            task = asyncio.get_running_loop().create_task(self.on_alert(told))
            self._alert_tasks.add(task)
            task.add_done_callback(self._alert_tasks.discard)

    def _denials(
        self, scopes: tuple[Scope, ...], reply: list[Any], tokens: int, cost_usd: float
    ) -> Iterator[Denial]:
        """The RESERVE script's refusals, in its order (scopes as given, then rpm, tpm, rpd,
        tpd, daily and monthly budget: the order the in-process ledger reports ties in),
        worded and timed as the in-process ledger does."""
        now = float(_text(reply[1]))
        for i in range(2, len(reply), 6):
            index, name, kind, at, used, limit = reply[i : i + 6]
            limit_name = cast(LimitName, _text(name))
            kind = _text(kind)
            if kind == "inf":
                wait = math.inf
            elif kind == "at":
                wait = wait_until(float(_text(at)), now)
            else:
                period: Period = "month" if limit_name == "monthly_budget" else "day"
                wait = wait_until(window_reset_at(period, now), now)
                if kind == "held":
                    wait = min(HELD_RETRY_S, wait)
            value: float
            if limit_name in _BUDGETS:
                value, spent = to_usd(_int(limit)), to_usd(_int(used))
            else:
                value, spent = _int(limit), _int(used)
            yield denial(
                scopes[int(index) - 1],
                limit_name,
                wait,
                tokens=tokens,
                cost=cost_usd,
                limit=value,
                used=spent,
            )

    async def _read_scopes(
        self, scopes: Sequence[Scope] | None
    ) -> tuple[float, int, list[ScopeUse]]:
        """(time, holds in flight, use of each scope): those given, or all known."""
        args = self._args("all") if scopes is None else self._args("some", *map(_sid, scopes))
        reply = await self._read(keys=self._keys, args=args)
        now, in_flight = float(_text(reply[0])), int(reply[1])
        uses = [
            self._scope_use(reply[i : i + _READ_FIELDS], now)
            for i in range(2, len(reply), _READ_FIELDS)
        ]
        return now, in_flight, uses

    def _scope_use(self, record: list[Any], now: float) -> ScopeUse:
        sid, limits_json, *counts, req_at, tok_at = (_text(v) for v in record)
        kind, name = json.loads(sid)
        limits = Limits(**json.loads(limits_json)) if limits_json else Limits()
        rq, tk, dr, dt, dn, mn, in_flight, ht, hn = (_int(v) for v in counts)

        def rate(used: int, cap: int | None, stops_at: str) -> RateUse:
            reset_in = wait_until(float(stops_at), now) if stops_at else 0.0
            return RateUse(
                used=used,
                limit=cap,
                remaining=None if cap is None else max(0, cap - used),
                reset_at=now + reset_in,
                reset_in_s=reset_in,
                window_s=self._window_s,
            )

        day, day_reset = window_key("day", now), window_reset_at("day", now)

        def count(settled: int, held: int, limit: int | None) -> DayUse:
            return DayUse(
                window=day,
                used=settled + held,
                settled=settled,
                held=held,
                limit=limit,
                remaining=None if limit is None else max(0, limit - settled - held),
                reset_at=day_reset,
            )

        def budget(period: Period, spent: int, limit_usd: float | None) -> BudgetUse:
            limit = _nano_or_none(limit_usd)
            return BudgetUse(
                window=window_key(period, now),
                used=to_usd(spent + hn),
                spent=to_usd(spent),
                held=to_usd(hn),
                limit=None if limit is None else to_usd(limit),
                remaining=None if limit is None else to_usd(max(0, limit - spent - hn)),
                reset_at=window_reset_at(period, now),
            )

        return ScopeUse(
            kind=kind,
            name=name,
            limits=limits,
            requests=rate(rq, limits.rpm, req_at),
            tokens=rate(tk, limits.tpm, tok_at),
            daily_requests=count(dr, in_flight, limits.rpd),
            daily_tokens=count(dt, ht, limits.tpd),
            daily_budget=budget("day", dn, limits.daily_budget_usd),
            monthly_budget=budget("month", mn, limits.monthly_budget_usd),
        )


def _validate(tokens: int, cost_usd: float) -> None:
    if tokens < 0 or not (math.isfinite(cost_usd) and cost_usd >= 0):
        raise ValueError(f"tokens and cost must be >= 0, got {tokens} and {cost_usd}")


def _nano_or_none(usd: float | None) -> int | None:
    return None if usd is None else to_nano(usd)
