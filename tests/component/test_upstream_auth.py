"""The operator's upstream key replaces the caller's, in the scheme each API expects: the
route's wire format decides (never the path), and a relayed call keeps its caller's scheme."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from cache_service.app import create_app
from cache_service.backends.upstream import HttpUpstream
from cache_service.flavors import ANTHROPIC, OPENAI_CHAT
from cache_service.flavors.base import Flavor
from cache_service.settings import Settings
from tests.conftest import lifespan, served
from tests.fakes import FakeClock, HashingEmbedder, recording_upstream


@pytest.mark.parametrize(
    ("flavor", "caller", "expected"),
    [
        (
            OPENAI_CHAT,
            {"authorization": "Bearer sk-caller"},
            ("authorization", "Bearer sk-op"),
        ),
        (ANTHROPIC, {"x-api-key": "sk-ant-caller"}, ("x-api-key", "sk-op")),
        (ANTHROPIC, {}, ("x-api-key", "sk-op")),
        (OPENAI_CHAT, {}, ("authorization", "Bearer sk-op")),
    ],
)
async def test_operator_key_replaces_the_callers(
    flavor: Flavor, caller: dict[str, str], expected: tuple[str, str]
) -> None:
    seen: list[httpx.Headers] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers)
        return httpx.Response(200, json={"ok": True})

    up = HttpUpstream(
        "http://up/v1", api_key="sk-op", transport=httpx.MockTransport(handler), timeout_s=5
    )
    try:
        sent = {**caller, "anthropic-version": "2023-06-01"}
        await up.send(flavor.upstream_path, {"model": "m"}, sent, flavor.auth)
    finally:
        await up.aclose()
    (headers,) = seen
    name, value = expected
    assert headers[name] == value
    other = "x-api-key" if name == "authorization" else "authorization"
    assert other not in headers  # the caller's own key never reaches upstream
    assert "caller" not in str(headers.raw)
    assert headers["anthropic-version"] == "2023-06-01"


async def test_relayed_openai_calls_keep_openai_auth_and_errors(
    settings_factory: Callable[..., Settings], embedder: HashingEmbedder, clock: FakeClock
) -> None:
    # A relayed path ending in "messages" (OpenAI's threads API) is not Anthropic's Messages
    # API: it had been sent with x-api-key and answered with Anthropic-shaped errors.
    seen: list[httpx.Request] = []

    upstream = recording_upstream(seen, api_key="sk-op")
    settings = settings_factory(max_body_bytes=1024)
    app = create_app(settings, embedder=embedder, upstream=upstream, clock=clock)
    caller = {"authorization": "Bearer sk-caller"}
    async with (
        lifespan(app) as state,
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=served(app, state)), base_url="http://s"
        ) as c,
    ):
        r = await c.get("/v1/threads/thread_1/messages", headers=caller)
        assert r.status_code == 200
        assert seen[-1].url.path == "/v1/threads/thread_1/messages"
        assert seen[-1].headers["authorization"] == "Bearer sk-op"
        assert "x-api-key" not in seen[-1].headers
        # An Anthropic SDK's caller keeps its own scheme on a relayed call.
        await c.get("/v1/models", headers={"x-api-key": "sk-ant-caller"})
        assert seen[-1].headers["x-api-key"] == "sk-op"
        assert "authorization" not in seen[-1].headers

        too_big = await c.post("/v1/threads/thread_1/messages", content=b"x" * 2000, headers=caller)
        assert too_big.status_code == 413
        assert too_big.json()["error"]["code"] == "request_too_large"  # OpenAI's shape
        # The Messages API itself still answers in Anthropic's.
        too_big = await c.post("/v1/messages", content=b"x" * 2000, headers=caller)
        assert too_big.json()["type"] == "error"
        assert too_big.json()["error"]["type"] == "request_too_large"
