"""The httpx upstream client: transport failures become our errors (a connection that cannot
be made is not worth retrying), and every body it hands on is decoded."""

from __future__ import annotations

import gzip

import httpx
import pytest

from cache_service.backends.upstream import HttpUpstream
from cache_service.errors import UpstreamTimeout, UpstreamUnavailable

ANSWER = b'{"choices": []}'
EVENTS = b'data: {"a": 1}\n\ndata: [DONE]\n\n'


def gzipped(request: httpx.Request) -> httpx.Response:
    body = EVENTS if request.url.path.endswith("stream") else ANSWER
    return httpx.Response(
        200,
        content=gzip.compress(body),
        headers={"content-encoding": "gzip", "content-type": "application/json"},
    )


def client(handler: object) -> HttpUpstream:
    assert callable(handler)
    return HttpUpstream("http://up/v1", transport=httpx.MockTransport(handler))


async def test_gzip_is_decoded_on_send_stream_and_relay() -> None:
    up = client(gzipped)
    sent = await up.send("chat", {}, {}, "bearer")
    assert sent.body == ANSWER
    streamed = await up.stream("stream", {}, {}, "bearer")
    assert b"".join([c async for c in streamed.chunks]) == EVENTS
    relayed = await up.raw("GET", "models", b"", {}, [], "bearer")
    assert b"".join([c async for c in relayed.chunks]) == ANSWER
    assert "content-encoding" not in relayed.headers
    await up.aclose()


def failing(error: Exception) -> object:
    def handler(request: httpx.Request) -> httpx.Response:
        raise error

    return handler


@pytest.mark.parametrize(
    ("error", "kind", "retryable"),
    [
        (httpx.ConnectError("connection refused"), UpstreamUnavailable, False),
        (httpx.ConnectError("name or service not known"), UpstreamUnavailable, False),
        (httpx.ReadError("reset by peer"), UpstreamUnavailable, True),
        (httpx.RemoteProtocolError("peer closed"), UpstreamUnavailable, True),
        (httpx.ConnectTimeout("slow"), UpstreamTimeout, None),
        (httpx.ReadTimeout("slow"), UpstreamTimeout, None),
    ],
)
async def test_transport_errors(error: Exception, kind: type, retryable: bool | None) -> None:
    up = client(failing(error))
    for call in (up.send("chat", {}, {}, "bearer"), up.stream("chat", {}, {}, "bearer")):
        with pytest.raises(kind) as raised:
            await call
        if retryable is not None:
            assert getattr(raised.value, "retryable", None) is retryable
    await up.aclose()
