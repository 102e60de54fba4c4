"""The proxied calls' own lane: a POST on a flavour's route goes from the outer layers
straight to its endpoint, past FastAPI's exception, exit-stack, router and route layers.

Why: an exact hit is a dictionary lookup and one SQLite read, and those layers were about a
third of its time in the app (py-spy, 15,000 in-process hits: ~0.24 ms of ~0.76). The lane
calls the very endpoint the route registers (`proxy.ENDPOINTS`); the route stays for the
OpenAPI schema and for the relay's 405s, so there is one code path per flavour. What the
skipped layers did for these routes is done here or still around the lane:
- a `ServiceError` (or a starlette HTTPException) is answered in the flavour's error
  format by `middleware.error_response`, as the exception handlers answer it; a 5xx among
  them (the upstream failed or answered garbage, the store or the quota ledger is away) is
  logged with its cause and request id, which the answer's code alone does not give the
  operator;
- anything else raised before the answer starts is answered 500 in the flavour's format
  (`middleware.unexpected_response`, what the `Exception` handler answers) and re-raised:
  ServerErrorMiddleware then sees a started answer and only re-raises, and the request-id
  layer logs it once, as before;
- the lane sits inside the app's own middleware (`app.py` adds it first, so it runs last):
  Cache-Status, the trim after large bodies and the request id apply as they did.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from cache_service.api.body import request_id
from cache_service.api.middleware import error_response, unexpected_response
from cache_service.api.proxy import Endpoint
from cache_service.errors import ServiceError
from cache_service.flavors.base import Flavor

log = logging.getLogger(__name__)


class ProxyLane:
    def __init__(self, app: ASGIApp, endpoints: Mapping[str, tuple[Flavor, Endpoint]]) -> None:
        self.app = app
        self.endpoints = endpoints

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        lane = (
            self.endpoints.get(_route_path(scope))
            if scope["type"] == "http" and scope["method"] == "POST"
            else None
        )
        if lane is None:
            await self.app(scope, receive, send)
            return
        flavor, endpoint = lane
        request = Request(scope, receive, send)
        try:
            response = await endpoint(request)
        except (ServiceError, HTTPException) as exc:
            if isinstance(exc, ServiceError) and exc.status >= 500:
                cause = {"code": exc.code, "error": exc.message}
                log.warning("request failed", extra={"request_id": request_id(request), **cause})
            response = error_response(flavor, exc)
        except Exception:
            await unexpected_response(flavor)(scope, receive, send)
            raise
        await response(scope, receive, send)


def _route_path(scope: Scope) -> str:
    """The path routes match, as starlette's router takes it (its private `get_route_path`):
    without the root path a server was started with (`--root-path`), when the path carries
    it as a whole segment."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root) and path[len(root) : len(root) + 1] in ("", "/"):
        return path[len(root) :]
    return path
