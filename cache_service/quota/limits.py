"""What a scope may use and how a refusal is told: the values a caller configures
(:class:`Limits`) and gets back when a request does not fit (:class:`Denial`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Literal

Scope = tuple[str, str]
"""``(kind, name)``: ``("project", "default")``, ``("upstream", "openai")``, ``("global",
"total")``. Kinds are not enforced here; the caller decides which scopes a request counts
against."""

LimitName = Literal["rpm", "tpm", "rpd", "tpd", "daily_budget", "monthly_budget"]


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-scope limits; ``None`` means unlimited. Usage is tracked either way.

    ``rpm``/``tpm`` are per sliding 60 s window; ``rpd``/``tpd`` per UTC calendar day (reset
    at 00:00 UTC, like ``daily_budget_usd``). New fields go last: callers may construct this
    positionally.
    """

    rpm: int | None = None
    tpm: int | None = None
    daily_budget_usd: float | None = None
    monthly_budget_usd: float | None = None
    rpd: int | None = None
    tpd: int | None = None

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0 or None, got {value}")


@dataclass(frozen=True, slots=True)
class Denial:
    """Why a reservation was refused, worded for a 429 body.

    ``retry_after_s`` is the wait if nothing in flight settles below its estimate or is
    released (either can only make it sooner, so a queue should also re-try on those). For
    a calendar limit (budgets, rpd, tpd) it is the time to the window reset, or
    :data:`~cache_service.quota.windows.HELD_RETRY_S` when only in-flight holds that may
    settle lower (dollars, tokens) are in the way. ``retryable`` is False (and the wait
    ``math.inf``) when no wait can help: the request alone exceeds the limit.
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


def worst(denials: Iterable[Denial]) -> Denial | None:
    """The refusal that matters most to the caller when several limits refuse: a
    non-retryable one first, else the longest wait, since retrying before that is futile
    however the others clear. Ties go to the first, so the order of scopes and limits
    decides which one is named."""
    chosen: Denial | None = None
    for denial in denials:
        if chosen is None or (denial.retryable, -denial.retry_after_s) < (
            chosen.retryable,
            -chosen.retry_after_s,
        ):
            chosen = denial
    return chosen


def label(scope: Scope) -> str:
    """``project 'default'``: how messages name a scope."""
    return f"{scope[0]} '{scope[1]}'"
