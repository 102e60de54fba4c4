"""One scope's windows together: what refuses a request there and in what words, and how the
scope reads in ``/v1/quota`` and in OpenAI-style ``x-ratelimit-*`` headers.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

from cache_service.quota.limits import Denial, LimitName, Limits, Scope, label
from cache_service.quota.money import format_usd
from cache_service.quota.usage import BudgetUse, DayUse, RateUse, ScopeUse
from cache_service.quota.windows import BudgetWindow, DayCounter, SlidingWindow


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


_PER = {"daily_budget": "UTC day", "monthly_budget": "UTC month"}


def denial(
    scope: Scope,
    limit_name: LimitName,
    wait: float,
    *,
    tokens: int,
    cost: float,
    limit: float | None,
    used: float = 0,
) -> Denial:
    """The refusal of a request (``tokens``, ``cost``) by one limit, worded for a 429 body:
    ``wait`` is ``math.inf`` when the request alone exceeds the limit, ``limit`` the limit's
    value (dollars for budgets) and ``used`` what the calendar window has used or holds. Every
    ledger words its refusals here, so they read the same whoever keeps count."""
    name = label(scope)
    never = math.isinf(wait)
    if limit_name == "rpm":
        if never:
            msg = f"{name} allows no requests (rpm={limit})"
        else:
            msg = f"{name} is over its requests-per-minute limit (rpm={limit})"
    elif limit_name == "tpm":
        if never:
            msg = (
                f"the request's estimated {tokens} tokens exceed {name}'s "
                f"tokens-per-minute limit (tpm={limit}), so it can never be admitted; "
                "lower max_tokens or raise tpm"
            )
        else:
            msg = f"{name} is over its tokens-per-minute limit (tpm={limit})"
    elif limit_name == "rpd":
        if never:
            msg = f"{name} allows no requests (rpd={limit})"
        else:
            msg = (
                f"{name} is over its requests-per-day limit (rpd={limit}; "
                f"{used} used or in flight this UTC day)"
            )
    elif limit_name == "tpd":
        if never:
            msg = (
                f"the request's estimated {tokens} tokens exceed {name}'s "
                f"tokens-per-day limit (tpd={limit}), so it can never be admitted; "
                "lower max_tokens or raise tpd"
            )
        else:
            msg = (
                f"{name} is over its tokens-per-day limit (tpd={limit}; "
                f"{used} used or in flight this UTC day)"
            )
    else:
        words, per = limit_name.replace("_", " "), _PER[limit_name]
        if never:
            msg = (
                f"the request's estimated cost {format_usd(cost)} exceeds {name}'s whole "
                f"{words} ({format_usd(limit or 0.0)} per {per}), so it can never be admitted"
            )
        else:
            msg = (
                f"{name} is over its {words} ({format_usd(limit or 0.0)} per {per}; "
                f"{format_usd(used)} used or in flight)"
            )
    return Denial(*scope, limit_name, wait, not never, msg)


class ScopeState:
    """The windows of one scope. Rate windows run on the monotonic clock (``mono``),
    calendar ones on the wall clock (``wall``); every method takes both readings from the
    caller, so one admission sees one instant everywhere."""

    __slots__ = (
        "daily",
        "day_requests",
        "day_tokens",
        "limits",
        "monthly",
        "requests",
        "tokens",
    )

    def __init__(self, limits: Limits, now: float, window_s: float) -> None:
        self.limits = limits
        self.requests = SlidingWindow(limits.rpm, window_s)
        self.tokens = SlidingWindow(limits.tpm, window_s)
        # A held request settles as exactly one request: only its release frees room, so a
        # refusal by holds alone is not worth a short retry the way tokens and dollars are.
        self.day_requests = DayCounter(limits.rpd, now, holds_shrink=False)
        self.day_tokens = DayCounter(limits.tpd, now)
        self.daily = BudgetWindow("day", limits.daily_budget_usd, now)
        self.monthly = BudgetWindow("month", limits.monthly_budget_usd, now)

    def apply(self, limits: Limits) -> None:
        self.limits = limits
        self.requests.capacity = limits.rpm
        self.tokens.capacity = limits.tpm
        self.day_requests.limit = limits.rpd
        self.day_tokens.limit = limits.tpd
        self.daily.limit_usd = limits.daily_budget_usd
        self.monthly.limit_usd = limits.monthly_budget_usd

    # -- admission ---------------------------------------------------------------------------

    def denials(
        self, scope: Scope, tokens: int, cost: float, mono: float, wall: float
    ) -> Iterator[Denial]:
        """Every limit of this scope that refuses the request now (none: it fits here)."""
        lim = self.limits
        if not self.requests.admits(1, mono):
            wait = self.requests.time_until(1, mono)
            yield denial(scope, "rpm", wait, tokens=tokens, cost=cost, limit=lim.rpm)
        if not self.tokens.admits(tokens, mono):
            wait = self.tokens.time_until(tokens, mono)
            yield denial(scope, "tpm", wait, tokens=tokens, cost=cost, limit=lim.tpm)
        counters: tuple[tuple[DayCounter, LimitName, int | None], ...] = (
            (self.day_requests, "rpd", lim.rpd),
            (self.day_tokens, "tpd", lim.tpd),
        )
        for counter, limit_name, limit in counters:
            amount = 1 if limit_name == "rpd" else tokens
            if counter.admits(amount, wall):
                continue
            wait = counter.retry_after(amount, wall)
            used = counter.used(wall)
            yield denial(scope, limit_name, wait, tokens=tokens, cost=cost, limit=limit, used=used)
        budgets: tuple[tuple[BudgetWindow, LimitName], ...] = (
            (self.daily, "daily_budget"),
            (self.monthly, "monthly_budget"),
        )
        for budget, limit_name in budgets:
            if budget.admits(cost, wall):
                continue
            wait = budget.retry_after(cost, wall)
            limit_usd = budget.limit_usd or 0.0
            used_usd = budget.used_usd(wall)
            yield denial(
                scope, limit_name, wait, tokens=tokens, cost=cost, limit=limit_usd, used=used_usd
            )

    # -- reporting ---------------------------------------------------------------------------

    def snapshot(self, scope: Scope, mono: float, wall: float) -> ScopeUse:
        """Usage; ``limit``/``remaining`` are ``None`` where unlimited."""

        def rate(window: SlidingWindow) -> RateUse:
            reset_in = window.reset_in(mono)
            return RateUse(
                used=window.used(mono),
                limit=window.capacity,
                remaining=window.remaining(mono),
                reset_at=wall + reset_in,
                reset_in_s=reset_in,
                window_s=window.window_s,
            )

        def day(counter: DayCounter) -> DayUse:
            return DayUse(
                window=counter.key(wall),
                used=counter.used(wall),
                settled=counter.settled(wall),
                held=counter.held,
                limit=counter.limit,
                remaining=counter.remaining(wall),
                reset_at=counter.reset_at(wall),
            )

        def budget(b: BudgetWindow) -> BudgetUse:
            return BudgetUse(
                window=b.key(wall),
                used=b.used_usd(wall),
                spent=b.spent_usd(wall),
                held=b.held_usd,
                limit=b.limit_usd,
                remaining=b.remaining_usd(wall),
                reset_at=b.reset_at(wall),
            )

        return ScopeUse(
            kind=scope[0],
            name=scope[1],
            limits=self.limits,
            requests=rate(self.requests),
            tokens=rate(self.tokens),
            daily_requests=day(self.day_requests),
            daily_tokens=day(self.day_tokens),
            daily_budget=budget(self.daily),
            monthly_budget=budget(self.monthly),
        )

    def ratelimit_headers(self, mono: float) -> dict[str, str]:
        """OpenAI-style ``x-ratelimit-{limit,remaining,reset}-{requests,tokens}`` for the
        per-minute limits this scope has (none for an unlimited one). OpenAI defines no
        headers for per-day limits, so rpd/tpd show only in ``/v1/quota`` and in 429s."""
        headers: dict[str, str] = {}
        for suffix, window in (("requests", self.requests), ("tokens", self.tokens)):
            if window.capacity is None:
                continue
            headers[f"x-ratelimit-limit-{suffix}"] = str(window.capacity)
            headers[f"x-ratelimit-remaining-{suffix}"] = str(window.remaining(mono))
            headers[f"x-ratelimit-reset-{suffix}"] = format_duration(window.reset_in(mono))
        return headers
