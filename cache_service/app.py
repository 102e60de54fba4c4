"""create_app(settings): the composition root. Settings → services, a lifespan that builds
them and yields them as typed state (`api/state.py`), and the routers.

Nothing heavy happens at import time or in create_app: the model loads, the store opens and
the index rebuilds in the lifespan, so tests inject fakes at the protocol seams and the CLI
decides when to pay for the real thing.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import httpx
from fastapi import FastAPI

from cache_service import verifier_setup
from cache_service.api import admin, cache_api, dashboard, openapi, ops, proxy, reports
from cache_service.api.cache_status import CacheStatusMiddleware
from cache_service.api.middleware import install_error_handlers, install_request_ids
from cache_service.api.proxy_lane import ProxyLane
from cache_service.api.state import AppState
from cache_service.api.trim import TrimAfterLargeBodies
from cache_service.backends.aiohttp_upstream import AiohttpUpstream
from cache_service.backends.entry_journal import EntryJournal
from cache_service.backends.faiss_index import FaissIndex
from cache_service.backends.journal import SpendJournal
from cache_service.backends.jsonfile import JsonFile
from cache_service.backends.snapshots import SNAPSHOT_DIR, SNAPSHOT_INTERVAL_S, IndexSnapshots
from cache_service.backends.store import DiskCacheStore
from cache_service.backends.upstream import HttpUpstream
from cache_service.cache.batcher import EmbeddingBatcher
from cache_service.cache.capacity import Capacity
from cache_service.cache.feedback import FeedbackLearner
from cache_service.cache.front import CacheFront
from cache_service.cache.guards import AcceptConfig
from cache_service.cache.index_upkeep import rebuild_index, save_snapshot, snapshot_forever
from cache_service.cache.semantic import EntryIds, SemanticCache
from cache_service.cache.sweeping import sweep_forever
from cache_service.cache.tenancy import Tenancy
from cache_service.cache.verdicts import Verdicts
from cache_service.cache.write_behind import WriteBehind, journal_dir, replay
from cache_service.model_identity import ModelIdentity
from cache_service.pricing import PriceTable, price_of
from cache_service.protocols import Clock, Embedder, EntryStore, PairScorer, SystemClock, Upstream
from cache_service.proxy.audit import Auditor
from cache_service.proxy.cache_api import CacheAPI
from cache_service.proxy.embeddings import EmbeddingCache
from cache_service.proxy.handler import ProxyHandler
from cache_service.proxy.recorder import Recorder
from cache_service.quota.ledger import QuotaLedger
from cache_service.quota.local import LocalLedger
from cache_service.quota.projects import Projects
from cache_service.redis_fleet import RedisFleet
from cache_service.resilience import CircuitBreaker
from cache_service.settings import ConfigError, Settings, UpstreamSetting
from cache_service.telemetry.hub import Telemetry
from cache_service.telemetry.stats import LabelCaps, replay_stats
from cache_service.upstream.chain import Slot, UpstreamChain

log = logging.getLogger("cache_service")


def create_app(
    settings: Settings,
    *,
    embedder: Embedder | None = None,
    upstream: Upstream | dict[str, Upstream] | None = None,
    store: EntryStore | None = None,
    clock: Clock | None = None,
    pair_scorer: PairScorer | None = None,
) -> FastAPI:
    """`pair_scorer` injects the verifier's model (tests); it is used unless `verifier` is
    "off", whether or not a model directory exists."""
    if upstream is None and settings.upstream_url is None and not settings.upstreams:
        raise ConfigError("no upstream: set upstream_url (or run `serve`, which simulates one)")

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[AppState]:
        the_clock = clock or SystemClock()
        shared = RedisFleet.open(settings, the_clock) if settings.redis_url else None
        the_store: EntryStore
        if store is not None:
            the_store = store
        elif shared is not None:
            the_store = shared.store
        else:
            the_store = await asyncio.to_thread(
                DiskCacheStore, settings.store_dir, settings.store_size_limit_bytes
            )
        if shared is not None and embedder is None:
            # Before anything is read: a replica of another model must not join the fleet.
            await shared.claim_model(ModelIdentity.of_model_dir(settings.model_dir))
        # A store this process owns: read inline (latest exact hits from memory), written
        # behind its answers, its limit and exact keys watched here. Not a shared one (Redis).
        local = the_store if isinstance(the_store, DiskCacheStore) else None
        # The model loads (seconds) while the index is restored from the store (seconds, ten
        # at a million entries), not before it: the index needs only the dimension, which
        # the model's manifest states (and the loaded model must then match).
        loading = (
            None
            if embedder is not None
            else asyncio.create_task(asyncio.to_thread(_load_embedder, settings))
        )
        dim = embedder.dim if embedder is not None else _manifest_dim(settings)
        # The verifier's model loads beside them too: the cache needs only to know whether
        # there will be one (it decides the guards), not the model itself.
        with_verifier = verifier_setup.wanted(settings, pair_scorer)
        verifying = asyncio.create_task(verifier_setup.load(settings, pair_scorer))
        # Recall is measured down to the lowest cosine any search serves from.
        index = FaissIndex(dim, recall_floor=verifier_setup.search_floor(settings, pair_scorer))
        cache = SemanticCache(
            the_store,
            index,
            the_clock,
            AcceptConfig(
                threshold=settings.similarity_threshold,
                guards=not with_verifier or settings.verifier_guards,
            ),
            search_k=settings.search_k,
            keep_hot=local is not None,
        )
        # A local store that lists its ids cheaply restarts from a snapshot of the index,
        # reconciled with it (the store stays the truth), instead of reading every entry.
        # With Redis, the index feed builds the index once the rest is wired (below).
        snapshots = (
            IndexSnapshots(
                settings.data_dir / SNAPSHOT_DIR,
                cache,
                index,
                the_store,
                dim=dim,
                model=_model_tag(settings) if embedder is None else None,
            )
            if shared is None and isinstance(the_store, EntryIds)
            else None
        )
        # Entries answered but not yet stored when the last process stopped go to the store
        # first, so the index is built with them (a fleet's store is written before answers).
        writer: WriteBehind | None = None
        if local is not None:
            journal = EntryJournal(journal_dir(settings.data_dir))
            now = the_clock.now()
            put = functools.partial(local.put, now=now)
            replayed = await asyncio.to_thread(replay, journal, put, now)
            if replayed:
                log.info("entries replayed from the journal", extra={"entries": replayed})
            writer = WriteBehind(cache.put, journal)
        # Until the index is rebuilt, exact hits are served and semantic lookups are skipped
        # (readyz says so), instead of refusing traffic.
        rebuilding = (
            None if shared is not None else asyncio.create_task(rebuild_index(cache, snapshots))
        )
        try:
            verifier = await verifying
            the_embedder: Embedder = await loading if loading is not None else embedder  # type: ignore[assignment]
            if the_embedder.dim != dim:
                raise ConfigError(
                    f"the model makes {the_embedder.dim}-d vectors; its manifest says {dim}"
                )
        except BaseException:
            for task in (loading, rebuilding, verifying):
                if task is not None:
                    task.cancel()
            raise
        # With a verifier the floor is where cosine matching starts, so what feedback
        # learns is measured from there (front.search_threshold says how it is applied).
        learner = FeedbackLearner(
            verifier.floor if verifier is not None else settings.similarity_threshold
        )
        learner_file = JsonFile(settings.data_dir / "feedback.json")
        if shared is not None:
            await shared.load_feedback(learner)
        else:
            learner.load(await asyncio.to_thread(learner_file.load))
        batcher = EmbeddingBatcher(the_embedder, max_batch=settings.embed_batch_max)
        front = CacheFront(
            cache,
            batcher,
            learner,
            embed_timeout_s=settings.embed_timeout_ms / 1000,
            default_ttl_s=settings.default_ttl_s,
            verifiers=(verifier,) if verifier is not None else (),
            floor=verifier.floor if verifier is not None else None,
            reads_inline=local is not None,
            writer=writer,
        )

        local_ledger: LocalLedger | None = None
        ledger: QuotaLedger
        if shared is not None:
            ledger = shared.ledger
        else:
            ledger = local_ledger = await asyncio.to_thread(
                LocalLedger,
                the_clock,
                alert_thresholds=settings.alerts.thresholds,
                snapshot_file=JsonFile(settings.data_dir / "spend.json"),
                journal=SpendJournal(settings.data_dir),
                on_alert=_webhook(settings.alerts.webhook_url),
            )
        projects = Projects(settings, ledger)
        await projects.configure_all()

        telemetry = await asyncio.to_thread(
            Telemetry.open,
            settings.outcome_log_path if settings.outcome_log else None,
            retention_days=settings.outcome_log_retention_days,
            max_rows=settings.outcome_log_max_rows,
            log_prompts=settings.log_prompts,
            clock=the_clock,
            quota=ledger.snapshot,
            cache_size=lambda: (len(cache.index), the_store.volume()),
        )
        telemetry.metrics.watch_embedder(batcher)
        if shared is not None:
            fleet_parts = shared
            telemetry.metrics.watch_fleet(lambda: fleet_parts.gauges(front.store_unavailable))
        if verifier is not None:
            telemetry.metrics.watch_verifier(verifier)
        stats = await asyncio.to_thread(lambda: replay_stats(telemetry.events()))
        labels = LabelCaps.of(settings.max_label_values)
        namespaces, models = stats.labels()
        labels.namespace.seed(namespaces)
        labels.model.seed(models)

        default = settings.default_price
        prices = PriceTable.with_overrides(
            {k: v.model_dump() for k, v in settings.prices.items()},
            price_of(default.model_dump()) if default else None,
        )
        slots = _slots(settings, upstream, the_clock)
        chain = UpstreamChain(
            settings,
            slots,
            ledger=ledger,
            projects=projects,
            prices=prices,
            count_tokens=await asyncio.to_thread(_token_counter),
            metrics=telemetry.metrics,
            clock=the_clock,
        )
        recorder = Recorder(
            stats, telemetry, labels, prices, the_clock, log_prompts=settings.log_prompts
        )
        auditor = Auditor(
            chain,
            batcher,
            telemetry.metrics,
            sample_rate=settings.audit_sample_rate,
            agree_similarity=settings.audit_agree_similarity,
            # A fleet's replicas each audit their own hits; the CLI reads one data_dir.
            file=JsonFile(settings.data_dir / "audit.json") if shared is None else None,
        )
        await auditor.load()
        tenancy = Tenancy(
            admin_key=settings.admin_key,
            identity_header=settings.identity_header,
            shared_namespaces=settings.shared_namespaces,
        )
        handler = ProxyHandler(
            front,
            chain,
            recorder,
            learner,
            auditor,
            the_clock,
            cache_tool_calls=settings.cache_tool_calls,
            fleet=shared.flights if shared is not None else None,
            fleet_wait_s=settings.request_deadline_s,
            fleet_served=shared.served if shared is not None else None,
        )
        # With Redis, the index feed builds the index, then follows the other replicas.
        background = shared.tasks(cache, learner, stats) if shared is not None else []
        if snapshots is not None:
            background.append(snapshot_forever(snapshots, SNAPSHOT_INTERVAL_S))
        # A shared store's limit is its Redis's own (maxmemory), not this replica's.
        capacity = Capacity(settings.store_size_limit_bytes) if local is not None else None
        cache.capacity = capacity
        if capacity is not None:
            telemetry.metrics.watch_size_limit(capacity.limit_bytes)
        background.append(
            sweep_forever(
                cache, settings.sweep_interval_s, telemetry.metrics, capacity, telemetry.sizes
            )
        )
        if local_ledger is not None:
            background.append(local_ledger.persist_forever(settings.spend_snapshot_interval_s))
        if local is not None and rebuilding is not None:
            background.append(_load_keys(local, rebuilding))
        tasks = [asyncio.create_task(work) for work in background]
        if rebuilding is not None:
            tasks.append(rebuilding)
        try:
            yield AppState(
                settings=settings,
                tenancy=tenancy,
                proxy=handler,
                embeddings=EmbeddingCache(front, chain, recorder, settings, the_clock),
                cache_api=CacheAPI(
                    front, recorder, telemetry.metrics, settings, the_clock, tenancy
                ),
                verdicts=Verdicts(
                    learner,
                    cache,
                    learner_file,
                    tenancy,
                    shared.feedback if shared is not None else None,
                    shared.served if shared is not None else None,
                ),
                front=front,
                chain=chain,
                ledger=ledger,
                telemetry=telemetry,
                stats=stats,
                fleet=shared.fleet if shared is not None else None,
            )
        finally:
            pending = (*tasks, *handler.streams.pumps, *auditor.tasks)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            if writer is not None:
                await asyncio.to_thread(writer.close)  # before the store closes
            await auditor.flush()
            if local_ledger is not None:
                await asyncio.to_thread(local_ledger.close)
            await asyncio.to_thread(telemetry.close)
            for slot in slots:
                await slot.client.aclose()
            batcher.close()
            if verifier is not None:
                verifier.close()
            if shared is not None:
                await shared.close()  # closes the store too
            else:
                if snapshots is not None:
                    # Last, after spend and telemetry are safe: seconds at a million entries.
                    await save_snapshot(snapshots)
                the_store.close()

    app = FastAPI(
        title="cache-service",
        summary="Semantic response cache sidecar for OpenAI-compatible LLM APIs",
        lifespan=lifespan,
        # The sidecar's telemetry is its own (Prometheus, the outcome log). FastAPI's
        # OpenTelemetry bridge would only act on an OTel SDK configured in this process,
        # which nothing here does, yet it looked up the three global providers on every
        # request to find that out (3 us a request, measured).
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    for module in (proxy, cache_api, ops, admin, reports, dashboard):
        app.include_router(module.router)
    app.include_router(proxy.relay_router)  # last: claims every /v1 path left
    install_error_handlers(app)
    openapi.install(app)
    # Added first, so innermost: the proxied routes' lane runs inside the layers below.
    app.add_middleware(ProxyLane, endpoints=proxy.ENDPOINTS)
    app.add_middleware(TrimAfterLargeBodies)
    app.add_middleware(CacheStatusMiddleware)
    install_request_ids(app)
    return app


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
            kind = AiohttpUpstream if settings.upstream_client == "aiohttp" else HttpUpstream
            client = kind(
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


async def _load_keys(store: DiskCacheStore, after: asyncio.Task[None]) -> None:
    # After the index: both read the whole store, and the index is what makes the sidecar
    # ready. Until then exact lookups read the store, as before.
    await asyncio.wait([after])
    try:
        count = await asyncio.to_thread(store.load_keys)
    except Exception:
        log.exception("exact keys not loaded; absent keys are read from the store")
        return
    log.info("exact keys loaded", extra={"keys": count})


def _token_counter() -> Callable[[str], int]:
    from cache_service.backends.embedder import load_token_counter

    return load_token_counter()


def _load_embedder(settings: Settings) -> Embedder:
    from cache_service.backends.embedder import load_embedder

    return load_embedder(settings.model_dir, settings.embedder_backend, settings.embed_threads)


def _manifest_dim(settings: Settings) -> int:
    from cache_service.backends.embedder import manifest

    try:
        return int(manifest(settings.model_dir)["dimension"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"no vector dimension in {settings.model_dir}/manifest.json: {e}") from e


def _model_tag(settings: Settings) -> str | None:
    """The model manifest's hash, recorded in a snapshot (the vectors come from the store's
    entries, whichever model made them, so it is informative, not a check)."""
    import hashlib

    try:
        data = (settings.model_dir / "manifest.json").read_bytes()
    except OSError:
        return None
    return hashlib.sha256(data).hexdigest()[:16]
