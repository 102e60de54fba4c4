"""The exception tree: each error knows its HTTP status, its type and code. How it is
written on the wire is the route's wire format's business (`Flavor.error_body`), so the
caller's SDK raises its usual exception class (400 BadRequestError, 429 RateLimitError...)."""

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


class RequestTimeout(ServiceError):
    status = 408
    type = "invalid_request_error"
    code = "request_timeout"


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
    retryable = True
    """False when asking the same upstream again cannot help (connection refused, no such
    host): the chain moves on to the next upstream at once."""


class UpstreamInvalidResponse(UpstreamUnavailable):
    """A 2xx whose body is not an answer of the route's API: a 502, never stored."""

    code = "upstream_invalid_response"


def invalid_answer(state: str) -> UpstreamInvalidResponse:
    """The error for such an answer, with the lookup's `x-cache` state."""
    return UpstreamInvalidResponse(
        "upstream answered with a body that is not a valid response for this API",
        headers={"x-cache": state, "x-cache-stored": "false"},
    )


class UpstreamTimeout(ServiceError):
    status = 504
    type = "upstream_error"
    code = "upstream_timeout"


class QuotaUnavailable(ServiceError):
    """The shared quota ledger cannot be reached and the operator chose to refuse misses
    meanwhile (`redis_down_quota: reject`)."""

    status = 503
    type = "server_error"
    code = "quota_unavailable"


class OverCapacity(ServiceError):
    """More connections or requests at once than `max_concurrency`: refused before the
    request is read (`serving.py`), with a Retry-After."""

    status = 503
    type = "server_error"
    code = "over_capacity"


class StoreUnavailable(ServiceError):
    """The entry store cannot be reached (a shared store's server is away). The request
    path fails open on it (a lookup is a miss, a store is skipped); an operation that is
    about the store itself (invalidate, delete) answers 503."""

    status = 503
    type = "server_error"
    code = "store_unavailable"
