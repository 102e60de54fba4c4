"""The exception tree and its HTTP mapping, in OpenAI's error shape so SDKs raise the
right exception class (400 BadRequestError, 429 RateLimitError, 5xx APIStatusError), and in
Anthropic's on its Messages API."""

from __future__ import annotations

from typing import Any


class ServiceError(Exception):
    status = 500
    type = "server_error"
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.headers = headers or {}


class BadRequest(ServiceError):
    status = 400
    type = "invalid_request_error"


class Unauthorized(ServiceError):
    status = 401
    type = "authentication_error"


class Forbidden(ServiceError):
    status = 403
    type = "permission_error"


class NotFound(ServiceError):
    status = 404
    type = "not_found_error"


class PayloadTooLarge(ServiceError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class RateLimited(ServiceError):
    status = 429
    type = "rate_limit_error"
    denial: Any = None
    """The quota decision behind it (cache_service.quota.limits.Denial), for metrics."""


class UpstreamUnavailable(ServiceError):
    status = 502
    type = "upstream_error"
    code = "upstream_unavailable"


class UpstreamTimeout(ServiceError):
    status = 504
    type = "upstream_error"
    code = "upstream_timeout"


def error_body(
    message: str, type_: str, *, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


# Anthropic's error types are a closed set; ours that it lacks map to its nearest.
_ANTHROPIC_TYPES = {"upstream_error": "api_error", "server_error": "api_error"}


def anthropic_error_body(message: str, type_: str, *, code: str | None = None) -> dict[str, Any]:
    kind = "request_too_large" if code == "request_too_large" else type_
    return {
        "type": "error",
        "error": {"type": _ANTHROPIC_TYPES.get(kind, kind), "message": message},
    }


def error_body_for(
    path: str, message: str, type_: str, *, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """The error shape the caller's SDK parses: Anthropic's on the Messages API."""
    if path.rstrip("/").endswith("/messages"):
        return anthropic_error_body(message, type_, code=code)
    return error_body(message, type_, param=param, code=code)
