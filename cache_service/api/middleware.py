"""Request ids on every answer, and errors in the wire format of the route that failed.

The request-id layer is the outermost wrapper of the app (`install_request_ids`), outside
starlette's ServerErrorMiddleware: the 500 an unhandled exception becomes carries the id too,
and the exception is logged once, here, with it.

Errors are written by the flavour of the route that matched (the Anthropic shape on
`/v1/messages`, OpenAI's everywhere else), decided by the route's declared path, never by
the request's URL.
"""

from __future__ import annotations

import logging
import re
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cache_service.errors import ServiceError
from cache_service.flavors import for_route
from cache_service.flavors.base import Flavor

log = logging.getLogger("cache_service")

_SAFE_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


class RequestIdMiddleware:
    """The one place X-Request-Id is put on answers: every answer, errors raised before any
    handler ran included, and over an upstream's own id. A caller's own id is kept (so its
    logs and ours join) when it is a plain token; anything else in that header is replaced,
    since it ends up in log lines."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = next((v for k, v in scope["headers"] if k == b"x-request-id"), b"").decode(
            "latin-1"
        )
        rid = given if _SAFE_ID.fullmatch(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = rid

        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                MutableHeaders(scope=message)["x-request-id"] = rid
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            # ServerErrorMiddleware has answered (the `Exception` handler's body) and re-raised
            # for the server to log; it is logged here instead, once, with its request id. A
            # response cut short mid-body is closed by the server when the app returns.
            log.exception("unhandled error", extra={"request_id": rid})
            if not started:
                body = for_route(None).error_body(
                    "internal error in the cache sidecar", "server_error"
                )
                await JSONResponse(body, status_code=500)(scope, receive, send_with_id)


def install_request_ids(app: FastAPI) -> None:
    """Make RequestIdMiddleware the outermost layer: `add_middleware` would put it inside
    ServerErrorMiddleware, whose 500s would then leave without an id. The stack is still
    built lazily, on the first request, so later exception handlers are kept."""
    build = app.build_middleware_stack

    def outermost() -> ASGIApp:
        return RequestIdMiddleware(build())

    app.build_middleware_stack = outermost  # type: ignore[method-assign]


def _flavor(request: Request) -> Flavor:
    route = request.scope.get("route")
    return for_route(route.path if isinstance(route, Route) else None)


def error_response(flavor: Flavor, exc: ServiceError | StarletteHTTPException) -> JSONResponse:
    """A refusal in `flavor`'s wire format: the exception handlers' answer, and the proxy
    lane's (`api/proxy_lane.py`), which serves its routes without those handlers."""
    if isinstance(exc, ServiceError):
        body = flavor.error_body(exc.message, exc.type, param=exc.param, code=exc.code)
        return JSONResponse(body, status_code=exc.status, headers=exc.headers)
    kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
    body = flavor.error_body(str(exc.detail), kind)
    return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)


def unexpected_response(flavor: Flavor) -> JSONResponse:
    """The 500 of an unhandled exception, in `flavor`'s format, saying nothing of it."""
    body = flavor.error_body("internal error in the cache sidecar", "server_error")
    return JSONResponse(body, status_code=500)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError) -> JSONResponse:
        return error_response(_flavor(request), exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        first: dict[str, Any] = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        msg = f"{where}: {first.get('msg', 'invalid request')}"
        body = _flavor(request).error_body(msg, "invalid_request_error", param=where)
        return JSONResponse(body, 400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(_flavor(request), exc)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # Logged by RequestIdMiddleware, once, with the request id, when this re-raises.
        return unexpected_response(_flavor(request))
