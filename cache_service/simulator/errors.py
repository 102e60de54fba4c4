"""The two APIs' error shapes, the 400 a handler raises, and the checks every endpoint shares."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any, Literal

from fastapi.responses import JSONResponse

Api = Literal["openai", "anthropic"]


class BadRequest(Exception):
    def __init__(self, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


def error_response(
    api: Api,
    status: int,
    message: str,
    kind: str,
    *,
    param: str | None = None,
    code: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    if api == "anthropic":
        body: dict[str, Any] = {"type": "error", "error": {"type": kind, "message": message}}
    else:
        body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=dict(headers or {}))


def bad_request(api: Api, exc: BadRequest) -> JSONResponse:
    return error_response(
        api, 400, exc.message, "invalid_request_error", param=exc.param, code=exc.code
    )


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_seconds(value: Any) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value >= 0
    )


def parse_json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise BadRequest(f"We could not parse the JSON body of your request: {exc}") from exc


def require_object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise BadRequest("The request body must be a JSON object.")
    return body
