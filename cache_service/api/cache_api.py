"""The cache-lookup API: look up, store, invalidate, and give feedback on hits."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from cache_service.api import state
from cache_service.api.body import lower_headers, read_json, request_id, validate
from cache_service.api.schemas import LookupRequest, StoreRequest
from cache_service.errors import BadRequest, NotFound

router = APIRouter()


@router.post("/v1/cache/lookup")
async def cache_lookup(request: Request) -> JSONResponse:
    data = await read_json(request, state.settings(request).max_body_bytes)
    req = validate(LookupRequest, data)
    body, headers = await state.cache_api(request).lookup(
        req, data, lower_headers(request), request_id(request)
    )
    return JSONResponse(body, headers=headers)


@router.post("/v1/cache/store")
async def cache_store(request: Request) -> JSONResponse:
    data = await read_json(request, state.settings(request).max_body_bytes)
    req = validate(StoreRequest, data)
    entry = await state.cache_api(request).store(req, lower_headers(request))
    return JSONResponse(
        {"entry_id": entry.id, "namespace": entry.namespace, "expires": entry.expires},
        status_code=201,
    )


@router.delete("/v1/cache/entries/{entry_id}")
async def delete_entry(request: Request, entry_id: str) -> JSONResponse:
    if not await state.cache_api(request).delete(entry_id):
        raise NotFound(f"no cache entry with id {entry_id!r}", param="entry_id")
    return JSONResponse({"deleted": 1, "entry_id": entry_id})


@router.delete("/v1/cache")
async def delete_entries(
    request: Request, namespace: str | None = None, model: str | None = None
) -> JSONResponse:
    if namespace is None and model is None:
        raise BadRequest(
            "name a namespace and/or a model to invalidate (query parameters)", param="namespace"
        )
    count = await state.cache_api(request).delete_where(namespace, model)
    return JSONResponse({"deleted": count, "namespace": namespace, "model": model})


class FeedbackRequest(BaseModel):
    model_config = {"extra": "forbid"}

    entry_id: str | None = Field(None, min_length=1)
    request_id: str | None = Field(None, min_length=1)
    correct: bool


@router.post("/v1/cache/feedback")
async def feedback(request: Request) -> JSONResponse:
    """Tell the cache whether a hit was right. A wrong hit invalidates its entry and raises
    the namespace's threshold above the similarity that fooled it."""
    data = await read_json(request, state.settings(request).max_body_bytes)
    fb = validate(FeedbackRequest, data)
    judged = await state.verdicts(request).judge(
        request_id=fb.request_id, entry_id=fb.entry_id, correct=fb.correct
    )
    return JSONResponse(
        {
            "entry_id": judged.entry_id,
            "namespace": judged.namespace,
            "invalidated": judged.invalidated,
            "namespace_threshold": judged.namespace_threshold,
        }
    )
