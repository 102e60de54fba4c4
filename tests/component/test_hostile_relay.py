"""The relay talks to the configured upstream only: a relayed path can name nothing but a
path below the upstream's base URL, and a sidecar route called with another method is 405
here, never relayed with the caller's credentials. Each refusal is a 4xx with the usual error
body and an X-Request-Id, and the upstream never sees the request."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Callable

import httpx
import pytest
from starlette.types import ASGIApp, Message

from cache_service.app import create_app
from cache_service.backends.upstream import HttpUpstream
from cache_service.settings import Settings
from tests.component.test_hostile_input import assert_refused
from tests.conftest import http_scope, lifespan, served
from tests.fakes import FakeClock, HashingEmbedder, recording_upstream


@dataclasses.dataclass
class Relayed:
    """A sidecar in front of a recording upstream: a client, the app, and what upstream saw."""

    client: httpx.AsyncClient
    app: ASGIApp
    seen: list[httpx.Request]


@pytest.fixture
async def relayed(
    settings_factory: Callable[..., Settings], embedder: HashingEmbedder, clock: FakeClock
) -> AsyncIterator[Relayed]:
    seen: list[httpx.Request] = []

    upstream = recording_upstream(seen, api_key=None)
    app = create_app(settings_factory(), embedder=embedder, upstream=upstream, clock=clock)
    async with (
        lifespan(app) as state,
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=served(app, state)), base_url="http://s"
        ) as c,
    ):
        yield Relayed(c, served(app, state), seen)


async def raw_get(app: ASGIApp, raw_path: str) -> httpx.Response:
    """A GET whose path reaches the app as a server hands it over: percent-decoded, and
    otherwise exactly as written (httpx would normalise `..` away before sending)."""
    sent: list[Message] = []
    requested = False
    done = asyncio.Event()

    async def receive() -> Message:
        nonlocal requested
        if not requested:
            requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await done.wait()  # as a server: the client goes once the answer is complete
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body"):
            done.set()

    scope = http_scope("GET", raw_path, [(b"host", b"s"), (b"authorization", b"Bearer sk-caller")])
    await app(scope, receive, send)
    start, *rest = sent
    body = b"".join(m.get("body", b"") for m in rest)
    return httpx.Response(start["status"], headers=start["headers"], content=body)


# 10. Absolute URLs, `//`, dot segments (encoded too), backslashes: never off the base URL.
@pytest.mark.parametrize(
    "raw_path",
    [
        "/v1/http://some-host/anything",
        "/v1/https://some-host/anything",
        "/v1/http:some-host/anything",
        "/v1//some-host/anything",
        "/v1///some-host/anything",
        "/v1/models//x",
        "/v1/../admin/keys",
        "/v1/files/../../admin",
        "/v1/./models",
        "/v1/%2e%2e/admin",
        "/v1/files/%2E%2e/%2e%2e/admin",
        "/v1/%252e%252e/admin",
        "/v1/files%2f..%2fadmin",
        "/v1/files%2Fx",
        "/v1/files\\..\\admin",
        "/v1/files%5c..%5cadmin",
        "/v1/models%3fx=1",
        "/v1/models%0d%0aHost:%20evil",
    ],
)
async def test_relayed_paths_stay_below_the_upstream(relayed: Relayed, raw_path: str) -> None:
    seen = relayed.seen
    r = await raw_get(relayed.app, raw_path)
    error = assert_refused(r, "/v1/models")
    assert error["param"] == "path"
    assert seen == []
    # plain paths still go, to the configured upstream only
    ok = await raw_get(relayed.app, "/v1/models/ft:gpt-4o-mini:org::abc")
    assert ok.status_code == 200
    assert [str(s.url) for s in seen] == ["http://up/v1/models/ft:gpt-4o-mini:org::abc"]


async def test_the_upstream_refuses_a_url_off_its_base() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200)

    up = HttpUpstream("http://up/v1", transport=httpx.MockTransport(handler))
    try:
        for path in ("http://evil/x", "../admin", "a/../../x"):
            with pytest.raises(Exception) as caught:
                await up.raw("GET", path, b"", {"authorization": "Bearer k"}, [], "bearer")
            assert getattr(caught.value, "status", None) == 400
        await up.raw("GET", "models", b"", {}, [], "bearer")
    finally:
        await up.aclose()
    assert [str(s.url) for s in seen] == ["http://up/v1/models"]


# 10. A wrong method on a sidecar route is answered here, not relayed with credentials.
@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("GET", "/v1/chat/completions", "POST"),
        ("PUT", "/v1/chat/completions", "POST"),
        ("GET", "/v1/responses", "POST"),
        ("GET", "/v1/messages", "POST"),
        ("PUT", "/v1/cache/lookup", "POST"),
        ("GET", "/v1/cache/store", "POST"),
        ("GET", "/v1/cache/feedback", "POST"),
        ("POST", "/v1/cache/stats", "GET"),
        ("PATCH", "/v1/cache/entries/abc", "DELETE"),
    ],
)
async def test_a_wrong_method_on_our_routes_is_405_here(
    relayed: Relayed, method: str, path: str, allow: str
) -> None:
    seen = relayed.seen
    r = await relayed.client.request(method, path, headers={"authorization": "Bearer sk-caller"})
    assert_refused(r, path, status=405)
    assert allow in r.headers["allow"]
    assert seen == []


# 7. Control characters in a relayed path.
@pytest.mark.parametrize("raw", ["models%01", "models/%00x", "mo%7fdels", "a%0ab", "a%0D%0Ab"])
async def test_control_characters_in_a_relayed_path_are_refused(relayed: Relayed, raw: str) -> None:
    # percent-encoded, as a client sends them; the server decodes them into the path
    r = await raw_get(relayed.app, "/v1/" + raw)
    error = assert_refused(r, "/v1/models")
    assert error["param"] == "path"
    assert relayed.seen == []
