"""create_app(settings): the FastAPI app and the lifespan that builds its services.

Nothing heavy happens at import time or in create_app: the model loads, the store opens and
the index rebuilds in the lifespan, so tests inject fakes at the protocol seams and the CLI
decides when to pay for the real thing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cache_service.cache.guards import AcceptConfig
from cache_service.api.reports import router as reports_router
from cache_service.api.routes import passthrough_router, router
from cache_service.backends.faiss_index import FaissIndex
from cache_service.backends.journal import SpendJournal
from cache_service.backends.jsonfile import JsonFile
from cache_service.backends.store import DiskCacheStore
from cache_service.backends.upstream import HttpUpstream
from cache_service.cache.semantic import SemanticCache
from cache_service.cache.batcher import EmbeddingBatcher
from cache_service.errors import ServiceError, error_body_for
from cache_service.cache.feedback import FeedbackLearner
from cache_service.forwarder import Forwarder, Slot
from cache_service.pipeline import Pipeline, Services
from cache_service.pricing import Price, PriceTable
from cache_service.protocols import Clock, Embedder, EntryStore, SystemClock, Upstream
from cache_service.resilience import CircuitBreaker
from cache_service.settings import ConfigError, Settings, UpstreamSetting
from cache_service.telemetry.hub import Telemetry
from cache_service.telemetry.metrics import Metrics
from cache_service.telemetry.quota_view import apply_quota_snapshot, budgets_of
from cache_service.telemetry.stats import LabelCaps, replay_stats

log = logging.getLogger("cache_service")


def create_app(
    settings: Settings,
    *,
    embedder: Embedder | None = None,
    upstream: Upstream | dict[str, Upstream] | None = None,
    store: EntryStore | None = None,
    clock: Clock | None = None,
) -> FastAPI:
    if upstream is None and settings.upstream_url is None and not settings.upstreams:
        raise ConfigError("no upstream: set upstream_url (or run `serve`, which simulates one)")

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        the_clock = clock or SystemClock()
        the_store: EntryStore = (
            store
            if store is not None
            else await asyncio.to_thread(
                DiskCacheStore, settings.store_dir, settings.store_size_limit_bytes
            )
        )
        the_embedder: Embedder = (
            embedder if embedder is not None else await asyncio.to_thread(_load_embedder, settings)
        )
        index = FaissIndex(the_embedder.dim)
        cache = SemanticCache(
            the_store,
            index,
            the_clock,
            AcceptConfig(threshold=settings.similarity_threshold),
            search_k=settings.search_k,
        )
        slots = _slots(settings, upstream, the_clock)
        default = settings.default_price
        prices = PriceTable.with_overrides(
            {k: v.model_dump() for k, v in settings.prices.items()},
            Price(default.input, default.output) if default else None,
        )
        webhook = _webhook(settings.alerts.webhook_url)
        forwarder = Forwarder(
            settings,
            slots,
            clock=the_clock,
            prices=prices,
            count_tokens=await asyncio.to_thread(_token_counter),
            ledger=JsonFile(settings.data_dir / "spend.json"),
            journal=SpendJournal(settings.data_dir),
            on_alert=webhook,
        )
        batcher = EmbeddingBatcher(the_embedder, max_batch=settings.embed_batch_max)
        telemetry = await asyncio.to_thread(
            Telemetry.open,
            settings.outcome_log_path if settings.outcome_log else None,
            retention_days=settings.outcome_log_retention_days,
            max_rows=settings.outcome_log_max_rows,
            log_prompts=settings.log_prompts,
            clock=the_clock,
        )
        telemetry.metrics.cache_size_callback(lambda: (len(cache.index), the_store.volume()))
        telemetry.budgets = lambda: budgets_of(forwarder.manager.snapshot())
        telemetry.before_scrape = lambda: apply_quota_snapshot(
            telemetry.metrics, forwarder.manager.snapshot()
        )
        forwarder.metrics = telemetry.metrics
        app.state.telemetry = telemetry
        stats = await asyncio.to_thread(lambda: replay_stats(telemetry.events()))
        labels = LabelCaps.of(settings.max_label_values)
        namespaces, models = stats.labels()
        labels.namespace.seed(namespaces)
        labels.model.seed(models)
        services = Services(
            settings=settings,
            cache=cache,
            batcher=batcher,
            forwarder=forwarder,
            learner=FeedbackLearner(settings.similarity_threshold),
            telemetry=telemetry,
            stats=stats,
            labels=labels,
            prices=prices,
            clock=the_clock,
        )
        learner_file = JsonFile(settings.data_dir / "feedback.json")
        services.learner.load(learner_file.load())
        app.state.pipeline = Pipeline(services)
        app.state.learner_file = learner_file
        # The index is derived from the store; until it is rebuilt, exact hits are served
        # and semantic lookups are skipped (readyz says so), instead of refusing traffic.
        rebuild = asyncio.create_task(_rebuild(cache))
        sweeper = asyncio.create_task(
            _sweep_forever(cache, settings.sweep_interval_s, telemetry.metrics)
        )
        persister = asyncio.create_task(
            forwarder.persist_forever(settings.spend_snapshot_interval_s)
        )
        try:
            yield
        finally:
            tasks = (rebuild, sweeper, persister, *services.background)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await asyncio.to_thread(forwarder.close)
            await asyncio.to_thread(telemetry.close)
            for slot in slots:
                await slot.client.aclose()
            batcher.close()
            the_store.close()

    app = FastAPI(
        title="cache-service",
        summary="Semantic response cache sidecar for OpenAI-compatible LLM APIs",
        lifespan=lifespan,
    )
    app.include_router(router)
    app.include_router(reports_router)
    app.include_router(passthrough_router)
    _install_error_handlers(app)
    app.add_middleware(RequestIdMiddleware)
    return app


_SAFE_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


class RequestIdMiddleware:
    """The one place X-Request-Id is put on answers: every answer, errors raised before any
    handler ran included, and over an upstream's own id. A caller's own id is kept (so its
    logs and ours join) when it is a plain token; anything else in that header is replaced,
    since it ends up in log lines."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = next((v for k, v in scope["headers"] if k == b"x-request-id"), b"").decode(
            "latin-1"
        )
        rid = given if _SAFE_ID.fullmatch(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = rid

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)["x-request-id"] = rid
            await send(message)

        await self.app(scope, receive, send_with_id)


def _slots(
    settings: Settings, injected: Upstream | dict[str, Upstream] | None, clock: Clock
) -> list[Slot]:
    """The fallback chain: configured upstreams in order, or one "primary" at upstream_url.
    Tests inject clients by upstream name (or one client for "primary")."""
    by_name = injected if isinstance(injected, dict) else {}
    configured = settings.upstreams or [
        UpstreamSetting(name="primary", base_url=settings.upstream_url or "http://unset")
    ]
    slots = []
    for u in configured:
        client = by_name.get(u.name)
        if client is None and injected is not None and not isinstance(injected, dict):
            client = injected
        if client is None:
            key = os.environ.get(u.api_key_env) if u.api_key_env else None
            client = HttpUpstream(
                u.base_url,
                api_key=key or settings.upstream_api_key,
                timeout_s=settings.upstream_timeout_s,
                connect_timeout_s=settings.upstream_connect_timeout_s,
            )
        breaker = CircuitBreaker(clock, settings.breaker_failures, settings.breaker_cooldown_s)
        slots.append(Slot(u.name, client, u.models, breaker))
    return slots


def _webhook(url: str | None) -> Callable[[dict[str, Any]], Coroutine[Any, Any, None]] | None:
    if not url:
        return None

    async def post(payload: dict[str, Any]) -> None:
        try:
            async with httpx.AsyncClient(timeout=5) as client:
                await client.post(url, json=payload)
        except httpx.HTTPError:
            log.warning("alert webhook failed", extra={"url": url})

    return post


def _token_counter() -> Callable[[str], int]:
    from cache_service.backends.embedder import load_token_counter

    return load_token_counter()


def _load_embedder(settings: Settings) -> Embedder:
    from cache_service.backends.embedder import SentenceTransformerEmbedder

    return SentenceTransformerEmbedder(
        settings.model_dir, settings.embedder_backend, settings.embed_threads
    )


async def _rebuild(cache: SemanticCache) -> None:
    count = await asyncio.to_thread(cache.rebuild)
    log.info("index rebuilt from store", extra={"entries": count})


async def _sweep_forever(cache: SemanticCache, interval_s: float, metrics: Metrics) -> None:
    while True:
        await asyncio.sleep(interval_s)
        try:
            swept = await asyncio.to_thread(cache.sweep)
            metrics.expired(swept.expired)
            metrics.evicted(swept.evicted)
            if swept.expired or swept.evicted:
                log.info("swept", extra={"expired": swept.expired, "evicted": swept.evicted})
        except Exception:
            log.exception("sweep failed; will try again")


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError) -> JSONResponse:
        body = error_body_for(
            request.url.path, exc.message, exc.type, param=exc.param, code=exc.code
        )
        return JSONResponse(body, status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        first: dict[str, Any] = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        msg = f"{where}: {first.get('msg', 'invalid request')}"
        body = error_body_for(request.url.path, msg, "invalid_request_error", param=where)
        return JSONResponse(body, 400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        body = error_body_for(request.url.path, str(exc.detail), kind)
        return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        body = error_body_for(
            request.url.path, "internal error in the cache sidecar", "server_error"
        )
        return JSONResponse(body, status_code=500)
