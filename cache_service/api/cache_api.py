"""The cache-lookup API: look up, store, invalidate, and give feedback on hits."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from cache_service.api import state
from cache_service.api.body import lower_headers, read_json, request_id, validate
from cache_service.api.openapi import WITHOUT_BODY, error_responses, json_body
from cache_service.api.schemas import LookupRequest, StoreRequest
from cache_service.errors import BadRequest, NotFound

router = APIRouter()


async def _read(request: Request) -> dict[str, Any]:
    settings = state.settings(request)
    return await read_json(request, settings.max_body_bytes, timeout_s=settings.body_timeout_s)


@router.post(
    "/v1/cache/lookup", responses=error_responses(), openapi_extra=json_body(LookupRequest)
)
async def cache_lookup(request: Request) -> JSONResponse:
    data = await _read(request)
    req = validate(LookupRequest, data)
    body, headers = await state.cache_api(request).lookup(
        req, data, lower_headers(request), request_id(request)
    )
    return JSONResponse(body, headers=headers)


@router.post(
    "/v1/cache/store",
    status_code=201,
    responses=error_responses(),
    openapi_extra=json_body(StoreRequest),
)
async def cache_store(request: Request) -> JSONResponse:
    data = await _read(request)
    req = validate(StoreRequest, data)
    entry = await state.cache_api(request).store(req, lower_headers(request))
    return JSONResponse(
        {"entry_id": entry.id, "namespace": entry.namespace, "expires": entry.expires},
        status_code=201,
    )


@router.delete("/v1/cache/entries/{entry_id}", responses=error_responses(statuses=WITHOUT_BODY))
async def delete_entry(request: Request, entry_id: str) -> JSONResponse:
    if not await state.cache_api(request).delete(entry_id):
        raise NotFound(f"no cache entry with id {entry_id!r}", param="entry_id")
    return JSONResponse({"deleted": 1, "entry_id": entry_id})


@router.delete("/v1/cache", responses=error_responses(statuses=WITHOUT_BODY))
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

    entry_id: str | None = None
    request_id: str | None = None
    correct: bool


@router.post(
    "/v1/cache/feedback", responses=error_responses(), openapi_extra=json_body(FeedbackRequest)
)
async def feedback(request: Request) -> JSONResponse:
    """Tell the cache whether a hit was right. A wrong hit invalidates its entry and raises
    the namespace's threshold above the similarity that fooled it."""
    data = await _read(request)
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
