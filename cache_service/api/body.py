"""Reading a request: the body within its size limit, parsed as a JSON object, validated
against a schema, with an error that names what is wrong; the caller's headers and id.

Parsing refuses what standard JSON or the layers behind it cannot carry, so that no later
layer meets it: nesting deeper than `MAX_DEPTH`, NaN and infinities (`1e400` included),
integers longer than Python converts, and lone UTF-16 surrogates (`"\\ud800"`), which no
encoder (the scope hash, the upstream call) can write back out."""

from __future__ import annotations

import asyncio
import json
import math
import re
from typing import Any, TypeVar

import numpy as np
from fastapi import Request
from pydantic import BaseModel, ValidationError

from cache_service.errors import BadRequest, PayloadTooLarge, RequestTimeout

M = TypeVar("M", bound=BaseModel)

MAX_DEPTH = 64
"""Arrays and objects inside each other; real requests stay far below it."""

# A JSON string (escapes included), to blank out before counting brackets. The closing quote
# is optional so that every match succeeds: a failed match would be retried from each later
# quote, quadratic in a body of escaped quotes.
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"?', re.DOTALL)
# Objects and arrays alike, and nothing else: the shape of the nesting.
_SQUARE = bytes.maketrans(b"{}", b"[]")
_NOT_BRACKET = bytes(c for c in range(256) if c not in b"[]{}")
_SURROGATE = re.compile("[\ud800-\udfff]")
# What could parse into a surrogate (an escape, or UTF-8 bytes the decoder lets pass) or an
# infinite float (a three-digit exponent, or 210 digits or more before a two-digit one).
_MAYBE_UNWRITABLE = re.compile(rb"\\u[dD][89a-fA-F]|\xed[\xa0-\xbf]|[eE][+-]?\d{3}|\d{200}")


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
    return parse_json(raw)


def parse_json(raw: bytes) -> dict[str, Any]:
    """A JSON object every layer can handle, or a BadRequest naming what is wrong."""
    depth = nesting(raw)
    if depth > MAX_DEPTH:
        raise BadRequest(f"request body nests {depth} levels deep; the limit is {MAX_DEPTH}")
    try:
        # Numbers parse at C speed; only the NaN/Infinity literals need a hook. An integer
        # over Python's 4300 digits is the ValueError caught below.
        data = json.loads(raw, parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError too
        raise BadRequest(f"request body is not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise BadRequest("request body must be a JSON object")
    if _MAYBE_UNWRITABLE.search(raw):  # a C-speed scan spares most bodies the walk
        _refuse_unwritable(data)
    return data


def nesting(raw: bytes) -> int:
    """How deep arrays and objects nest, counted without parsing (so without recursion) and
    in linear time: a running sum over the brackets outside strings. Malformed JSON may
    count wrong; the parser refuses it anyway."""
    if raw.count(b"[") + raw.count(b"{") <= MAX_DEPTH:
        return 0  # too few brackets to nest too deep: the common case, skipped
    shape = _STRING.sub(b"", raw).translate(_SQUARE, _NOT_BRACKET)
    steps = np.where(np.frombuffer(shape, dtype=np.uint8) == ord("["), 1, -1)
    return int(np.cumsum(steps).max())


def _refuse_constant(name: str) -> Any:
    raise BadRequest(f"request body contains {name}, which is not a JSON number")


def _refuse_unwritable(data: Any) -> None:
    """Values JSON cannot write back out: a number out of a float's range (`1e400` parses as
    infinity) and a lone surrogate."""
    # Iterative: the nesting is bounded already, but a walk needs no recursion anyway.
    pending = [data]
    while pending:
        value = pending.pop()
        if isinstance(value, dict):
            pending.extend(value.keys())
            pending.extend(value.values())
        elif isinstance(value, list):
            pending.extend(value)
        elif isinstance(value, float) and not math.isfinite(value):
            raise BadRequest("request body contains a number out of range (such as 1e400)")
        elif isinstance(value, str) and _SURROGATE.search(value):
            raise BadRequest(
                "request body contains a lone UTF-16 surrogate escape (such as \\ud800), "
                "which is not text"
            )


def validate(schema: type[M], data: dict[str, Any]) -> M:
    try:
        return schema.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        more = f" (and {len(e.errors()) - 1} more problems)" if len(e.errors()) > 1 else ""
        raise BadRequest(f"{where}: {first['msg']}{more}", param=where or None) from e
