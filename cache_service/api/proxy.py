"""The proxied wire formats, one route per flavour from the registry, and the relay for every
other `/v1/...` call. Routes only translate HTTP into calls on the proxy handler."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import APIRouter, Request
from starlette.responses import Response, StreamingResponse

from cache_service.api import state
from cache_service.api.body import lower_headers, read_body, read_json, request_id, validate
from cache_service.api.openapi import WITH_BODY, WITHOUT_BODY, error_responses, json_body
from cache_service.cache.keys import project_of
from cache_service.cache.tenancy import namespace_of
from cache_service.flavors import FLAVORS
from cache_service.flavors.base import Flavor
from cache_service.proxy.context import proxy_context

router = APIRouter()
# Last in the app: any /v1 path no other router claims is relayed upstream.
relay_router = APIRouter()


def _endpoint(flavor: Flavor) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        settings = state.settings(request)
        body = await read_json(request, settings.max_body_bytes, timeout_s=settings.body_timeout_s)
        validate(flavor.schema, body)
        headers = lower_headers(request)
        tenancy = state.tenancy(request)
        tenant = tenancy.tenant(tenancy.caller(headers), namespace_of(headers))
        ctx = proxy_context(flavor, body, headers, request_id(request), settings, tenant)
        return await state.proxy(request).handle(ctx)

    endpoint.__name__ = f"proxy_{flavor.name}"
    endpoint.__doc__ = f"{flavor.route}: looked up in the cache, else forwarded under quota."
    return endpoint


for _flavor in FLAVORS:
    router.add_api_route(
        _flavor.route,
        _endpoint(_flavor),
        methods=["POST"],
        responses=error_responses(_flavor),
        openapi_extra=json_body(_flavor.schema),
    )


async def relay(request: Request, path: str) -> Response:
    """Every other API path (embeddings, models, files...) goes upstream as it is, under the
    request-rate limits: the app changes only its base URL, and nothing it used before
    stops working."""
    settings = state.settings(request)
    content = await read_body(request, settings.max_body_bytes, timeout_s=settings.body_timeout_s)
    headers = lower_headers(request)
    up = await state.chain(request).relay(
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


# One route per method, so each has its own operation id and only the ones that carry a body
# declare one.
for _method in ("GET", "POST", "PUT", "PATCH", "DELETE"):
    relay_router.add_api_route(
        "/v1/{path:path}",
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
