"""End to end over raw sockets: a real `serve` process with tiny client limits. A body sent
a byte a second gets 408 within the body deadline, idle connections are closed, and
connections beyond the cap get 503 instead of hanging."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator

import pytest

from tests.e2e.test_openai_sdk import Upstream, sidecar, upstream

pytestmark = pytest.mark.e2e

__all__ = ["upstream"]

BODY_TIMEOUT_S = 2.0
HEADER_TIMEOUT_S = 4.0
KEEP_ALIVE_S = 1
MAX_CONCURRENCY = 4


@pytest.fixture(scope="module")
def base(upstream: Upstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with sidecar(
        upstream,
        tmp_path_factory.mktemp("data"),
        body_timeout_s=str(BODY_TIMEOUT_S),
        header_timeout_s=str(HEADER_TIMEOUT_S),
        keep_alive_timeout_s=str(KEEP_ALIVE_S),
        max_concurrency=str(MAX_CONCURRENCY),
    ) as url:
        yield url


def connect(base: str) -> socket.socket:
    host, port = base.removeprefix("http://").split(":")
    s = socket.create_connection((host, int(port)), timeout=10)
    return s


def read_answer(s: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 answer with a Content-Length body (all the sidecar's errors have one)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        assert chunk, f"connection closed before an answer: {data!r}"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        chunk = s.recv(65536)
        assert chunk
        rest += chunk
    return status, headers, rest[:length]


def closed_within(s: socket.socket, seconds: float) -> float | None:
    """Seconds until the peer closes the connection, or None if it stays open that long."""
    start = time.monotonic()
    s.settimeout(seconds)
    try:
        while s.recv(65536):
            pass
    except TimeoutError:
        return None
    except ConnectionResetError:
        pass
    return time.monotonic() - start


def get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: sidecar\r\n\r\n".encode()


def test_body_sent_a_byte_a_second_gets_408_within_the_deadline(base: str) -> None:
    body = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]})
    with connect(base) as s:
        s.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: sidecar\r\n"
            b"Content-Type: application/json\r\n" + f"Content-Length: {len(body)}\r\n\r\n".encode()
        )
        start = time.monotonic()
        s.settimeout(1.0)
        answer = b""
        for byte in body.encode():
            s.sendall(bytes([byte]))
            try:
                answer = s.recv(65536)
            except TimeoutError:
                continue
            break
        elapsed = time.monotonic() - start
        assert answer, "no answer while the body trickled in"
        s.settimeout(5)
        rest = b""
        if b"\r\n\r\n" in answer:
            _, _, rest = answer.partition(b"\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 408"), answer
        assert elapsed < BODY_TIMEOUT_S + 1.5, elapsed
        assert b"x-request-id" in answer.lower()
        while b'"code"' not in rest:
            chunk = s.recv(65536)
            if not chunk:
                break
            rest += chunk
        error = json.loads(rest)["error"]
        assert error["code"] == "request_timeout"
        assert error["type"] == "invalid_request_error"


def test_idle_keep_alive_connection_is_closed_after_the_timeout(base: str) -> None:
    with connect(base) as s:
        s.sendall(get("/healthz"))
        status, headers, _ = read_answer(s)
        assert status == 200
        assert headers.get("connection", "keep-alive") != "close"
        waited = closed_within(s, KEEP_ALIVE_S + 3)
        assert waited is not None, "idle keep-alive connection was never closed"
        assert waited < KEEP_ALIVE_S + 1.5


def test_connection_that_never_sends_a_request_is_closed(base: str) -> None:
    with connect(base) as s:
        waited = closed_within(s, HEADER_TIMEOUT_S + 3)
        assert waited is not None, "a silent connection was held open"
        assert waited > HEADER_TIMEOUT_S - 1


def test_headers_dribbled_in_are_cut_off_at_the_header_deadline(base: str) -> None:
    with connect(base) as s:
        start = time.monotonic()
        s.settimeout(0.5)
        for line in [b"GET /healthz HTTP/1.1\r\n", *[b"X-Slow: 1\r\n"] * 20]:
            try:
                s.sendall(line)
                if s.recv(65536) == b"":
                    break
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                break
        assert time.monotonic() - start < HEADER_TIMEOUT_S + 2


def test_connections_beyond_the_cap_get_503_instead_of_hanging(base: str) -> None:
    idle = [connect(base) for _ in range(MAX_CONCURRENCY)]
    try:
        time.sleep(0.3)  # the server accepts them
        with connect(base) as s:
            s.sendall(get("/healthz"))
            s.settimeout(5)
            status, headers, body = read_answer(s)
            assert status == 503
            # In the app's error format, as SDKs expect, with an id and when to retry.
            assert json.loads(body)["error"]["code"] == "over_capacity"
            assert headers["content-type"] == "application/json"
            assert headers["retry-after"] == "1" and headers["x-request-id"]
        with connect(base) as s:
            chat = b'{"model": "claude-x", "max_tokens": 8, "messages": []}'
            s.sendall(
                b"POST /v1/messages HTTP/1.1\r\nHost: sidecar\r\nX-Request-Id: mine-1\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(chat), chat)
            )
            s.settimeout(5)
            status, headers, body = read_answer(s)
            assert status == 503 and headers["x-request-id"] == "mine-1"
            assert json.loads(body)["type"] == "error"  # Anthropic's shape on its route
    finally:
        for s in idle:
            s.close()
    time.sleep(0.3)
    with connect(base) as s:
        s.sendall(get("/healthz"))
        status, _, _ = read_answer(s)
        assert status == 200


def test_headers_past_the_limit_are_refused(base: str) -> None:
    # What is buffered of an unfinished head is bounded (serving.py counts it: httptools
    # would buffer a header without end): headers still arriving past the limit are refused.
    with connect(base) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: sidecar\r\nX-Big: " + b"a" * 40_000)
        status, _, _ = read_answer(s)
        assert status == 400


def test_a_pipelined_head_after_a_large_body_is_not_counted_as_that_body(base: str) -> None:
    # One read can hold a request's 30 KB body and the start of the next request's head: the
    # head limit must not count the body's bytes as the head's.
    body = b"x" * 30_000
    first = b"POST /healthz HTTP/1.1\r\nHost: sidecar\r\nContent-Length: 30000\r\n\r\n" + body
    with connect(base) as s:
        s.sendall(first + b"GET /healthz HTTP/1.1\r\nHost: sidecar\r\n")
        time.sleep(0.3)
        s.sendall(b"\r\n")
        data = b""
        while data.count(b"HTTP/1.1 ") < 2:
            chunk = s.recv(65536)
            assert chunk, f"connection closed: {data!r}"
            data += chunk
    statuses = [int(part.split(b" ", 1)[0]) for part in data.split(b"HTTP/1.1 ")[1:3]]
    assert statuses[1] == 200, data
    assert statuses[0] != 400, data
