"""The proxied wire formats, one route per flavour from the registry, and the relay for every
other `/v1/...` call. Routes only translate HTTP into calls on the proxy handler.

The relay claims only paths that are the upstream's: a sidecar path called with another
method is answered 405 here (it would otherwise fall through to the relay and go upstream
with the caller's credentials), and a path that could leave the upstream's base URL is 400."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable, Iterator

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.convertors import Convertor, register_url_convertor
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute, Match, Route

from cache_service.api import state
from cache_service.api.body import lower_headers, read_body, read_json, request_id, validate
from cache_service.api.cache_field import take_cache_field
from cache_service.api.openapi import WITH_BODY, WITHOUT_BODY, error_responses, json_body
from cache_service.cache.keys import RequestKeys, project_of
from cache_service.cache.tenancy import namespace_of
from cache_service.errors import BadRequest
from cache_service.flavors import FLAVORS, for_route
from cache_service.flavors.base import Flavor
from cache_service.proxy.context import proxy_context
from cache_service.proxy.embeddings import PATH as EMBEDDINGS
from cache_service.proxy.embeddings import embedding_keys
from cache_service.upstream.paths import checked_relay_path


class _AnyPath(Convertor[str]):
    # Starlette's `path` stops at a newline (the route then 404s); the relay must see every
    # path to refuse it in its own words.
    regex = "[\\s\\S]*"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("relayed", _AnyPath())
RELAYED = "/v1/{path:relayed}"
# Encoded separators: the server decoded them into the path, where they would pass as real ones.
_ENCODED_SEPARATORS = (b"%2f", b"%5c")

Endpoint = Callable[[Request], Awaitable[Response]]

router = APIRouter()
# Last in the app: any /v1 path no other router claims is relayed upstream.
relay_router = APIRouter()


def _endpoint(flavor: Flavor) -> Endpoint:
    async def endpoint(request: Request) -> Response:
        settings = state.of(request)["settings"]
        body = await read_json(request, settings.max_body_bytes, timeout_s=settings.body_timeout_s)
        body, headers = take_cache_field(body, lower_headers(request))
        validate(flavor.schema, body)
        tenancy = state.of(request)["tenancy"]
        tenant = tenancy.tenant(tenancy.caller(headers), namespace_of(headers))
        ctx = proxy_context(flavor, body, headers, request_id(request), settings, tenant)
        return await state.of(request)["proxy"].handle(ctx)

    endpoint.__name__ = f"proxy_{flavor.name}"
    endpoint.__doc__ = f"{flavor.route}: looked up in the cache, else forwarded under quota."
    return endpoint


ENDPOINTS: dict[str, tuple[Flavor, Endpoint]] = {}
"""Each flavour's POST endpoint by its route: the routes below, and the proxy lane's
(`api/proxy_lane.py`), which calls them without the router."""

for _flavor in FLAVORS:
    ENDPOINTS[_flavor.route] = (_flavor, _endpoint(_flavor))
    router.add_api_route(
        _flavor.route,
        ENDPOINTS[_flavor.route][1],
        methods=["POST"],
        responses=error_responses(_flavor),
        openapi_extra=json_body(_flavor.schema),
    )


def _own_routes(routes: Iterable[BaseRoute]) -> Iterator[Route]:
    """Every route of the app, into included routers (recent FastAPI keeps them whole). The
    sidecar includes its routers without a prefix, so their own paths are the paths served."""
    for route in routes:
        if isinstance(route, Route):
            yield route
        inner = getattr(route, "original_router", None)
        if inner is not None:
            yield from _own_routes(inner.routes)


def _not_allowed(request: Request) -> Response | None:
    """405 when a sidecar route owns this path under other methods, in that route's shape."""
    owners = [
        route
        for route in _own_routes(request.app.router.routes)
        if route.path != RELAYED and route.matches(request.scope)[0] is Match.PARTIAL
    ]
    if not owners:
        return None
    allowed = sorted({m for route in owners for m in route.methods or ()})
    message = f"{request.method} is not allowed on {request.url.path}; use {', '.join(allowed)}"
    body = for_route(owners[0].path).error_body(message, "invalid_request_error")
    return JSONResponse(body, status_code=405, headers={"allow": ", ".join(allowed)})


async def relay(request: Request, path: str) -> Response:
    """Every other API path (embeddings, models, files...) goes upstream as it is, under the
    request-rate limits: the app changes only its base URL, and nothing it used before
    stops working."""
    refused = _not_allowed(request)
    if refused is not None:
        return refused
    raw = bytes(request.scope.get("raw_path") or b"").lower()
    if any(sep in raw for sep in _ENCODED_SEPARATORS):
        raise BadRequest("relayed path contains an encoded '/' or '\\'", param="path")
    path = checked_relay_path(path)
    settings = state.of(request)["settings"]
    content = await read_body(request, settings.max_body_bytes, timeout_s=settings.body_timeout_s)
    headers = lower_headers(request)
    if request.method == "POST" and path == EMBEDDINGS:
        keys = _embedding_keys(request, content, headers)
        if keys is not None:
            return await state.of(request)["embeddings"].handle(
                keys,
                content,
                headers,
                list(request.query_params.multi_items()),
                project_of(headers),
                request_id(request),
            )
    up = await state.of(request)["chain"].relay(
        request.method,
        path,
        content,
        headers,
        list(request.query_params.multi_items()),
        project_of(headers),
    )
    out = {**up.headers, "x-cache": "BYPASS"}
    media = out.pop("content-type", None)
    return StreamingResponse(up.chunks, status_code=up.status, headers=out, media_type=media)


def _embedding_keys(
    request: Request, content: bytes, headers: dict[str, str]
) -> RequestKeys | None:
    """An embeddings request's exact key in the caller's tenant; None when the body is not
    one (it is then relayed as it is, for the upstream to judge)."""
    try:
        body = json.loads(content)
    except ValueError:
        return None
    tenancy = state.of(request)["tenancy"]
    tenant = tenancy.tenant(tenancy.caller(headers), namespace_of(headers))
    return embedding_keys(body, tenant, state.of(request)["settings"])


# One route per method, so each has its own operation id and only the ones that carry a body
# declare one.
for _method in ("GET", "POST", "PUT", "PATCH", "DELETE"):
    relay_router.add_api_route(
        RELAYED,
        relay,
        methods=[_method],
        operation_id=f"relay_{_method.lower()}",
        responses=error_responses(
            statuses=WITH_BODY if _method in ("POST", "PUT", "PATCH") else WITHOUT_BODY
        ),
        openapi_extra=(
            json_body(None, "Passed upstream as it is")
            if _method in ("POST", "PUT", "PATCH")
            else None
        ),
    )
