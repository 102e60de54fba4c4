"""The counting primitives under every limit: an exact sliding window over the monotonic
clock (rpm, tpm) and totals per UTC calendar day or month over the wall clock (dollar
budgets, rpd, tpd). Each keeps one quantity for one scope; which scopes a request counts
against, and what to tell a refused caller, is the manager's business.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from cache_service.quota.money import to_nano, to_usd

Period = Literal["day", "month"]

WINDOW_S = 60.0

# A calendar limit refused only because of in-flight holds may free up as soon as those
# settle below their estimate, which could be any moment: suggest a short retry, not the
# window reset.
HELD_RETRY_S = 1.0


def wait_until(deadline: float, now: float) -> float:
    """``deadline - now``, nudged up so that ``now + result >= deadline`` holds in floating
    point too: a caller that waits exactly this long must find the limit cleared, not miss it
    by one rounding step and wait a whole extra round."""
    wait = max(0.0, deadline - now)
    while now + wait < deadline:
        wait = math.nextafter(wait, math.inf)
    return wait


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
    move that by the adjustment itself, which is what the manager's guarantees spell out.

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
                return wait_until(charge.at + self.window_s, now)
        raise AssertionError("unreachable: emptying the window always makes room")

    def reset_in(self, now: float) -> float:
        """Seconds until nothing counts any more (OpenAI's "resets to its initial state")."""
        now = self._prune(now)
        for charge in reversed(self._log):
            if charge.amount:
                return wait_until(charge.at + self.window_s, now)
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


class _CalendarTally:
    """An integer total for the current UTC day or month plus what requests in flight hold:
    what :class:`BudgetWindow` (nano-dollars) and :class:`DayCounter` (requests or tokens)
    share, so the two cannot drift apart in how they roll over or admit.

    ``used = spent + held``. An amount is admitted only if ``used + amount <= limit`` and the
    window is not already exhausted: a request priced at $0 (a model missing from the price
    table) must not slip through a spent budget.

    Held amounts are not tied to a window: a request reserved at 23:59:59 and settled after
    midnight is charged to the window it settles in (when it actually lands), and it holds
    against the new window until then.
    """

    def __init__(self, period: Period, now: float, *, holds_shrink: bool) -> None:
        self.period: Period = period
        self._limit: int | None = None
        # Whether a hold usually settles below itself (an estimate) or exactly at it (one
        # request): only in the first case is waiting for holds to settle worth suggesting.
        self._holds_shrink = holds_shrink
        self._key = window_key(period, now)
        # Calendar arithmetic (datetime) was most of the cost of an admission; within a
        # window a float comparison is enough.
        self._rolls_at = window_reset_at(period, now)
        self._spent = 0
        self._held = 0
        self._in_flight = 0

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

    def _fits(self, used: int, amount: int) -> bool:
        return self._limit is None or (used < self._limit and used + amount <= self._limit)

    def _admits(self, amount: int, now: float) -> bool:
        if now >= self._rolls_at:  # checked here to save a call: runs ~6 times per request
            self._roll(now)
        return self._fits(self._spent + self._held, amount)

    def _never_admits(self, amount: int) -> bool:
        return self._limit is not None and not self._fits(0, amount)

    def _retry_after(self, amount: int, now: float) -> float:
        """0 if it fits now; ``math.inf`` if it never can; :data:`HELD_RETRY_S` if only
        holds that may settle lower are in the way; otherwise the time to the reset."""
        self._roll(now)
        if self._fits(self._spent + self._held, amount):
            return 0.0
        if self._never_admits(amount):
            return math.inf
        to_reset = wait_until(self.reset_at(now), now)
        if self._holds_shrink and self._fits(self._spent, amount):
            return min(HELD_RETRY_S, to_reset)
        return to_reset

    def _hold(self, amount: int, now: float) -> None:
        if now >= self._rolls_at:
            self._roll(now)
        self._held += amount
        self._in_flight += 1

    def _settle(self, held: int, actual: int, now: float) -> None:
        """Swap a hold for the actual amount, charged to the current window."""
        self._release(held)
        if now >= self._rolls_at:
            self._roll(now)
        if actual > 0:
            self._spent += actual

    def _release(self, held: int) -> None:
        self._held -= held
        self._in_flight -= 1
        if self._in_flight <= 0:
            # Nothing in flight means nothing held; this also absorbs any caller mismatch.
            self._in_flight = 0
            self._held = 0

    def _import(self, key: str, spent: int, now: float) -> bool:
        """Merge a persisted total if it belongs to the current window; returns whether it
        did. The larger of the two rather than the sum, so importing the same export twice
        (or an export of this very process) does not double-count."""
        if key != self._roll(now):
            return False
        self._spent = max(self._spent, spent)
        return True

    def _add(self, key: str, amount: int, now: float) -> bool:
        """Add (or, negative, take back) an amount recorded in window ``key``, if that is the
        current window; returns whether it did. Never below zero."""
        if key != self._roll(now):
            return False
        self._spent = max(0, self._spent + amount)
        return True


class BudgetWindow(_CalendarTally):
    """Dollar spend in one UTC calendar day or month, plus what in-flight requests hold;
    kept in nano-dollars, read and written in dollars: each method is the shared integer
    operation of the same name (``admits`` → ``_admits``...) with the conversion around it."""

    def __init__(self, period: Period, limit_usd: float | None, now: float) -> None:
        super().__init__(period, now, holds_shrink=True)
        self.limit_usd = limit_usd

    @property
    def limit_usd(self) -> float | None:
        return None if self._limit is None else to_usd(self._limit)

    @limit_usd.setter
    def limit_usd(self, value: float | None) -> None:
        if value is not None and not (math.isfinite(value) and value >= 0):
            raise ValueError(f"a budget must be a finite amount >= 0, got {value}")
        self._limit = None if value is None else to_nano(value)

    def spent_usd(self, now: float) -> float:
        self._roll(now)
        return to_usd(self._spent)

    @property
    def held_usd(self) -> float:
        return to_usd(self._held)

    def used_usd(self, now: float) -> float:
        self._roll(now)
        return to_usd(self._spent + self._held)

    def remaining_usd(self, now: float) -> float | None:
        self._roll(now)
        if self._limit is None:
            return None
        return to_usd(max(0, self._limit - self._spent - self._held))

    def admits(self, cost_usd: float, now: float) -> bool:
        return self._admits(to_nano(cost_usd), now)

    def never_admits(self, cost_usd: float) -> bool:
        """True if even an empty window could not take it."""
        return self._never_admits(to_nano(cost_usd))

    def retry_after(self, cost_usd: float, now: float) -> float:
        return self._retry_after(to_nano(cost_usd), now)

    def hold(self, cost_usd: float, now: float) -> None:
        self._hold(to_nano(cost_usd), now)

    def settle(self, held_usd: float, actual_usd: float, now: float) -> None:
        self._settle(to_nano(held_usd), to_nano(max(0.0, actual_usd)), now)

    def release(self, held_usd: float) -> None:
        self._release(to_nano(held_usd))

    def export(self, now: float) -> dict[str, Any]:
        self._roll(now)
        return {"window": self._key, "spent_usd": to_usd(self._spent), "held_usd": self.held_usd}

    def import_spent(self, key: str, spent_usd: float, now: float) -> bool:
        return self._import(key, to_nano(spent_usd), now)

    def add_spent(self, key: str, usd: float, now: float) -> bool:
        return self._add(key, to_nano(usd), now)


class DayCounter(_CalendarTally):
    """Requests or tokens in one UTC day (rpd, tpd), plus what in-flight requests hold.

    Same rules as a daily budget: admitted only while ``settled + held + amount <= limit``
    and the day is not already used up; a hold is charged, at its actual amount, to the day
    it settles in; an actual above the hold is charged in full (debt, as for tpm). Pass
    ``holds_shrink=False`` when a hold always settles at its own amount (one request), so
    that a refusal caused only by holds is not answered with a futile short retry.
    """

    def __init__(self, limit: int | None, now: float, *, holds_shrink: bool = True) -> None:
        super().__init__("day", now, holds_shrink=holds_shrink)
        self.limit = limit

    @property
    def limit(self) -> int | None:
        return self._limit

    @limit.setter
    def limit(self, value: int | None) -> None:
        if value is not None and value < 0:
            raise ValueError(f"a daily limit must be >= 0, got {value}")
        self._limit = value

    def settled(self, now: float) -> int:
        self._roll(now)
        return self._spent

    @property
    def held(self) -> int:
        return self._held

    def used(self, now: float) -> int:
        self._roll(now)
        return self._spent + self._held

    def remaining(self, now: float) -> int | None:
        """Room left today (0 while over the limit); ``None`` when unlimited."""
        self._roll(now)
        if self._limit is None:
            return None
        return max(0, self._limit - self._spent - self._held)

    # Counts need no conversion, so the shared integer operations serve as they are (a
    # wrapper per call was measurable on the admission path: six per scope and request).
    admits = _CalendarTally._admits
    retry_after = _CalendarTally._retry_after
    hold = _CalendarTally._hold
    settle = _CalendarTally._settle
    release = _CalendarTally._release
    import_settled = _CalendarTally._import
    add_settled = _CalendarTally._add

    def export(self, now: float) -> dict[str, Any]:
        self._roll(now)
        return {"window": self._key, "settled": self._spent, "held": self._held}
