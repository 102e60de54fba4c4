"""What an operator reads: stats (a caller's own tenant's; every tenant's with the admin
key), quota use, liveness and readiness."""

from __future__ import annotations

import asyncio
from typing import Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError

from cache_service.api import state
from cache_service.api.auth import fleet_view
from cache_service.api.body import lower_headers
from cache_service.api.filters import Filters
from cache_service.api.openapi import error_responses
from cache_service.backends.faiss_index import FaissIndex
from cache_service.cache.cross_encoder import CrossEncoderVerifier
from cache_service.cache.feedback import quality_view
from cache_service.errors import BadRequest, StoreUnavailable
from cache_service.fleet import Fleet
from cache_service.telemetry.stats import Stats, replay_stats

# Only its own failures: these routes read no body and call no upstream.
router = APIRouter(responses=error_responses(statuses=(400, 500, 503)))


@router.get("/v1/cache/stats")
async def cache_stats(
    request: Request,
    scope: Literal["replica", "fleet"] = "replica",
    since: str | None = None,
    until: str | None = None,
    namespace: str | None = None,
    model: str | None = None,
    project: str | None = None,
) -> JSONResponse:
    """This replica's figures, or (`scope=fleet`) every replica's added up, as each last
    published them (within a heartbeat), with the list of replicas counted.

    Filters (the dashboard's): `namespace` and `model` keep only their rows; `since`,
    `until` (15m, 1h, 7d or ISO 8601) and `project` rebuild the figures from this replica's
    outcome log (not with `scope=fleet`; 400 when the log is off).

    `size_history`: the store's entries, bytes and evictions after each sweep since this
    replica started (the time range applies; namespace and model do not)."""
    front = state.of(request)["front"]
    await front.settle()  # its vector count includes the misses already answered
    visible = state.of(request)["tenancy"].visible_to(lower_headers(request))
    stats = state.of(request)["stats"]
    fleet = state.of(request)["fleet"]
    filters = Filters(since, until, namespace, model, project)
    replicas: list[dict[str, object]] | None = None
    if filters.needs_log:
        log = state.of(request)["telemetry"].log
        if scope == "fleet":
            raise BadRequest(
                "since, until and project read this replica's outcome log: not with scope=fleet",
                param="scope",
            )
        if log is None:
            raise BadRequest(
                "since, until and project read the outcome log, which is off (outcome_log: false)"
            )
        flt = filters.outcome_filter()
        stats = replay_stats(await asyncio.to_thread(log.filtered, flt))
    elif scope == "fleet" and fleet is not None:
        stats, replicas = await _fleet_stats(fleet, stats)
    snapshot = stats.snapshot(visible, namespace=namespace or None, model=model or None)
    if replicas is not None:
        snapshot["replicas"] = replicas
    if filters.given():
        snapshot["filters"] = filters.given()
    snapshot["quality"] = quality_view(
        front.learner, state.of(request)["proxy"].auditor.tally, visible
    )
    snapshot["cache"] = {
        "vectors": len(front.cache.index),
        "index_ready": front.ready,
        "embedding_batches": front.batcher.batches,
        "embedded": front.batcher.processed,
        "embeddings_shed": front.batcher.shed,
        "verifier": "off",
    }
    if front.cache.capacity is not None:
        snapshot["cache"].update(front.cache.capacity.as_dict())
    if front.writer is not None:
        # Entries stored after their answer: a failure here was already confirmed stored.
        snapshot["cache"]["stored_after_answer"] = front.writer.stored
        snapshot["cache"]["store_failures_after_answer"] = front.writer.failed
    if isinstance(front.cache.index, FaissIndex):
        snapshot["cache"]["index"] = front.cache.index.summary()
    for verifier in front.verifiers:
        if isinstance(verifier, CrossEncoderVerifier):
            snapshot["cache"].update(verifier.stats())
    sizes = state.of(request)["telemetry"].sizes
    if sizes is not None:
        # The whole store's (entries are not counted per namespace or model), this
        # replica's, since it started; the time range applies.
        bounds = filters.outcome_filter() if filters.since or filters.until else None
        snapshot["size_history"] = sizes.view(
            bounds.since if bounds else None, bounds.until if bounds else None
        )
    return JSONResponse(snapshot)


async def _fleet_stats(fleet: Fleet, own: Stats) -> tuple[Stats, list[dict[str, object]]]:
    """Every replica's published rows added up; this one's live rows in place of its own
    last publication."""
    total = Stats()
    total.merge(own.rows())
    replicas: list[dict[str, object]] = [{"replica": fleet.replica_id, "live": True}]
    try:
        published = await fleet.replica_stats()
    except RedisError as e:
        raise StoreUnavailable("the fleet's stats are in Redis, which is unreachable") from e
    for r in published:
        if r.replica == fleet.replica_id:
            continue
        try:
            total.merge(r.rows)
        except ValueError:
            continue  # a replica of another version: skipped, not a 500
        replicas.append({"replica": r.replica, "published_at": r.published_at})
    return total, replicas


@router.get("/v1/quota")
async def quota(request: Request) -> JSONResponse:
    """Every scope's limits and use now (all projects: admin-only with `admin_only_ops`)."""
    fleet_view(request, "the quota view")
    return JSONResponse(await state.of(request)["chain"].status())


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz", responses={503: {"description": "Not ready yet: the same body, with ready false"}}
)
async def readyz(request: Request) -> JSONResponse:
    """Ready once the index is rebuilt from the store (the model loads before the app
    accepts requests at all; exact hits are served while the index rebuilds)."""
    front = state.of(request)["front"]
    ready = front.ready
    body = {
        "ready": ready,
        "model_loaded": True,
        "index_ready": ready,
        "entries_indexed": len(front.cache.index),
    }
    return JSONResponse(body, status_code=200 if ready else 503)
