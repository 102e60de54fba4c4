"""The quota ledger: the one interface between the request path and whoever keeps count of
requests, tokens and dollars (the in-process ledger with its journal today, Redis for a
fleet of replicas tomorrow).

Every implementation gives the same guarantees, stated in `manager.py` and proved by the
contract suite in `tests/contract/test_quota_ledger.py`: in any 60 s window admitted
requests ≤ rpm and admitted tokens ≤ tpm (plus settled overruns); in any UTC day requests ≤
rpd and tokens ≤ tpd; spent + held ≤ each budget through admission; admission is
all-or-nothing across the request's scopes; settle and release are idempotent.

Reservations are opaque ids: the request path holds a `Held` and gives it back, never
touching what the ledger keeps behind it. Snapshots are typed (`usage.py`), not dicts for
other modules to parse back.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from cache_service.quota.limits import Denial, Limits, Scope
from cache_service.quota.usage import QuotaSnapshot, ScopeUse


@dataclass(frozen=True, slots=True)
class Held:
    """An admitted reservation as any ledger hands it out: an opaque id and the estimate it
    holds (charged as it is if the answer reports no usage)."""

    id: str
    scopes: tuple[Scope, ...]
    tokens: int
    cost_usd: float


@dataclass(frozen=True, slots=True)
class Booking:
    """A request settled by another ledger (a replica's own, while the shared one was
    away), to be charged to a shared ledger later: see `failover.py`."""

    id: str
    scopes: tuple[Scope, ...]
    tokens: int
    cost_usd: float
    wall: float


class QuotaLedger(Protocol):
    async def reserve(self, scopes: Sequence[Scope], tokens: int, cost_usd: float) -> Held | Denial:
        """Admit against every scope or none."""
        ...

    async def check(self, scopes: Sequence[Scope], tokens: int, cost_usd: float) -> Denial | None:
        """The denial `reserve` would give now, taking nothing."""
        ...

    async def settle(self, held: Held, tokens: int, cost_usd: float) -> None:
        """Charge what the upstream reported in place of the estimate. Idempotent, as is
        `release`: closing a closed reservation does nothing."""
        ...

    async def release(self, held: Held) -> None:
        """Nothing was sent upstream: the reservation stops counting at all."""
        ...

    async def configure(
        self, kind: str, name: str, limits: Limits, *, at_run_time: bool = False
    ) -> Limits:
        """Set or change a scope's limits; usage so far is kept. Returns the limits in force.

        `at_run_time`: an operator's change (the admin API), which the configuration's
        limits, applied again (a replica's restart, a project's first request), do not
        undo. The configuration's are applied unless the scope's limits were changed at run
        time since the configuration last gave it the same limits (or never gave it any): a
        changed configuration is the newer intent, and wins."""
        ...

    async def scope_use(self, scope: Scope) -> ScopeUse: ...

    async def snapshot(self) -> QuotaSnapshot: ...

    async def ratelimit_headers(self, scope: Scope) -> dict[str, str]:
        """OpenAI-style `x-ratelimit-*` headers for a scope's per-minute windows."""
        ...
