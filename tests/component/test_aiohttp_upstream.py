"""`AiohttpUpstream` keeps `HttpUpstream`'s contract for plain calls, over a real connection
to the simulated upstream: the same answers, decoded bodies, returned headers and errors."""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from cache_service.backends.aiohttp_upstream import AiohttpUpstream
from cache_service.backends.upstream import HttpUpstream
from cache_service.errors import UpstreamTimeout, UpstreamUnavailable
from cache_service.protocols import Upstream
from tests.unit.test_simulated import server_url  # noqa: F401  (a fixture)

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello there"}]}
CALLER = {"authorization": "Bearer sk-caller", "x-sidecar-secret": "never forwarded"}


@pytest.fixture
async def up(server_url: str) -> AsyncIterator[AiohttpUpstream]:  # noqa: F811
    client = AiohttpUpstream(f"{server_url}/v1", timeout_s=1.0, connect_timeout_s=1.0)
    yield client
    await client.aclose()


async def fault(server_url: str, *faults: str, **extra: Any) -> None:  # noqa: F811
    async with httpx.AsyncClient(base_url=server_url) as sim:
        r = await sim.post("/_sim/faults", json={"faults": list(faults), **extra})
        assert r.status_code == 200


async def test_an_answer_is_the_one_httpx_gets(up: AiohttpUpstream, server_url: str) -> None:  # noqa: F811
    reference: Upstream = HttpUpstream(f"{server_url}/v1")
    try:
        theirs = await reference.send("chat/completions", CHAT, CALLER, "bearer")
    finally:
        await reference.aclose()
    ours = await up.send("/chat/completions", CHAT, CALLER, "bearer")
    assert ours.status == theirs.status == 200
    assert set(ours.headers) == set(theirs.headers)
    mine, other = json.loads(ours.body), json.loads(theirs.body)
    assert mine["choices"] == other["choices"] and mine["usage"] == other["usage"]


async def test_gzip_is_decoded(up: AiohttpUpstream, server_url: str) -> None:  # noqa: F811
    await fault(server_url, "gzip")
    r = await up.send("chat/completions", CHAT, CALLER, "bearer")
    assert r.status == 200 and "content-encoding" not in r.headers
    assert json.loads(r.body)["choices"][0]["message"]["content"]


async def test_errors_are_answers_with_their_retry_after(
    up: AiohttpUpstream,
    server_url: str,  # noqa: F811
) -> None:
    await fault(server_url, "429", retry_after=2)
    r = await up.send("chat/completions", CHAT, CALLER, "bearer")
    assert r.status == 429
    assert (r.headers["retry-after"], r.headers["retry-after-ms"]) == ("2", "2000")
    assert json.loads(r.body)["error"]["code"] == "rate_limit_exceeded"


async def test_a_reset_is_a_retryable_unavailable(up: AiohttpUpstream, server_url: str) -> None:  # noqa: F811
    await fault(server_url, "reset")
    with pytest.raises(UpstreamUnavailable) as caught:
        await up.send("chat/completions", CHAT, CALLER, "bearer")
    assert caught.value.retryable


async def test_a_hang_is_a_timeout_after_the_read_timeout(
    up: AiohttpUpstream,
    server_url: str,  # noqa: F811
) -> None:
    await fault(server_url, "hang:5")
    start = time.monotonic()
    with pytest.raises(UpstreamTimeout):
        await up.send("chat/completions", CHAT, CALLER, "bearer")
    assert 0.9 <= time.monotonic() - start < 3


async def test_a_refused_connection_is_not_retryable() -> None:
    up = AiohttpUpstream("http://127.0.0.1:9/v1", timeout_s=2, connect_timeout_s=1)
    try:
        with pytest.raises(UpstreamUnavailable) as caught:
            await up.send("chat/completions", CHAT, CALLER, "bearer")
        assert not caught.value.retryable
    finally:
        await up.aclose()


async def test_streams_and_relays_go_through_httpx(up: AiohttpUpstream) -> None:
    s = await up.stream("chat/completions", {**CHAT, "stream": True}, CALLER, "bearer")
    assert s.status == 200
    assert b"[DONE]" in b"".join([chunk async for chunk in s.chunks])
    models = await up.raw("GET", "models", b"", CALLER, [], "bearer")
    assert models.status == 200
    assert json.loads(b"".join([chunk async for chunk in models.chunks]))["data"]


async def _recorder() -> tuple[asyncio.Server, list[bytes]]:
    """A server answering each request `{"ok": true}` and keeping it as it arrived; one
    request per connection."""
    heads: list[bytes] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(
            next(
                line.split(b":", 1)[1]
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
        )
        heads.append(head + await reader.readexactly(length))
        body = b'{"ok": true}'
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n"
            + b"content-length: %d\r\n\r\n" % len(body)
            + body
        )
        await writer.drain()
        writer.close()

    return await asyncio.start_server(answer, "127.0.0.1", 0), heads


def _port(server: asyncio.Server) -> int:
    port: int = server.sockets[0].getsockname()[1]
    return port


def _fields(raw: bytes) -> tuple[str, dict[str, str], bytes]:
    """A recorded request's line, header fields (lower-cased names) and body."""
    head, _, sent = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    return lines[0], {k.lower(): v.strip() for k, v in (x.split(":", 1) for x in lines[1:])}, sent


async def test_what_goes_out_is_what_httpx_sends() -> None:
    """The request itself, read off the socket: the operator's key in the route's scheme, the
    caller's key and unlisted headers gone, the JSON body."""
    server, heads = await _recorder()
    up = AiohttpUpstream(f"http://127.0.0.1:{_port(server)}/v1", api_key="sk-operator")
    try:
        r = await up.send("messages", CHAT, CALLER, "x-api-key")
    finally:
        await up.aclose()
        server.close()
    assert (r.status, r.body) == (200, b'{"ok": true}')
    line, fields, sent = _fields(heads[0])
    assert line == "POST /v1/messages HTTP/1.1"
    assert fields["x-api-key"] == "sk-operator"
    assert fields["content-type"] == "application/json"
    assert "authorization" not in fields and "x-sidecar-secret" not in fields
    assert json.loads(sent) == CHAT


async def test_a_netrc_entry_for_the_upstream_adds_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As with httpx, ~/.netrc is not read: its login for the upstream's host would go out
    beside the operator's key (x-api-key), or fail every call carrying Authorization."""
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login someone password netrc-secret\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    server, heads = await _recorder()
    up = AiohttpUpstream(f"http://127.0.0.1:{_port(server)}/v1", api_key="sk-operator")
    try:
        first = await up.send("messages", CHAT, CALLER, "x-api-key")
        second = await up.send("chat/completions", CHAT, CALLER, "bearer")
    finally:
        await up.aclose()
        server.close()
    assert first.status == second.status == 200
    assert "authorization" not in _fields(heads[0])[1]
    assert _fields(heads[1])[1]["authorization"] == "Bearer sk-operator"


async def test_the_environment_s_proxy_is_used_unless_no_proxy_names_the_host(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """HTTP_PROXY as httpx honours it (read when the client is made), NO_PROXY too."""
    proxy, through_proxy = await _recorder()
    direct, straight = await _recorder()
    for name in ("NO_PROXY", "no_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{_port(proxy)}")
    try:
        up = AiohttpUpstream("http://upstream.example:8080/v1")
        try:
            r = await up.send("chat/completions", CHAT, CALLER, "bearer")
        finally:
            await up.aclose()
        assert r.status == 200
        assert _fields(through_proxy[0])[0] == (
            "POST http://upstream.example:8080/v1/chat/completions HTTP/1.1"
        )
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        up = AiohttpUpstream(f"http://127.0.0.1:{_port(direct)}/v1")
        try:
            r = await up.send("chat/completions", CHAT, CALLER, "bearer")
        finally:
            await up.aclose()
        assert r.status == 200 and len(straight) == 1 and len(through_proxy) == 1
    finally:
        proxy.close()
        direct.close()


async def _tls_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
        await reader.readuntil(b"\r\n\r\n")
        body = b'{"ok": true}'
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(body) + body)
        await writer.drain()
    writer.close()


@pytest.fixture
def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 that no store trusts, and its key."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subject = ["-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"]
    files = ["-keyout", str(key), "-out", str(cert)]
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            *subject,
            *files,
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


async def test_tls_trusts_what_httpx_trusts(
    self_signed: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """httpx's roots (certifi, or SSL_CERT_FILE), not the system store: a self-signed
    upstream is refused, and trusted once SSL_CERT_FILE names its certificate."""
    cert, key = self_signed
    served = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    served.load_cert_chain(cert, key)
    server = await asyncio.start_server(_tls_answer, "127.0.0.1", 0, ssl=served)
    url = f"https://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1"
    try:
        up = AiohttpUpstream(url, connect_timeout_s=2)
        try:
            with pytest.raises(UpstreamUnavailable) as caught:
                await up.send("chat/completions", CHAT, CALLER, "bearer")
            assert not caught.value.retryable  # the certificate will not change on a retry
        finally:
            await up.aclose()
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))
        up = AiohttpUpstream(url, connect_timeout_s=2)
        try:
            r = await up.send("chat/completions", CHAT, CALLER, "bearer")
        finally:
            await up.aclose()
        assert (r.status, r.body) == (200, b'{"ok": true}')
    finally:
        server.close()
