"""The services the lifespan builds, as typed state: `create_app`'s lifespan yields an
`AppState`, starlette hands it to every request as `request.state`, and each route takes
exactly the services it uses through `of(request)`, checked by mypy against `AppState` (no
attribute bag on the app)."""

from __future__ import annotations

from typing import TypedDict, cast

from fastapi import Request

from cache_service.cache.front import CacheFront
from cache_service.cache.tenancy import Tenancy
from cache_service.cache.verdicts import Verdicts
from cache_service.fleet import Fleet
from cache_service.proxy.cache_api import CacheAPI
from cache_service.proxy.embeddings import EmbeddingCache
from cache_service.proxy.handler import ProxyHandler
from cache_service.quota.ledger import QuotaLedger
from cache_service.settings import Settings
from cache_service.telemetry.hub import Telemetry
from cache_service.telemetry.stats import Stats
from cache_service.upstream.chain import UpstreamChain


class AppState(TypedDict):
    settings: Settings
    tenancy: Tenancy
    proxy: ProxyHandler
    embeddings: EmbeddingCache
    cache_api: CacheAPI
    verdicts: Verdicts
    front: CacheFront
    chain: UpstreamChain
    ledger: QuotaLedger
    telemetry: Telemetry
    stats: Stats
    fleet: Fleet | None
    """The replicas sharing this one's Redis (None: this process alone)."""


def of(request: Request) -> AppState:
    """The lifespan's services, typed: `state.of(request)["proxy"]`. Starlette copies the
    dict the lifespan yielded into every request's state."""
    return cast(AppState, request.state._state)
