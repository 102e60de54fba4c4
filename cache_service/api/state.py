"""The services the lifespan builds, as typed state: `create_app`'s lifespan yields an
`AppState`, starlette hands it to every request as `request.state`, and each route takes
exactly the services it uses through the accessors below (no attribute bag on the app)."""

from __future__ import annotations

from typing import TypedDict

from fastapi import Request

from cache_service.cache.front import CacheFront
from cache_service.cache.tenancy import Tenancy
from cache_service.cache.verdicts import Verdicts
from cache_service.proxy.cache_api import CacheAPI
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
    cache_api: CacheAPI
    verdicts: Verdicts
    front: CacheFront
    chain: UpstreamChain
    ledger: QuotaLedger
    telemetry: Telemetry
    stats: Stats


def settings(request: Request) -> Settings:
    value: Settings = request.state.settings
    return value


def tenancy(request: Request) -> Tenancy:
    value: Tenancy = request.state.tenancy
    return value


def proxy(request: Request) -> ProxyHandler:
    value: ProxyHandler = request.state.proxy
    return value


def cache_api(request: Request) -> CacheAPI:
    value: CacheAPI = request.state.cache_api
    return value


def verdicts(request: Request) -> Verdicts:
    value: Verdicts = request.state.verdicts
    return value


def front(request: Request) -> CacheFront:
    value: CacheFront = request.state.front
    return value


def chain(request: Request) -> UpstreamChain:
    value: UpstreamChain = request.state.chain
    return value


def ledger(request: Request) -> QuotaLedger:
    value: QuotaLedger = request.state.ledger
    return value


def telemetry(request: Request) -> Telemetry:
    value: Telemetry = request.state.telemetry
    return value


def stats(request: Request) -> Stats:
    value: Stats = request.state.stats
    return value
