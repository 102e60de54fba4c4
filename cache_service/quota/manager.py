"""The quota manager: admits a request against all of its scopes or none, settles it with
the real usage, and persists what must survive a restart (the calendar counts and spend).

Guarantees (``W`` = 60 s; a request "counts" from its admission until it is released):

* **Requests.** In every half-open interval ``[s, s + W)`` of the monotonic clock, the number
  of admitted, unreleased requests per scope is at most ``rpm``. Exactly, not approximately:
  the limiter is a sliding-window log, not a token bucket (see
  :class:`~cache_service.quota.windows.SlidingWindow`). Likewise, per UTC day, at most
  ``rpd`` (see below for which day a request counts in).
* **Tokens.** In every ``[s, s + W)``, the tokens charged for requests admitted in it (the
  actual tokens once settled, the estimate while in flight, 0 once released) are at most
  ``tpm`` plus those requests' *overruns* (actual minus estimate, where positive). So when the
  estimate is an upper bound (``prompt + max_tokens``) the actual tokens never exceed ``tpm``.
  An overrun cannot be refused after the fact; it is charged anyway, so it delays later
  requests instead of vanishing. The same rule holds per UTC day against ``tpd``.
* **Budgets.** Spent (settled actual cost) plus held (estimates of requests in flight) never
  exceeds the limit through an admission; only overruns at settlement can push it over, and
  then nothing more is admitted until the UTC day / month rolls over.

Calendar limits (rpd, tpd, budgets) count a request in flight against the current day as a
hold, and charge it, at its actual amount, to the day it settles in. So both the requests
(and tokens) *admitted* in a UTC day and those *charged* to it stay within rpd (and tpd plus
their overruns): at a day's last admission, each request admitted that day and not released,
and each one charged to that day later, was counted there, as charged or as held.

Not thread-safe: call it from one thread (the event loop); a reserve is check-then-take with
no await in between, so it is atomic there.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from cache_service.protocols import Clock
from cache_service.quota.alerts import Alert, AlertTracker
from cache_service.quota.limits import Denial, Limits, Scope, worst
from cache_service.quota.scopes import ScopeState
from cache_service.quota.usage import QuotaSnapshot, ScopeUse
from cache_service.quota.windows import WINDOW_S, Charge, window_key


@dataclass(eq=False, slots=True)
class Reservation:
    """What an admitted request holds until :meth:`QuotaManager.settle` or ``release``."""

    id: int
    scopes: tuple[Scope, ...]
    tokens: int
    cost_usd: float
    reserved_at: float  # monotonic
    _charges: list[tuple[Charge, Charge]] = field(default_factory=list, repr=False)
    closed: bool = False


@dataclass(frozen=True, slots=True)
class SpendEvent:
    """A change to the calendar counts, for a write-ahead journal: a snapshot of spend can
    only be written now and then, and these carry what happened since.

    ``hold``: admitted, holding ``usd`` and ``tokens`` (estimates). ``settle``: charged
    ``usd`` and ``tokens`` (actual) in place of the hold, and one request. ``release``: never
    sent, the hold dropped (both 0). ``wall`` is when it happened. ``tokens`` came with rpd/tpd
    and defaults to 0, so events journalled before then still read."""

    op: Literal["hold", "settle", "release"]
    id: int
    scopes: tuple[Scope, ...]
    usd: float
    wall: float
    tokens: int = 0


class QuotaManager:
    """Scopes with rpm/tpm windows, rpd/tpd day counts and daily/monthly budgets; see the
    module docstring for exactly what is guaranteed. Rate windows run on
    ``clock.monotonic()``, calendar windows on ``clock.now()``."""

    def __init__(self, clock: Clock, *, window_s: float = WINDOW_S) -> None:
        self._clock = clock
        self._window_s = window_s
        self._scopes: dict[Scope, ScopeState] = {}
        self._ids = itertools.count(1)
        self._in_flight = 0
        self._open: dict[int, Reservation] = {}
        self.on_spend: Callable[[SpendEvent], None] | None = None
        """Told of every hold, settlement and release (a journal, outside). Unpriced ones
        too: each counts as a request against rpd."""

    # -- configuration -----------------------------------------------------------------------

    def configure(self, kind: str, name: str, limits: Limits) -> None:
        """Set or change a scope's limits. Current usage is kept, so tightening a limit at
        runtime takes effect against what was already admitted."""
        state = self._scopes.get((kind, name))
        if state is None:
            self._scopes[(kind, name)] = ScopeState(limits, self._clock.now(), self._window_s)
        else:
            state.apply(limits)

    def limits(self, kind: str, name: str) -> Limits:
        state = self._scopes.get((kind, name))
        return Limits() if state is None else state.limits

    def scopes(self) -> list[Scope]:
        return sorted(self._scopes)

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def _peek(self, scope: Scope) -> ScopeState:
        # Reads must not create scopes: a lookup of an arbitrary name should not grow state.
        state = self._scopes.get(scope)
        if state is None:
            return ScopeState(Limits(), self._clock.now(), self._window_s)
        return state

    def _state(self, scope: Scope) -> ScopeState:
        # An unconfigured scope is unlimited but tracked, so it shows in the snapshot and a
        # limit added later starts from real usage.
        state = self._scopes.get(scope)
        if state is None:
            state = self._scopes[scope] = ScopeState(Limits(), self._clock.now(), self._window_s)
        return state

    # -- admission ---------------------------------------------------------------------------

    def check(self, scopes: Sequence[Scope], tokens: int, cost_usd: float) -> Denial | None:
        """The denial :meth:`reserve` would return now, without taking anything.

        When several limits refuse, the one reported is the one that matters most to the
        caller: a non-retryable one first, else the longest wait, since retrying before that
        is futile however the others clear.
        """
        return self._check(scopes, tokens, cost_usd, self._clock.monotonic(), self._clock.now())

    def _check(
        self, scopes: Sequence[Scope], tokens: int, cost_usd: float, mono: float, wall: float
    ) -> Denial | None:
        if tokens < 0 or not (math.isfinite(cost_usd) and cost_usd >= 0):
            raise ValueError(f"tokens and cost must be >= 0, got {tokens} and {cost_usd}")
        return worst(
            denial
            for scope in dict.fromkeys(scopes)
            for denial in self._state(scope).denials(scope, tokens, cost_usd, mono, wall)
        )

    def reserve(
        self, scopes: Sequence[Scope], tokens: int, cost_usd: float
    ) -> Reservation | Denial:
        """Admit against every scope or none: nothing is taken unless all of them admit."""
        # One reading of the clock for the check and the take, so what was checked is what
        # gets recorded.
        mono, wall = self._clock.monotonic(), self._clock.now()
        denial = self._check(scopes, tokens, cost_usd, mono, wall)
        if denial is not None:
            return denial
        unique = tuple(dict.fromkeys(scopes))
        reservation = Reservation(next(self._ids), unique, tokens, cost_usd, mono)
        for scope in unique:
            state = self._scopes[scope]
            reservation._charges.append(
                (state.requests.take(1, mono), state.tokens.take(tokens, mono))
            )
            state.day_requests.hold(1, wall)
            state.day_tokens.hold(tokens, wall)
            state.daily.hold(cost_usd, wall)
            state.monthly.hold(cost_usd, wall)
        self._in_flight += 1
        self._open[reservation.id] = reservation
        if self.on_spend is not None:
            self.on_spend(SpendEvent("hold", reservation.id, unique, cost_usd, wall, tokens))
        return reservation

    def settle(self, reservation: Reservation, actual_tokens: int, actual_cost_usd: float) -> None:
        """Replace the estimates with what upstream reported. More than estimated is charged
        in full (it delays later requests); less frees the difference at once. Settling or
        releasing an already closed reservation is a no-op, so an error path cannot
        double-count."""
        self._close(reservation, max(0, actual_tokens), max(0.0, actual_cost_usd), requests=1)

    def release(self, reservation: Reservation) -> None:
        """Undo a reservation for a request that never reached upstream (nothing charged):
        its request, tokens and held cost all stop counting."""
        self._close(reservation, 0, 0.0, requests=0)

    def _close(self, reservation: Reservation, tokens: int, cost_usd: float, requests: int) -> None:
        if reservation.closed:
            return
        reservation.closed = True
        self._in_flight -= 1
        self._open.pop(reservation.id, None)
        mono, wall = self._clock.monotonic(), self._clock.now()
        for scope, (req_charge, tok_charge) in zip(
            reservation.scopes, reservation._charges, strict=True
        ):
            state = self._scopes[scope]
            state.requests.adjust(req_charge, requests, mono)
            state.tokens.adjust(tok_charge, tokens, mono)
            if requests:
                state.day_requests.settle(1, 1, wall)
                state.day_tokens.settle(reservation.tokens, tokens, wall)
                state.daily.settle(reservation.cost_usd, cost_usd, wall)
                state.monthly.settle(reservation.cost_usd, cost_usd, wall)
            else:
                state.day_requests.release(1)
                state.day_tokens.release(reservation.tokens)
                state.daily.release(reservation.cost_usd)
                state.monthly.release(reservation.cost_usd)
        if self.on_spend is not None:
            op: Literal["settle", "release"] = "settle" if requests else "release"
            event = SpendEvent(op, reservation.id, reservation.scopes, cost_usd, wall, tokens)
            self.on_spend(event)

    # -- reporting ---------------------------------------------------------------------------

    def scope_snapshot(self, scope: Scope) -> ScopeUse:
        """Usage of one scope (see :meth:`ScopeState.snapshot`)."""
        return self._peek(scope).snapshot(scope, self._clock.monotonic(), self._clock.now())

    def snapshot(self) -> QuotaSnapshot:
        """Everything, for ``GET /v1/quota`` (``.as_json()``), metrics and reports."""
        return QuotaSnapshot(
            now=self._clock.now(),
            in_flight=self._in_flight,
            scopes=tuple(self.scope_snapshot(scope) for scope in self.scopes()),
        )

    def ratelimit_headers(self, scope: Scope) -> dict[str, str]:
        """OpenAI-style ``x-ratelimit-*`` headers for this scope's per-minute limits."""
        return self._peek(scope).ratelimit_headers(self._clock.monotonic())

    def check_alerts(self, tracker: AlertTracker) -> list[Alert]:
        """Threshold crossings of calendar limits since the last call, on what was actually
        charged (holds may still be released, so they would raise false alarms)."""
        wall = self._clock.now()
        alerts: list[Alert] = []
        for scope, state in sorted(self._scopes.items()):
            for name, budget in (("daily_budget", state.daily), ("monthly_budget", state.monthly)):
                if budget.limit_usd is None:
                    continue
                alerts += tracker.check(
                    scope, name, budget.key(wall), budget.spent_usd(wall), budget.limit_usd
                )
            for name, counter in (("rpd", state.day_requests), ("tpd", state.day_tokens)):
                if counter.limit is None:
                    continue
                alerts += tracker.check(
                    scope, name, counter.key(wall), counter.settled(wall), counter.limit
                )
        return alerts

    # -- persistence -------------------------------------------------------------------------

    def export_spend(self) -> dict[str, Any]:
        """Calendar counts to persist: dollars, and today's requests and tokens. Each record
        carries its window key so it is only ever restored into the same day / month.
        Requests in flight are listed under ``open``: :meth:`restore_spend` counts those still
        open after the journal as charged, because after a crash there is no telling whether
        upstream billed them, and over-counting is the safe side of a limit."""
        wall = self._clock.now()
        return {
            "version": 1,
            "scopes": [
                {
                    "kind": kind,
                    "name": name,
                    "daily": state.daily.export(wall),
                    "monthly": state.monthly.export(wall),
                    "daily_requests": state.day_requests.export(wall),
                    "daily_tokens": state.day_tokens.export(wall),
                }
                for (kind, name), state in sorted(self._scopes.items())
            ],
            "open": [
                {
                    "id": r.id,
                    "scopes": [list(s) for s in r.scopes],
                    "usd": r.cost_usd,
                    "tokens": r.tokens,
                }
                for r in self._open.values()
            ],
        }

    def import_spend(self, data: Mapping[str, Any]) -> None:
        """Restore :meth:`export_spend` output; records from another window are ignored.
        Merges by taking the larger count, so it is idempotent. Call it before serving.
        Exports from before rpd/tpd (no ``daily_requests``/``daily_tokens``) load as they
        are, with no requests or tokens counted."""
        if data.get("version") != 1 or not isinstance(data.get("scopes"), list):
            raise ValueError("not a quota spend export (version 1)")
        # Parse everything before applying anything, so a corrupt record leaves no half-import.
        parsed: list[tuple[Scope, str, str, float | int]] = []
        for record in data["scopes"]:
            try:
                scope = (str(record["kind"]), str(record["name"]))
                for which in ("daily", "monthly"):
                    if which in record:
                        window = record[which]
                        spent = float(window["spent_usd"])
                        if "open" not in data:  # older snapshots: holds count as spent
                            spent += float(window.get("held_usd", 0.0))
                        if not math.isfinite(spent) or spent < 0:
                            raise ValueError(f"spend must be a finite amount >= 0, got {spent}")
                        parsed.append((scope, which, str(window["window"]), spent))
                for which in ("daily_requests", "daily_tokens"):
                    if which in record:
                        window = record[which]
                        count = window["settled"]
                        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
                            raise ValueError(f"a count must be an integer >= 0, got {count!r}")
                        parsed.append((scope, which, str(window["window"]), count))
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                raise ValueError(f"malformed quota spend record {record!r}") from exc
        wall = self._clock.now()
        for scope, which, key, amount in parsed:
            if key != window_key("month" if which == "monthly" else "day", wall):
                continue  # another window's counts: yesterday's must not count today
            state = self._state(scope)
            if which == "daily":
                state.daily.import_spent(key, amount, wall)
            elif which == "monthly":
                state.monthly.import_spent(key, amount, wall)
            elif which == "daily_requests":
                state.day_requests.import_settled(key, int(amount), wall)
            else:
                state.day_tokens.import_settled(key, int(amount), wall)

    def restore_spend(
        self, snapshot: Mapping[str, Any] | None, journal: Iterable[SpendEvent] = ()
    ) -> None:
        """Counts as of a snapshot (:meth:`export_spend`) plus the journal of what happened
        after it. Settlements are charged to the window they happened in; a request still
        open at the end (in flight at a crash) counts as charged now, at its estimate, as it
        would have held against the current window."""
        open_holds: dict[int, tuple[tuple[Scope, ...], float, int]] = {}
        if snapshot:
            self.import_spend(snapshot)
            try:
                for h in snapshot.get("open", []):
                    scopes = tuple((str(k), str(n)) for k, n in h["scopes"])
                    # Snapshots from before rpd/tpd list no tokens (and only priced holds).
                    tokens = max(0, int(h.get("tokens", 0)))
                    open_holds[int(h["id"])] = (scopes, float(h["usd"]), tokens)
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                raise ValueError("malformed open holds in a quota spend export") from exc
        charges: list[tuple[tuple[Scope, ...], float, int, float]] = []
        for e in journal:
            if e.op == "hold":
                open_holds[e.id] = (e.scopes, e.usd, e.tokens)
                continue
            open_holds.pop(e.id, None)
            if e.op == "settle":
                charges.append((e.scopes, e.usd, e.tokens, e.wall))
        now = self._clock.now()
        charges.extend((scopes, usd, tokens, now) for scopes, usd, tokens in open_holds.values())
        for scopes, usd, tokens, wall in charges:
            for scope in scopes:
                state = self._state(scope)
                for budget in (state.daily, state.monthly):
                    budget.add_spent(budget.window_key(wall), usd, now)
                day = window_key("day", wall)
                state.day_requests.add_settled(day, 1, now)
                state.day_tokens.add_settled(day, tokens, now)
