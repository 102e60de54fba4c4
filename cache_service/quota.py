"""Rate limits and spend budgets for requests the cache could not answer. Pure: no I/O, time
comes from an injected :class:`~cache_service.protocols.Clock`.

How the pipeline uses it: on a cache miss, estimate the request's tokens and dollar cost, call
:meth:`QuotaManager.reserve` with every scope the request counts against; if it returns a
:class:`Reservation`, forward upstream and :meth:`~QuotaManager.settle` it with the real
``usage`` (or :meth:`~QuotaManager.release` it if nothing was sent). A :class:`Denial` names the
scope and limit that refused and how long to wait. Cache hits never touch quota.

Guarantees (``W`` = 60 s; a request "counts" from its admission until it is released):

* **Requests.** In every half-open interval ``[s, s + W)`` of the monotonic clock, the number
  of admitted, unreleased requests per scope is at most ``rpm``. Exactly, not approximately:
  the limiter is a sliding-window log, not a token bucket (see :class:`SlidingWindow`).
* **Tokens.** In every ``[s, s + W)``, the tokens charged for requests admitted in it (the
  actual tokens once settled, the estimate while in flight, 0 once released) are at most
  ``tpm`` plus those requests' *overruns* (actual minus estimate, where positive). So when the
  estimate is an upper bound (``prompt + max_tokens``) the actual tokens never exceed ``tpm``.
  An overrun cannot be refused after the fact; it is charged anyway, so it delays later
  requests instead of vanishing.
* **Budgets.** Spent (settled actual cost) plus held (estimates of requests in flight) never
  exceeds the limit through an admission; only overruns at settlement can push it over, and
  then nothing more is admitted until the UTC day / month rolls over.

Not thread-safe: call it from one thread (the event loop); a reserve is check-then-take with
no await in between, so it is atomic there.
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from cache_service.protocols import Clock

Scope = tuple[str, str]
"""``(kind, name)``: ``("project", "default")``, ``("upstream", "openai")``, ``("global",
"total")``. Kinds are not enforced here; the caller decides which scopes a request counts
against."""

LimitName = Literal["rpm", "tpm", "daily_budget", "monthly_budget"]
Period = Literal["day", "month"]

WINDOW_S = 60.0

# A budget refused only because of in-flight holds may free up as soon as those settle below
# their estimate, which could be any moment: suggest a short retry, not the window reset.
HELD_RETRY_S = 1.0

# Money is kept in integer nano-dollars so the budget invariants hold exactly instead of to
# within float rounding (ten $0.10 requests fit a $1.00 budget, never 9 or 11).
_NANO = 1_000_000_000


def _to_nano(usd: float) -> int:
    return round(usd * _NANO)


def _to_usd(nano: int) -> float:
    return nano / _NANO


def _until(deadline: float, now: float) -> float:
    """``deadline - now``, nudged up so that ``now + result >= deadline`` holds in floating
    point too: a caller that waits exactly this long must find the limit cleared, not miss it
    by one rounding step and wait a whole extra round."""
    wait = max(0.0, deadline - now)
    while now + wait < deadline:
        wait = math.nextafter(wait, math.inf)
    return wait


def estimate_request_tokens(
    prompt_tokens: int, max_tokens: int | None, default_completion: int = 256
) -> int:
    """Tokens to reserve before the answer is known: the prompt plus the completion cap.

    With ``max_tokens`` given the estimate is an upper bound, so the tpm guarantee holds for
    actual tokens; without it ``default_completion`` is a guess and long answers overrun.
    """
    completion = default_completion if max_tokens is None else max_tokens
    return max(0, prompt_tokens) + max(0, completion)


def format_duration(seconds: float) -> str:
    """Render like OpenAI's ``x-ratelimit-reset-*`` headers (Go durations): ``"20ms"``,
    ``"6s"``, ``"1m0s"``, ``"1m30.5s"``, ``"1h0m0s"``. Rounded *up* to the millisecond so a
    client that waits exactly this long is never early."""
    if math.isinf(seconds):
        raise ValueError("an infinite wait has no duration; the request is not retryable")
    ms = max(0, math.ceil(seconds * 1000 - 1e-6))
    if ms == 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs = str(rest // 1000)
    if rest % 1000:
        secs += f".{rest % 1000:03d}".rstrip("0")
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


# --------------------------------------------------------------------------------------------
# Primitives
# --------------------------------------------------------------------------------------------


@dataclass(eq=False, slots=True)
class Charge:
    """One entry in a :class:`SlidingWindow`'s log; the handle a reservation keeps to settle."""

    at: float
    amount: int
    live: bool = True  # False once aged out of the window


class SlidingWindow:
    """Exact sliding-window log over a monotonic clock.

    An amount taken at ``t`` counts against every check made at ``now < t + window_s`` and
    none after. A take is admitted only if the amounts still counting plus its own fit in
    ``capacity``. Hence, for every half-open interval ``[s, s + window_s)``, the amounts taken
    in it (as they stood at the last take in it) sum to at most ``capacity``: each one taken in
    ``[s, t_last]`` still counted when ``t_last`` was checked. Later :meth:`adjust` calls only
    move that by the adjustment itself, which is what the module-level guarantee spells out.

    ``capacity=None`` admits everything but still keeps the log, so a limit configured later
    starts from the real recent usage. Memory is one entry per take in the last window.
    Amounts are integers, so the running total is exact.
    """

    def __init__(self, capacity: int | None, window_s: float = WINDOW_S) -> None:
        if capacity is not None and capacity < 0:
            raise ValueError("capacity must be >= 0")
        if window_s <= 0:
            raise ValueError("window_s must be > 0")
        self.capacity = capacity
        self.window_s = window_s
        self._log: deque[Charge] = deque()
        self._total = 0
        self._last = -math.inf

    def _prune(self, now: float) -> float:
        # Keeping times non-decreasing keeps the log sorted, which pruning from the left and
        # the proof above both rely on; a backwards step is treated as no time passing.
        now = max(now, self._last)
        self._last = now
        log = self._log
        while log and log[0].at + self.window_s <= now:
            old = log.popleft()
            old.live = False
            self._total -= old.amount
        return now

    def used(self, now: float) -> int:
        self._prune(now)
        return self._total

    def remaining(self, now: float) -> int | None:
        """Room left (0 while over capacity); ``None`` when unlimited."""
        used = self.used(now)
        return None if self.capacity is None else max(0, self.capacity - used)

    def admits(self, amount: int, now: float) -> bool:
        used = self.used(now)
        return self.capacity is None or used + amount <= self.capacity

    def time_until(self, amount: int, now: float) -> float:
        """Seconds until ``amount`` fits if nothing else is taken or settled meanwhile (a
        settle below the estimate or a release can only make it sooner); ``math.inf`` if
        ``amount`` exceeds the capacity itself."""
        now = self._prune(now)
        if self.capacity is None:
            return 0.0
        if amount > self.capacity:
            return math.inf
        excess = self._total + amount - self.capacity
        if excess <= 0:
            return 0.0
        freed = 0
        for charge in self._log:
            freed += charge.amount
            if freed >= excess:
                return _until(charge.at + self.window_s, now)
        raise AssertionError("unreachable: emptying the window always makes room")

    def reset_in(self, now: float) -> float:
        """Seconds until nothing counts any more (OpenAI's "resets to its initial state")."""
        now = self._prune(now)
        for charge in reversed(self._log):
            if charge.amount:
                return _until(charge.at + self.window_s, now)
        return 0.0

    def take(self, amount: int, now: float) -> Charge:
        """Record ``amount`` unconditionally (the caller has checked :meth:`admits`)."""
        if amount < 0:
            raise ValueError("amount must be >= 0")
        now = self._prune(now)
        charge = Charge(now, amount)
        self._log.append(charge)
        self._total += amount
        return charge

    def try_take(self, amount: int, now: float) -> Charge | None:
        return self.take(amount, now) if self.admits(amount, now) else None

    def adjust(self, charge: Charge, amount: int, now: float) -> None:
        """Replace a charge's amount (estimate → actual, or 0 to release).

        While the charge is in the window it is corrected in place, at its original time. Once
        it has aged out, a shrink no longer matters, but a growth is booked now as a new entry:
        a long streamed answer really did consume those tokens recently, and dropping them
        would let chronic under-estimates run past the limit.
        """
        if amount < 0:
            raise ValueError("amount must be >= 0")
        now = self._prune(now)
        if charge.live:
            self._total += amount - charge.amount
        elif amount > charge.amount:
            self._log.append(Charge(now, amount - charge.amount))
            self._total += amount - charge.amount
        charge.amount = amount


def _utc(now: float) -> datetime:
    return datetime.fromtimestamp(now, tz=UTC)


def window_key(period: Period, now: float) -> str:
    """``"2026-11-22"`` for a UTC day, ``"2026-11"`` for a UTC month. Zero-padded so keys of
    one period order like the windows they name."""
    d = _utc(now)
    return f"{d.year:04d}-{d.month:02d}" + (f"-{d.day:02d}" if period == "day" else "")


def window_reset_at(period: Period, now: float) -> float:
    """Epoch seconds of the next UTC midnight (day) or first of the next month (month)."""
    d = _utc(now)
    if period == "day":
        start = datetime(d.year, d.month, d.day, tzinfo=UTC)
        return start.timestamp() + 86_400
    year, month = (d.year + 1, 1) if d.month == 12 else (d.year, d.month + 1)
    return datetime(year, month, 1, tzinfo=UTC).timestamp()


class BudgetWindow:
    """Dollar spend in one UTC calendar day or month, plus what in-flight requests hold.

    ``used = spent + held``. A cost is admitted only if ``used + cost <= limit`` and the budget
    is not already exhausted: a request priced at $0 (a model missing from the price table)
    must not slip through a spent budget.

    Held amounts are not tied to a window: a request reserved at 23:59:59 and settled after
    midnight is charged to the window it settles in (when the money actually lands), and it
    holds against the new window until then.
    """

    def __init__(self, period: Period, limit_usd: float | None, now: float) -> None:
        self.period: Period = period
        self.limit_usd = limit_usd
        self._key = window_key(period, now)
        # Calendar arithmetic (datetime) was most of the cost of an admission; within a
        # window a float comparison is enough.
        self._rolls_at = window_reset_at(period, now)
        self._spent = 0
        self._held = 0
        self._in_flight = 0

    @property
    def limit_usd(self) -> float | None:
        return None if self._limit is None else _to_usd(self._limit)

    @limit_usd.setter
    def limit_usd(self, value: float | None) -> None:
        if value is not None and not (math.isfinite(value) and value >= 0):
            raise ValueError(f"a budget must be a finite amount >= 0, got {value}")
        self._limit = None if value is None else _to_nano(value)

    def window_key(self, now: float) -> str:
        return window_key(self.period, now)

    def reset_at(self, now: float) -> float:
        return window_reset_at(self.period, now)

    def _roll(self, now: float) -> str:
        if now < self._rolls_at:
            # Inside the current window, or a wall clock stepped back: only forward, so a
            # clock stepped back across midnight must not wipe today's spend.
            return self._key
        key = self.window_key(now)
        if key > self._key:
            self._key = key
            self._spent = 0
        self._rolls_at = max(self._rolls_at, window_reset_at(self.period, now))
        return self._key

    def key(self, now: float) -> str:
        """The current window's key (never older than one already seen)."""
        return self._roll(now)

    def spent_usd(self, now: float) -> float:
        self._roll(now)
        return _to_usd(self._spent)

    @property
    def held_usd(self) -> float:
        return _to_usd(self._held)

    def used_usd(self, now: float) -> float:
        self._roll(now)
        return _to_usd(self._spent + self._held)

    def remaining_usd(self, now: float) -> float | None:
        self._roll(now)
        if self._limit is None:
            return None
        return _to_usd(max(0, self._limit - self._spent - self._held))

    def _fits(self, used: int, cost: int) -> bool:
        return self._limit is None or (used < self._limit and used + cost <= self._limit)

    def admits(self, cost_usd: float, now: float) -> bool:
        self._roll(now)
        return self._fits(self._spent + self._held, _to_nano(cost_usd))

    def never_admits(self, cost_usd: float) -> bool:
        """True if even an empty window could not take it."""
        return self._limit is not None and not self._fits(0, _to_nano(cost_usd))

    def retry_after(self, cost_usd: float, now: float) -> float:
        """0 if it fits now; ``math.inf`` if it never can; :data:`HELD_RETRY_S` if only
        in-flight holds are in the way; otherwise the time to the window reset."""
        self._roll(now)
        cost = _to_nano(cost_usd)
        if self._fits(self._spent + self._held, cost):
            return 0.0
        if self.never_admits(cost_usd):
            return math.inf
        to_reset = _until(self.reset_at(now), now)
        if self._fits(self._spent, cost):
            return min(HELD_RETRY_S, to_reset)
        return to_reset

    def hold(self, cost_usd: float, now: float) -> None:
        self._roll(now)
        self._held += _to_nano(cost_usd)
        self._in_flight += 1

    def settle(self, held_usd: float, actual_usd: float, now: float) -> None:
        """Swap a hold for the actual cost, charged to the current window."""
        self.release(held_usd)
        self._roll(now)
        self._spent += _to_nano(max(0.0, actual_usd))

    def release(self, held_usd: float) -> None:
        self._held -= _to_nano(held_usd)
        self._in_flight -= 1
        if self._in_flight <= 0:
            # Nothing in flight means nothing held; this also absorbs any caller mismatch.
            self._in_flight = 0
            self._held = 0

    def export(self, now: float) -> dict[str, Any]:
        self._roll(now)
        return {"window": self._key, "spent_usd": _to_usd(self._spent), "held_usd": self.held_usd}

    def import_spent(self, key: str, spent_usd: float, now: float) -> bool:
        """Merge persisted spend if it belongs to the current window; returns whether it did.

        Takes the larger of the two rather than adding, so importing the same export twice (or
        an export of this very process) does not double-count.
        """
        if key != self._roll(now):
            return False
        self._spent = max(self._spent, _to_nano(spent_usd))
        return True

    def add_spent(self, key: str, usd: float, now: float) -> bool:
        """Add (or, negative, take back) spend recorded in window ``key``, if that is the
        current window; returns whether it did. Never below zero."""
        if key != self._roll(now):
            return False
        self._spent = max(0, self._spent + _to_nano(usd))
        return True


@dataclass(frozen=True, slots=True)
class SpendEvent:
    """A change to budget spend, for a write-ahead journal: a snapshot of spend can only be
    written now and then, and these carry what happened since.

    ``hold``: admitted, holding ``usd``. ``settle``: charged ``usd`` in place of the hold.
    ``release``: never sent, the hold dropped (``usd`` 0). ``wall`` is when it happened."""

    op: Literal["hold", "settle", "release"]
    id: int
    scopes: tuple[Scope, ...]
    usd: float
    wall: float


# --------------------------------------------------------------------------------------------
# The manager
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-scope limits; ``None`` means unlimited. Usage is tracked either way."""

    rpm: int | None = None
    tpm: int | None = None
    daily_budget_usd: float | None = None
    monthly_budget_usd: float | None = None

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0 or None, got {value}")


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
class Denial:
    """Why a reservation was refused, worded for a 429 body.

    ``retry_after_s`` is the wait if nothing in flight settles below its estimate or is
    released (either can only make it sooner, so a queue should also re-try on those). For
    a budget it is the time to the window reset, or :data:`HELD_RETRY_S` when only in-flight
    holds are in the way. ``retryable`` is False (and the wait ``math.inf``) when no wait can
    help: the request alone exceeds the limit.
    """

    scope_kind: str
    scope_name: str
    limit: LimitName
    retry_after_s: float
    retryable: bool
    message: str

    @property
    def scope(self) -> Scope:
        return (self.scope_kind, self.scope_name)

    def retry_after_header(self) -> str | None:
        """Whole seconds for a ``Retry-After`` header, rounded up; ``None`` if not retryable."""
        if not self.retryable:
            return None
        return str(max(1, math.ceil(self.retry_after_s)))


@dataclass(frozen=True, slots=True)
class Alert:
    scope_kind: str
    scope_name: str
    limit: str
    window: str
    threshold: float
    used: float
    limit_value: float
    message: str


def _label(scope: Scope) -> str:
    return f"{scope[0]} '{scope[1]}'"


def _usd(value: float) -> str:
    return f"${value:,.2f}"


class _ScopeState:
    __slots__ = ("daily", "limits", "monthly", "requests", "tokens")

    def __init__(self, limits: Limits, now: float, window_s: float) -> None:
        self.limits = limits
        self.requests = SlidingWindow(limits.rpm, window_s)
        self.tokens = SlidingWindow(limits.tpm, window_s)
        self.daily = BudgetWindow("day", limits.daily_budget_usd, now)
        self.monthly = BudgetWindow("month", limits.monthly_budget_usd, now)

    def apply(self, limits: Limits) -> None:
        self.limits = limits
        self.requests.capacity = limits.rpm
        self.tokens.capacity = limits.tpm
        self.daily.limit_usd = limits.daily_budget_usd
        self.monthly.limit_usd = limits.monthly_budget_usd


class QuotaManager:
    """Scopes with rpm/tpm windows and daily/monthly budgets; see the module docstring for
    exactly what is guaranteed. Rate windows run on ``clock.monotonic()``, budgets on the
    calendar from ``clock.now()``."""

    def __init__(self, clock: Clock, *, window_s: float = WINDOW_S) -> None:
        self._clock = clock
        self._window_s = window_s
        self._scopes: dict[Scope, _ScopeState] = {}
        self._ids = itertools.count(1)
        self._in_flight = 0
        self._open: dict[int, Reservation] = {}
        self.on_spend: Callable[[SpendEvent], None] | None = None
        """Told of every hold and settlement that moves money (a journal, outside)."""

    # -- configuration -----------------------------------------------------------------------

    def configure(self, kind: str, name: str, limits: Limits) -> None:
        """Set or change a scope's limits. Current usage is kept, so tightening a limit at
        runtime takes effect against what was already admitted."""
        state = self._scopes.get((kind, name))
        if state is None:
            self._scopes[(kind, name)] = _ScopeState(limits, self._clock.now(), self._window_s)
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

    def _peek(self, scope: Scope) -> _ScopeState:
        # Reads must not create scopes: a lookup of an arbitrary name should not grow state.
        state = self._scopes.get(scope)
        if state is None:
            return _ScopeState(Limits(), self._clock.now(), self._window_s)
        return state

    def _state(self, scope: Scope) -> _ScopeState:
        # An unconfigured scope is unlimited but tracked, so it shows in the snapshot and a
        # limit added later starts from real usage.
        state = self._scopes.get(scope)
        if state is None:
            state = self._scopes[scope] = _ScopeState(Limits(), self._clock.now(), self._window_s)
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
        worst: Denial | None = None
        for scope in dict.fromkeys(scopes):
            for denial in self._denials(scope, self._state(scope), tokens, cost_usd, mono, wall):
                if worst is None or (denial.retryable, -denial.retry_after_s) < (
                    worst.retryable,
                    -worst.retry_after_s,
                ):
                    worst = denial
        return worst

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
            state.daily.hold(cost_usd, wall)
            state.monthly.hold(cost_usd, wall)
        self._in_flight += 1
        self._open[reservation.id] = reservation
        if self.on_spend is not None and cost_usd:
            self.on_spend(SpendEvent("hold", reservation.id, unique, cost_usd, wall))
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
            for budget in (state.daily, state.monthly):
                if requests:
                    budget.settle(reservation.cost_usd, cost_usd, wall)
                else:
                    budget.release(reservation.cost_usd)
        if self.on_spend is not None and (reservation.cost_usd or cost_usd):
            op: Literal["settle", "release"] = "settle" if requests else "release"
            self.on_spend(SpendEvent(op, reservation.id, reservation.scopes, cost_usd, wall))

    def _denials(
        self, scope: Scope, state: _ScopeState, tokens: int, cost: float, mono: float, wall: float
    ) -> Iterable[Denial]:
        label, lim = _label(scope), state.limits
        if not state.requests.admits(1, mono):
            wait = state.requests.time_until(1, mono)
            if math.isinf(wait):
                msg = f"{label} allows no requests (rpm={lim.rpm})"
            else:
                msg = f"{label} is over its requests-per-minute limit (rpm={lim.rpm})"
            yield Denial(*scope, "rpm", wait, not math.isinf(wait), msg)
        if not state.tokens.admits(tokens, mono):
            wait = state.tokens.time_until(tokens, mono)
            if math.isinf(wait):
                msg = (
                    f"the request's estimated {tokens} tokens exceed {label}'s "
                    f"tokens-per-minute limit (tpm={lim.tpm}), so it can never be admitted; "
                    "lower max_tokens or raise tpm"
                )
            else:
                msg = f"{label} is over its tokens-per-minute limit (tpm={lim.tpm})"
            yield Denial(*scope, "tpm", wait, not math.isinf(wait), msg)
        budgets: tuple[tuple[BudgetWindow, LimitName, str], ...] = (
            (state.daily, "daily_budget", "UTC day"),
            (state.monthly, "monthly_budget", "UTC month"),
        )
        for budget, limit_name, per in budgets:
            if budget.admits(cost, wall):
                continue
            wait = budget.retry_after(cost, wall)
            limit_usd = budget.limit_usd or 0.0
            if math.isinf(wait):
                msg = (
                    f"the request's estimated cost {_usd(cost)} exceeds {label}'s whole "
                    f"{limit_name.replace('_', ' ')} ({_usd(limit_usd)} per {per}), "
                    "so it can never be admitted"
                )
            else:
                msg = (
                    f"{label} is over its {limit_name.replace('_', ' ')} "
                    f"({_usd(limit_usd)} per {per}; {_usd(budget.used_usd(wall))} used "
                    f"or in flight)"
                )
            yield Denial(*scope, limit_name, wait, not math.isinf(wait), msg)

    # -- reporting ---------------------------------------------------------------------------

    def scope_snapshot(self, scope: Scope) -> dict[str, Any]:
        """Usage of one scope; ``limit``/``remaining`` are ``None`` where unlimited. Reset
        times are epoch seconds: for a rate window, when everything in it will have aged out;
        for a budget, the next calendar boundary."""
        state = self._peek(scope)
        mono, wall = self._clock.monotonic(), self._clock.now()
        out: dict[str, Any] = {"kind": scope[0], "name": scope[1], "limits": asdict(state.limits)}
        for key, window in (("requests", state.requests), ("tokens", state.tokens)):
            reset_in = window.reset_in(mono)
            out[key] = {
                "used": window.used(mono),
                "limit": window.capacity,
                "remaining": window.remaining(mono),
                "reset_at": wall + reset_in,
                "reset_in_s": reset_in,
                "window_s": window.window_s,
            }
        for key, budget in (("daily_budget", state.daily), ("monthly_budget", state.monthly)):
            out[key] = {
                "window": budget.key(wall),
                "used": budget.used_usd(wall),
                "spent": budget.spent_usd(wall),
                "held": budget.held_usd,
                "limit": budget.limit_usd,
                "remaining": budget.remaining_usd(wall),
                "reset_at": budget.reset_at(wall),
            }
        return out

    def snapshot(self) -> dict[str, Any]:
        """Everything, JSON-ready, for ``GET /v1/quota``."""
        return {
            "now": self._clock.now(),
            "in_flight": self._in_flight,
            "scopes": [self.scope_snapshot(scope) for scope in self.scopes()],
        }

    def ratelimit_headers(self, scope: Scope) -> dict[str, str]:
        """OpenAI-style ``x-ratelimit-{limit,remaining,reset}-{requests,tokens}`` for the
        limits this scope has (none for an unlimited one)."""
        state = self._peek(scope)
        mono = self._clock.monotonic()
        headers: dict[str, str] = {}
        for suffix, window in (("requests", state.requests), ("tokens", state.tokens)):
            if window.capacity is None:
                continue
            headers[f"x-ratelimit-limit-{suffix}"] = str(window.capacity)
            headers[f"x-ratelimit-remaining-{suffix}"] = str(window.remaining(mono))
            headers[f"x-ratelimit-reset-{suffix}"] = format_duration(window.reset_in(mono))
        return headers

    # -- persistence -------------------------------------------------------------------------

    def export_spend(self) -> dict[str, Any]:
        """Budget spend to persist. Each record carries its window key so it is only ever
        restored into the same day / month. Requests in flight are listed under ``open``:
        :meth:`restore_spend` counts those still open after the journal as spent, because
        after a crash there is no telling whether upstream billed them, and over-counting is
        the safe side of a budget."""
        wall = self._clock.now()
        return {
            "version": 1,
            "scopes": [
                {
                    "kind": kind,
                    "name": name,
                    "daily": state.daily.export(wall),
                    "monthly": state.monthly.export(wall),
                }
                for (kind, name), state in sorted(self._scopes.items())
            ],
            "open": [
                {"id": r.id, "scopes": [list(s) for s in r.scopes], "usd": r.cost_usd}
                for r in self._open.values()
                if r.cost_usd
            ],
        }

    def import_spend(self, data: Mapping[str, Any]) -> None:
        """Restore :meth:`export_spend` output; records from another window are ignored.
        Merges by taking the larger spend, so it is idempotent. Call it before serving."""
        if data.get("version") != 1 or not isinstance(data.get("scopes"), list):
            raise ValueError("not a quota spend export (version 1)")
        # Parse everything before applying anything, so a corrupt record leaves no half-import.
        parsed: list[tuple[Scope, str, str, float]] = []
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
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                raise ValueError(f"malformed quota spend record {record!r}") from exc
        wall = self._clock.now()
        for scope, which, key, spent in parsed:
            if key != window_key("day" if which == "daily" else "month", wall):
                continue  # another window's spend: yesterday's must not count today
            state = self._state(scope)
            budget = state.daily if which == "daily" else state.monthly
            budget.import_spent(key, spent, wall)

    def restore_spend(
        self, snapshot: Mapping[str, Any] | None, journal: Iterable[SpendEvent] = ()
    ) -> None:
        """Spend as of a snapshot (:meth:`export_spend`) plus the journal of what happened
        after it. Settlements are charged to the window they happened in; a request still
        open at the end (in flight at a crash) counts as spent now, as it would have held
        against the current window."""
        open_holds: dict[int, tuple[tuple[Scope, ...], float]] = {}
        if snapshot:
            self.import_spend(snapshot)
            try:
                for h in snapshot.get("open", []):
                    scopes = tuple((str(k), str(n)) for k, n in h["scopes"])
                    open_holds[int(h["id"])] = (scopes, float(h["usd"]))
            except (KeyError, TypeError, ValueError) as exc:
                raise ValueError("malformed open holds in a quota spend export") from exc
        charges: list[tuple[tuple[Scope, ...], float, float]] = []
        for e in journal:
            if e.op == "hold":
                open_holds[e.id] = (e.scopes, e.usd)
                continue
            open_holds.pop(e.id, None)
            if e.op == "settle":
                charges.append((e.scopes, e.usd, e.wall))
        now = self._clock.now()
        charges.extend((scopes, usd, now) for scopes, usd in open_holds.values())
        for scopes, usd, wall in charges:
            for scope in scopes:
                state = self._state(scope)
                for budget in (state.daily, state.monthly):
                    budget.add_spent(budget.window_key(wall), usd, now)

    # -- alerts ------------------------------------------------------------------------------

    def check_alerts(self, tracker: AlertTracker) -> list[Alert]:
        """Budget threshold crossings since the last call, on actual spend (holds may still be
        released, so they would raise false alarms)."""
        wall = self._clock.now()
        alerts: list[Alert] = []
        for scope, state in sorted(self._scopes.items()):
            for name, budget in (("daily_budget", state.daily), ("monthly_budget", state.monthly)):
                if budget.limit_usd is None:
                    continue
                alerts += tracker.check(
                    scope, name, budget.key(wall), budget.spent_usd(wall), budget.limit_usd
                )
        return alerts


# --------------------------------------------------------------------------------------------
# Alerts and queue ordering
# --------------------------------------------------------------------------------------------


class AlertTracker:
    """Fires each threshold at most once per (scope, limit, window): a budget hovering around
    80 % produces one alert, not one per request. Only the current window per (scope, limit)
    is remembered, so memory stays bounded as days go by."""

    def __init__(self, thresholds: Sequence[float] = (0.8, 0.95)) -> None:
        if any(t <= 0 for t in thresholds):
            raise ValueError("thresholds must be > 0")
        self.thresholds = sorted(set(thresholds))
        self._fired: dict[tuple[str, str, str], tuple[str, set[float]]] = {}

    def check(
        self, scope: Scope, limit_name: str, window_key: str, used: float, limit: float | None
    ) -> list[Alert]:
        if limit is None or limit <= 0:
            return []
        key = (scope[0], scope[1], limit_name)
        window, fired = self._fired.get(key, (window_key, set()))
        if window != window_key:
            window, fired = window_key, set()
        self._fired[key] = (window, fired)
        alerts = []
        for threshold in self.thresholds:
            if used >= threshold * limit and threshold not in fired:
                fired.add(threshold)
                alerts.append(
                    Alert(
                        *scope,
                        limit_name,
                        window_key,
                        threshold,
                        used,
                        limit,
                        f"{_label(scope)} has used {used / limit:.0%} of its "
                        f"{limit_name.replace('_', ' ')} for {window_key} "
                        f"({used:g} of {limit:g})",
                    )
                )
        return alerts

    def export_fired(self) -> list[dict[str, Any]]:
        return [
            {"kind": k, "name": n, "limit": lim, "window": w, "thresholds": sorted(f)}
            for (k, n, lim), (w, f) in sorted(self._fired.items())
        ]

    def import_fired(self, data: Iterable[Mapping[str, Any]]) -> None:
        """Restore what fired before a restart; a later window for the same (scope, limit)
        already recorded here wins, so stale records cannot re-arm or suppress anything."""
        for record in data:
            key = (str(record["kind"]), str(record["name"]), str(record["limit"]))
            window = str(record["window"])
            current = self._fired.get(key)
            if current is None or window > current[0]:
                self._fired[key] = (window, {float(t) for t in record["thresholds"]})
            elif window == current[0]:
                current[1].update(float(t) for t in record["thresholds"])
