"""HTTP routes: the OpenAI/Anthropic-compatible proxy, the cache-lookup API, stats, health."""

from __future__ import annotations

import asyncio
import hmac
import json
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, ValidationError
from starlette.responses import Response, StreamingResponse

from cache_service.api.schemas import (
    AnthropicRequest,
    ChatRequest,
    LookupRequest,
    StoreRequest,
)
from cache_service.errors import BadRequest, Forbidden, NotFound, PayloadTooLarge, Unauthorized
from cache_service.pipeline import ANTHROPIC, OPENAI, Flavor, Pipeline
from cache_service.policy import parse_directives
from cache_service.quota.limits import Limits
from cache_service.scope import ANSWER_PARAMS, build_keys, project_of, tenant_of
from cache_service.stats import Outcome

router = APIRouter()
# Last in the app: any /v1 path no other router claims is relayed upstream.
passthrough_router = APIRouter()


def pipeline_of(request: Request) -> Pipeline:
    p: Pipeline = request.app.state.pipeline
    return p


def request_id(request: Request) -> str:
    """Set for every request by :class:`cache_service.app.RequestIdMiddleware`, which also
    puts it on every answer."""
    rid: str = request.state.request_id
    return rid


async def read_body(request: Request, limit: int) -> bytes:
    """The raw body, refusing oversized bodies before buffering them whole."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body is {declared} bytes; the limit is {limit}")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_json(request: Request, limit: int) -> dict[str, Any]:
    """The body as a JSON object, with an error naming what is wrong with it."""
    raw = await read_body(request, limit)
    if not raw.strip():
        raise BadRequest("request body is empty; expected a JSON object")
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BadRequest(f"request body is not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise BadRequest("request body must be a JSON object")
    return data


def validate(schema: type[BaseModel], data: dict[str, Any]) -> BaseModel:
    try:
        return schema.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        more = f" (and {len(e.errors()) - 1} more problems)" if len(e.errors()) > 1 else ""
        raise BadRequest(f"{where}: {first['msg']}{more}", param=where or None) from e


def lower_headers(request: Request) -> dict[str, str]:
    return {k.lower(): v for k, v in request.headers.items()}


async def _proxy(request: Request, flavor: Flavor, schema: type[BaseModel]) -> Response:
    pipeline = pipeline_of(request)
    body = await read_json(request, pipeline.s.settings.max_body_bytes)
    validate(schema, body)
    ctx = pipeline.context(flavor, body, lower_headers(request), request_id(request))
    return await pipeline.handle(ctx)


@router.post("/v1/chat/completions")
async def chat_completions(request: Request) -> Response:
    return await _proxy(request, OPENAI, ChatRequest)


@router.post("/v1/messages")
async def anthropic_messages(request: Request) -> Response:
    return await _proxy(request, ANTHROPIC, AnthropicRequest)


# ------------------------------------------------------------------ cache-lookup API


def _api_keys(
    pipeline: Pipeline, req: LookupRequest | StoreRequest, headers: dict[str, str]
) -> Any:
    if (req.messages is None) == (req.prompt is None):
        raise BadRequest("give exactly one of 'messages' or 'prompt'", param="messages")
    messages = (
        [m.model_dump(exclude_none=True) for m in req.messages]
        if req.messages is not None
        else [{"role": "user", "content": req.prompt}]
    )
    extra = req.model_extra or {}
    body = {"model": req.model, "messages": messages}
    body.update({k: extra[k] for k in ANSWER_PARAMS if k in extra})
    tenant = req.namespace or tenant_of(headers)
    # Its own api tag: what an app stores here is whatever shape it likes, so it must
    # never be served as a chat.completion by the proxy.
    return build_keys(
        body, tenant, api="lookup", max_semantic_chars=pipeline.s.settings.semantic_max_chars
    )


@router.post("/v1/cache/lookup")
async def cache_lookup(request: Request) -> JSONResponse:
    pipeline = pipeline_of(request)
    data = await read_json(request, pipeline.s.settings.max_body_bytes)
    req = validate(LookupRequest, data)
    assert isinstance(req, LookupRequest)
    threshold = pipeline.threshold(req.threshold, param="threshold")
    headers = lower_headers(request)
    keys = _api_keys(pipeline, req, headers)
    ctx = pipeline.context(OPENAI, data, headers, request_id(request), keys=keys)
    ctx.threshold = threshold
    found = await pipeline.lookup(ctx)
    if found is None or found.entry is None:
        pipeline.record(ctx, Outcome.MISS, 0, 0)
        best = ctx.lookup.best_rejected if ctx.lookup else None
        return JSONResponse(
            {
                "hit": False,
                "namespace": keys.tenant,
                "best_similarity": best,
                "reason": ctx.lookup.reason if ctx.lookup else "no_candidates",
            }
        )
    entry = found.entry
    outcome = Outcome.EXACT_HIT if found.match == "exact" else Outcome.SEMANTIC_HIT
    pipeline.record(ctx, outcome, entry.prompt_tokens, entry.completion_tokens)
    view = pipeline.entry_view(entry)
    return JSONResponse(
        {
            "hit": True,
            "match": found.match,
            "similarity": found.similarity,
            "entry_id": entry.id,
            "age": view["age"],
            "namespace": entry.namespace,
            # Stored wrapped (entries hold an object); the app gets back exactly what it stored.
            "response": entry.response.get("value"),
            "entry": view,
        },
        headers={"x-cache": "HIT", "x-cache-entry": entry.id},
    )


@router.post("/v1/cache/store")
async def cache_store(request: Request) -> JSONResponse:
    pipeline = pipeline_of(request)
    settings = pipeline.s.settings
    data = await read_json(request, settings.max_body_bytes)
    req = validate(StoreRequest, data)
    assert isinstance(req, StoreRequest)
    keys = _api_keys(pipeline, req, lower_headers(request))
    ttl = parse_directives(
        None,
        None if req.ttl is None else str(req.ttl),
        default_ttl_s=settings.default_ttl_s,
        max_ttl_s=settings.max_ttl_s,
    ).ttl_s
    vector = None
    if keys.semantic_ok:
        try:
            vector = await pipeline.s.batcher.embed(keys.prompt, 10.0)
        except TimeoutError:
            vector = None  # stored for exact lookups only
    cache = pipeline.s.cache
    entry = cache.new_entry(
        scope=keys.scope,
        exact_key=keys.exact_key,
        namespace=keys.tenant,
        model=keys.model,
        prompt=keys.prompt,
        embedding=vector,
        response={"value": req.response},
        ttl_s=ttl or settings.default_ttl_s,
        prompt_tokens=req.prompt_tokens,
        completion_tokens=req.completion_tokens,
        meta={"api": "lookup"},
    )
    await asyncio.to_thread(cache.put, entry)
    return JSONResponse(
        {"entry_id": entry.id, "namespace": entry.namespace, "expires": entry.expires},
        status_code=201,
    )


@router.delete("/v1/cache/entries/{entry_id}")
async def delete_entry(request: Request, entry_id: str) -> JSONResponse:
    cache = pipeline_of(request).s.cache
    entry = await asyncio.to_thread(cache.delete, entry_id)
    if entry is None:
        raise NotFound(f"no cache entry with id {entry_id!r}", param="entry_id")
    request.app.state.telemetry.metrics.evicted(1)
    return JSONResponse({"deleted": 1, "entry_id": entry_id})


@router.delete("/v1/cache")
async def delete_entries(
    request: Request, namespace: str | None = None, model: str | None = None
) -> JSONResponse:
    if namespace is None and model is None:
        raise BadRequest(
            "name a namespace and/or a model to invalidate (query parameters)", param="namespace"
        )
    cache = pipeline_of(request).s.cache
    count = await asyncio.to_thread(cache.delete_where, namespace=namespace, model=model)
    request.app.state.telemetry.metrics.evicted(count)
    return JSONResponse({"deleted": count, "namespace": namespace, "model": model})


# ------------------------------------------------------------------ stats and health


@router.get("/v1/cache/stats")
async def cache_stats(request: Request) -> JSONResponse:
    s = pipeline_of(request).s
    snapshot = s.stats.snapshot()
    snapshot["quality"] = {
        "audit": s.audit.as_dict(),
        "feedback": s.learner.counts,
        "learned_thresholds": s.learner.thresholds,
    }
    snapshot["cache"] = {
        "vectors": len(s.cache.index),
        "index_ready": s.cache.ready,
        "embedding_batches": s.batcher.batches,
        "embedded": s.batcher.embedded,
    }
    return JSONResponse(snapshot)


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(request: Request) -> JSONResponse:
    state = getattr(request.app.state, "pipeline", None)
    ready = state is not None and state.s.cache.ready
    body = {
        "ready": ready,
        "model_loaded": state is not None,
        "index_ready": bool(state and state.s.cache.ready),
        "entries_indexed": len(state.s.cache.index) if state else 0,
    }
    return JSONResponse(body, status_code=200 if ready else 503)


class FeedbackRequest(BaseModel):
    model_config = {"extra": "forbid"}

    entry_id: str | None = None
    request_id: str | None = None
    correct: bool


@router.post("/v1/cache/feedback")
async def feedback(request: Request) -> JSONResponse:
    """Tell the cache whether a hit was right. A wrong hit invalidates its entry and raises
    the namespace's threshold above the similarity that fooled it."""
    pipeline = pipeline_of(request)
    s = pipeline.s
    data = await read_json(request, s.settings.max_body_bytes)
    fb = validate(FeedbackRequest, data)
    assert isinstance(fb, FeedbackRequest)
    if (fb.entry_id is None) == (fb.request_id is None):
        raise BadRequest("give exactly one of 'entry_id' or 'request_id'", param="entry_id")
    served = s.learner.find(fb.request_id) if fb.request_id else None
    if fb.request_id and served is None:
        raise NotFound(f"no recent hit with request id {fb.request_id!r}", param="request_id")
    entry_id = served.entry_id if served else fb.entry_id
    assert entry_id is not None
    entry = await asyncio.to_thread(s.cache.store.get, entry_id)
    namespace = served.namespace if served else (entry.namespace if entry else None)
    if namespace is None:
        raise NotFound(f"no cache entry with id {entry_id!r}", param="entry_id")
    similarity = served.similarity if served and served.match == "semantic" else None
    invalidated = False
    if not fb.correct:
        invalidated = await asyncio.to_thread(s.cache.delete, entry_id) is not None
    threshold = s.learner.record(namespace, similarity, fb.correct)
    learner_file = request.app.state.learner_file
    await asyncio.to_thread(learner_file.save, s.learner.export())
    return JSONResponse(
        {
            "entry_id": entry_id,
            "namespace": namespace,
            "invalidated": invalidated,
            "namespace_threshold": threshold,
        }
    )


# ------------------------------------------------------------------ quota


@router.get("/v1/quota")
async def quota(request: Request) -> JSONResponse:
    return JSONResponse(pipeline_of(request).s.forwarder.snapshot())


class LimitsUpdate(BaseModel):
    model_config = {"extra": "forbid"}

    kind: Literal["project", "upstream", "global"]
    name: str = Field(min_length=1)
    rpm: int | None = Field(None, ge=0)
    tpm: int | None = Field(None, ge=0)
    daily_budget_usd: float | None = Field(None, ge=0)
    monthly_budget_usd: float | None = Field(None, ge=0)
    rpd: int | None = Field(None, ge=0)
    tpd: int | None = Field(None, ge=0)


@router.put("/v1/admin/limits")
async def set_limits(request: Request) -> JSONResponse:
    """Change a scope's limits at run time (usage so far is kept). Fields left out become
    unlimited, so a PUT states the whole limit set."""
    pipeline = pipeline_of(request)
    admin_key = pipeline.s.settings.admin_key
    if not admin_key:
        raise Forbidden("the admin API is disabled: set admin_key to enable it")
    given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
    if not hmac.compare_digest(given.encode(), admin_key.encode()):
        raise Unauthorized("a valid admin key is required (Authorization: Bearer <admin_key>)")
    data = await read_json(request, pipeline.s.settings.max_body_bytes)
    update = validate(LimitsUpdate, data)
    assert isinstance(update, LimitsUpdate)
    limits = Limits(
        rpm=update.rpm,
        tpm=update.tpm,
        daily_budget_usd=update.daily_budget_usd,
        monthly_budget_usd=update.monthly_budget_usd,
        rpd=update.rpd,
        tpd=update.tpd,
    )
    pipeline.s.forwarder.set_limits(update.kind, update.name, limits)
    return JSONResponse(pipeline.s.forwarder.manager.scope_snapshot((update.kind, update.name)))


# ------------------------------------------------------------------ everything else


@passthrough_router.api_route("/v1/{path:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
async def passthrough(request: Request, path: str) -> Response:
    """Every other API path (embeddings, models, files, responses...) goes upstream as it is,
    under the request-rate limits: the app changes only its base URL, and nothing it used
    before stops working."""
    pipeline = pipeline_of(request)
    settings = pipeline.s.settings
    content = await read_body(request, settings.max_body_bytes)
    headers = lower_headers(request)
    up = await pipeline.s.forwarder.passthrough(
        request.method,
        path,
        content,
        headers,
        list(request.query_params.multi_items()),
        project_of(headers),
    )
    out = {**up.headers, "x-cache": "BYPASS"}
    media = out.pop("content-type", None)
    return StreamingResponse(up.chunks, status_code=up.status, headers=out, media_type=media)
