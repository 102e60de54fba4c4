"""Reading a request: the body within its size limit, parsed as a JSON object, validated
against a schema, with an error that names what is wrong; the caller's headers and id."""

from __future__ import annotations

import asyncio
import json
from typing import Any, TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError

from cache_service.errors import BadRequest, PayloadTooLarge, RequestTimeout

M = TypeVar("M", bound=BaseModel)


def request_id(request: Request) -> str:
    """Set for every request by `api/middleware.py`, which also puts it on every answer."""
    rid: str = request.scope["state"]["request_id"]
    return rid


def lower_headers(request: Request) -> dict[str, str]:
    return {k.lower(): v for k, v in request.headers.items()}


async def read_body(request: Request, limit: int, *, timeout_s: float | None = None) -> bytes:
    """The raw body, refusing oversized bodies before buffering them whole, and bodies not
    received within `timeout_s` (a stalled or byte-a-second client) with 408."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body is {declared} bytes; the limit is {limit}")
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
                chunks.append(chunk)
    except TimeoutError as e:
        raise RequestTimeout(
            f"request body not received within {timeout_s:g} s ({size} bytes arrived)"
        ) from e
    return b"".join(chunks)


async def read_json(
    request: Request, limit: int, *, timeout_s: float | None = None
) -> dict[str, Any]:
    """The body as a JSON object, with an error naming what is wrong with it."""
    raw = await read_body(request, limit, timeout_s=timeout_s)
    if not raw.strip():
        raise BadRequest("request body is empty; expected a JSON object")
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BadRequest(f"request body is not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise BadRequest("request body must be a JSON object")
    return data


def validate(schema: type[M], data: dict[str, Any]) -> M:
    try:
        return schema.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        more = f" (and {len(e.errors()) - 1} more problems)" if len(e.errors()) > 1 else ""
        raise BadRequest(f"{where}: {first['msg']}{more}", param=where or None) from e
