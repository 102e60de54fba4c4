"""The cache-lookup API: look up, store, invalidate, and give feedback on hits, each within
the caller's own tenant (the admin key reaches across tenants)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from cache_service.api import state
from cache_service.api.body import lower_headers, read_json, request_id, validate
from cache_service.api.openapi import WITHOUT_BODY, error_responses, json_body
from cache_service.api.schemas import LookupRequest, StoreRequest
from cache_service.errors import BadRequest, NotFound


async def _settled(request: Request) -> None:
    # Every route here reads or changes stored entries: the misses answered a moment ago
    # are stored first (`CacheFront.settle`), so an entry whose answer said
    # `X-Cache-Stored: true` can be looked up, judged and invalidated at once.
    await state.of(request)["front"].settle()


router = APIRouter(dependencies=[Depends(_settled)])


async def _read(request: Request) -> dict[str, Any]:
    settings = state.of(request)["settings"]
    return await read_json(request, settings.max_body_bytes, timeout_s=settings.body_timeout_s)


@router.post(
    "/v1/cache/lookup", responses=error_responses(), openapi_extra=json_body(LookupRequest)
)
async def cache_lookup(request: Request) -> JSONResponse:
    data = await _read(request)
    req = validate(LookupRequest, data)
    headers = lower_headers(request)
    caller = state.of(request)["tenancy"].caller(headers)
    body, out = await state.of(request)["cache_api"].lookup(
        req, data, headers, request_id(request), caller
    )
    return JSONResponse(body, headers=out)


@router.post(
    "/v1/cache/store",
    status_code=201,
    responses=error_responses(),
    openapi_extra=json_body(StoreRequest),
)
async def cache_store(request: Request) -> JSONResponse:
    data = await _read(request)
    req = validate(StoreRequest, data)
    headers = lower_headers(request)
    caller = state.of(request)["tenancy"].caller(headers)
    entry = await state.of(request)["cache_api"].store(req, headers, caller)
    return JSONResponse(
        {"entry_id": entry.id, "namespace": entry.namespace, "expires": entry.expires},
        status_code=201,
    )


@router.delete("/v1/cache/entries/{entry_id}", responses=error_responses(statuses=WITHOUT_BODY))
async def delete_entry(request: Request, entry_id: str) -> JSONResponse:
    caller = state.of(request)["tenancy"].caller(lower_headers(request))
    if not await state.of(request)["cache_api"].delete(entry_id, caller):
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
    caller = state.of(request)["tenancy"].caller(lower_headers(request))
    count = await state.of(request)["cache_api"].delete_where(namespace, model, caller)
    return JSONResponse({"deleted": count, "namespace": namespace, "model": model})


class FeedbackRequest(BaseModel):
    model_config = {"extra": "forbid"}

    entry_id: str | None = Field(None, min_length=1)
    request_id: str | None = Field(None, min_length=1)
    correct: bool


@router.post(
    "/v1/cache/feedback", responses=error_responses(), openapi_extra=json_body(FeedbackRequest)
)
async def feedback(request: Request) -> JSONResponse:
    """Tell the cache whether a hit was right. A wrong hit invalidates its entry and raises
    the namespace's threshold above the similarity that fooled it."""
    data = await _read(request)
    fb = validate(FeedbackRequest, data)
    caller = state.of(request)["tenancy"].caller(lower_headers(request))
    judged = await state.of(request)["verdicts"].judge(
        caller, request_id=fb.request_id, entry_id=fb.entry_id, correct=fb.correct
    )
    return JSONResponse(
        {
            "entry_id": judged.entry_id,
            "namespace": judged.namespace,
            "invalidated": judged.invalidated,
            "namespace_threshold": judged.namespace_threshold,
        }
    )
