from __future__ import annotations

from typing import Any

import httpx
import pytest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from cache_service.api.proxy_lane import ProxyLane
from cache_service.errors import BadRequest
from cache_service.flavors import ANTHROPIC, OPENAI_CHAT


async def _inner(scope: Scope, receive: Receive, send: Send) -> None:
    await JSONResponse({"by": "router"})(scope, receive, send)


async def _chat(request: Request) -> Response:
    return JSONResponse({"by": "lane"})


async def _refuse(request: Request) -> Response:
    raise BadRequest("no such thing", param="messages")


def _client(app: Any, root_path: str = "") -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app, root_path=root_path), base_url="http://lane"
    )


@pytest.mark.parametrize(
    ("method", "path", "root_path", "by"),
    [
        ("POST", "/v1/chat/completions", "", "lane"),
        ("GET", "/v1/chat/completions", "", "router"),  # the router answers its 405
        ("POST", "/v1/chat/completions/", "", "router"),  # not the route: relayed as before
        ("POST", "/v1/chat", "", "router"),
        ("POST", "/v1/chat/completions", "/api", "lane"),  # behind a root path
    ],
)
async def test_only_a_post_on_the_route_itself_takes_the_lane(
    method: str, path: str, root_path: str, by: str
) -> None:
    app = ProxyLane(_inner, {OPENAI_CHAT.route: (OPENAI_CHAT, _chat)})
    async with _client(app, root_path) as c:
        r = await c.request(method, root_path + path)
    assert r.json() == {"by": by}


async def test_a_refusal_is_answered_in_the_routes_own_format() -> None:
    app = ProxyLane(_inner, {ANTHROPIC.route: (ANTHROPIC, _refuse)})
    async with _client(app) as c:
        r = await c.post(ANTHROPIC.route, json={})
    assert r.status_code == 400
    assert r.json()["type"] == "error"  # Anthropic's shape, not OpenAI's
    assert r.json()["error"]["message"] == "no such thing"
