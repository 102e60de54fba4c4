"""`POST /v1/embeddings` as OpenAI answers it: one deterministic unit vector per input
(hashed from the input, so the same input always gets the same vector), `dimensions` if
asked (default 8: small answers), `encoding_format` float or base64, usage counted in words."""

from __future__ import annotations

import base64
import hashlib
import math
import struct
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from cache_service.simulator.errors import (
    BadRequest,
    bad_request,
    parse_json,
    require_object,
)
from cache_service.simulator.state import apply_fault, sim_of

_DEFAULT_DIM = 8


def _vector(text: str, dim: int) -> list[float]:
    raw = hashlib.sha256(text.encode()).digest()
    while len(raw) < dim:
        raw += hashlib.sha256(raw).digest()
    values = [b - 127.5 for b in raw[:dim]]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return [round(v / norm, 6) for v in values]


def _inputs(value: Any) -> list[str]:
    if isinstance(value, str) and value:
        return [value]
    if isinstance(value, list) and value:
        if all(isinstance(v, str) for v in value):
            return list(value)
        if all(isinstance(v, int) for v in value):  # one input as token ids
            return [repr(value)]
        if all(isinstance(v, list) for v in value):
            return [repr(v) for v in value]
    raise BadRequest("'input' must be a string, a list of strings or of token lists.", "input")


async def create_embeddings(request: Request) -> Response:
    sim = sim_of(request)
    sim.record(request, completion=True)
    try:
        body = require_object(parse_json(await request.body()))
        sim.last_request = body
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise BadRequest("you must provide a model parameter", "model")
        texts = _inputs(body.get("input"))
        dim = body.get("dimensions", _DEFAULT_DIM)
        if type(dim) is not int or not 1 <= dim <= 4096:
            raise BadRequest("'dimensions' must be an integer from 1 to 4096.", "dimensions")
        encoding = body.get("encoding_format", "float")
        if encoding not in ("float", "base64"):
            raise BadRequest("'encoding_format' must be 'float' or 'base64'.", "encoding_format")
    except BadRequest as exc:
        return bad_request("openai", exc)
    config = await sim.pause()
    error = await apply_fault(sim.take_fault(request), "openai", False, config)
    if error is not None:
        return error
    data = []
    for i, text in enumerate(texts):
        vector = _vector(text, dim)
        embedding: Any = vector
        if encoding == "base64":
            embedding = base64.b64encode(struct.pack(f"<{dim}f", *vector)).decode()
        data.append({"object": "embedding", "index": i, "embedding": embedding})
    tokens = sum(len(t.split()) or 1 for t in texts)
    return JSONResponse(
        {
            "object": "list",
            "data": data,
            "model": model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
    )
