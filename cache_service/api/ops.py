"""What an operator reads: stats (a caller's own tenant's; every tenant's with the admin
key), quota use, liveness and readiness."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from cache_service.api import state
from cache_service.api.auth import fleet_view
from cache_service.api.body import lower_headers
from cache_service.api.openapi import error_responses
from cache_service.cache.cross_encoder import CrossEncoderVerifier

# Only its own failures: these routes read no body and call no upstream.
router = APIRouter(responses=error_responses(statuses=(500,)))


@router.get("/v1/cache/stats")
async def cache_stats(request: Request) -> JSONResponse:
    front = state.of(request)["front"]
    visible = state.of(request)["tenancy"].visible_to(lower_headers(request))
    snapshot = state.of(request)["stats"].snapshot(visible)
    learner = front.learner
    snapshot["quality"] = {
        "audit": state.of(request)["proxy"].auditor.tally.as_dict(),
        "feedback": {k: v for k, v in learner.counts.items() if visible is None or visible(k)},
        "learned_thresholds": {
            k: v for k, v in learner.thresholds.items() if visible is None or visible(k)
        },
        # Wrong reports held until a second one corroborates them (cache/feedback.py).
        "pending_wrong_reports": {
            k: len(v) for k, v in learner.pending.items() if visible is None or visible(k)
        },
    }
    snapshot["cache"] = {
        "vectors": len(front.cache.index),
        "index_ready": front.ready,
        "embedding_batches": front.batcher.batches,
        "embedded": front.batcher.processed,
        "embeddings_shed": front.batcher.shed,
        "verifier": "off",
    }
    for verifier in front.verifiers:
        if isinstance(verifier, CrossEncoderVerifier):
            snapshot["cache"].update(verifier.stats())
    return JSONResponse(snapshot)


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
