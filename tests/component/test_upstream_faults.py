"""Upstream faults are contained: whatever the upstream does (resets, hangs, drips, answers
garbage, compresses, cuts a stream, storms 5xx or 429), the caller gets an answer or an error
in its route's shape with an `X-Request-Id`, in bounded time; nothing of it is cached; and no
quota stays held. The simulator's faults over ASGI, small timeouts."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from cache_service.backends.upstream import HttpUpstream
from cache_service.protocols import AuthScheme, Upstream, UpstreamStream
from cache_service.settings import Settings
from cache_service.sse import SSEParser
from tests.conftest import Harness, harness
from tests.fakes import FakeClock, HashingEmbedder
from tests.unit.test_simulated import server_url  # noqa: F401  (a fixture)

DEADLINE_S = 0.6
IDLE_S = 0.25
BOUND_S = 3.0
"""Any faulted request is over well within this (real seconds)."""
SETTINGS: dict[str, Any] = {
    "backoff_base_s": 0.001,
    "request_deadline_s": DEADLINE_S,
    "stream_idle_timeout_s": IDLE_S,
    "projects": [{"name": "default", "daily_budget_usd": 100}],
}
CHAT = "/v1/chat/completions"
RESPONSES = "/v1/responses"
MESSAGES = "/v1/messages"
FOUR = 4  # max_retries (3) + 1: every attempt on the one upstream


def body_for(path: str, text: str, stream: bool = False) -> dict[str, Any]:
    if path == CHAT:
        body: dict[str, Any] = {
            "model": "gpt-4o-mini",
            "messages": [{"role": "user", "content": text}],
        }
    elif path == RESPONSES:
        body = {"model": "gpt-4o-mini", "input": text}
    else:
        # A model the shipped table prices: the settlement tests expect spend.
        body = {
            "model": "claude-haiku-4-5",
            "max_tokens": 64,
            "messages": [{"role": "user", "content": text}],
        }
    return {**body, "stream": True} if stream else body


@pytest.fixture
async def h(
    settings_factory: Callable[..., Settings], embedder: HashingEmbedder, clock: FakeClock
) -> AsyncIterator[Harness]:
    async with harness(settings_factory(**SETTINGS), embedder, clock) as h:
        yield h


async def ask(
    h: Harness, path: str, text: str, stream: bool = False
) -> tuple[httpx.Response, float]:
    start = time.monotonic()
    r = await h.client.post(path, json=body_for(path, text, stream))
    took = time.monotonic() - start
    assert took < BOUND_S, f"took {took:.2f} s"
    assert r.headers.get("x-request-id")
    return r, took


def error_of(path: str, r: httpx.Response) -> dict[str, Any]:
    """The error object, checked to be in the route's shape."""
    data = r.json()
    if path == MESSAGES:
        assert data["type"] == "error" and set(data["error"]) == {"type", "message"}
    else:
        assert set(data["error"]) == {"message", "type", "param", "code"}
    error: dict[str, Any] = data["error"]
    return error


def stream_error(path: str, r: httpx.Response) -> dict[str, Any]:
    """The error event that ended a stream (the last event), in the route's shape."""
    name, data = list(SSEParser().feed_events(r.content))[-1]
    event: dict[str, Any] = json.loads(data)
    if path == MESSAGES:
        assert name == "error" and event["type"] == "error"
        error: dict[str, Any] = event["error"]
        return error
    if path == RESPONSES:
        assert event["type"] == "error"
        return event
    error = event["error"]
    return error


async def contained(h: Harness, path: str, text: str) -> None:
    """Nothing cached (the next identical request is a MISS) and no quota held."""
    quota = (await h.client.get("/v1/quota")).json()
    assert quota["in_flight"] == 0
    project = next(s for s in quota["scopes"] if (s["kind"], s["name"]) == ("project", "default"))
    assert project["daily_budget"]["held"] == 0
    again = await h.client.post(path, json=body_for(path, text))
    assert again.status_code == 200, again.text
    assert again.headers["x-cache"] == "MISS"


# --- faults before any answer ----------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
async def test_resets_are_retried_then_a_502(h: Harness, stream: bool) -> None:
    await h.faults(*["reset"] * FOUR)
    r, _ = await ask(h, CHAT, "reset", stream)
    assert r.status_code == 502
    assert error_of(CHAT, r)["code"] == "upstream_unavailable"
    assert await h.upstream_calls() == FOUR
    await contained(h, CHAT, "reset")


async def test_one_reset_is_retried_into_an_answer(h: Harness) -> None:
    await h.faults("reset")
    r, _ = await ask(h, CHAT, "reset once")
    assert r.status_code == 200 and r.headers["x-upstream-attempts"] == "2"


@pytest.mark.parametrize("path", [CHAT, RESPONSES, MESSAGES])
@pytest.mark.parametrize("stream", [False, True])
async def test_a_hang_ends_at_the_deadline(h: Harness, path: str, stream: bool) -> None:
    await h.faults("hang")
    r, took = await ask(h, path, "hang", stream)
    assert r.status_code == 504
    error = error_of(path, r)
    if path != MESSAGES:
        assert error["code"] == "upstream_deadline"
    assert took >= DEADLINE_S * 0.9
    assert await h.upstream_calls() == 1  # no retry could finish in time
    await contained(h, path, "hang")


@pytest.mark.parametrize("stream", [False, True])
async def test_a_drip_ends_at_the_deadline(h: Harness, stream: bool) -> None:
    # In-process the drip arrives as one late body; either way it outlives the deadline.
    await h.faults("drip:0.05")
    r, _ = await ask(h, CHAT, "drip", stream)
    assert r.status_code == 504
    assert error_of(CHAT, r)["code"] == "upstream_deadline"
    await contained(h, CHAT, "drip")


# --- answers that are not answers -----------------------------------------------------------


@pytest.mark.parametrize("path", [CHAT, RESPONSES, MESSAGES])
@pytest.mark.parametrize("stream", [False, True])
async def test_a_garbage_200_is_a_502_never_cached(h: Harness, path: str, stream: bool) -> None:
    await h.faults("garbage")
    r, _ = await ask(h, path, "garbage", stream)
    assert r.status_code == 502
    assert r.headers["x-cache"] == "MISS"
    error = error_of(path, r)
    if path != MESSAGES:
        assert error["code"] == "upstream_invalid_response"
    assert await h.upstream_calls() == 1  # it may have been billed: not asked twice
    # Settled at the estimate: the upstream answered, so it may have charged.
    quota = (await h.client.get("/v1/quota")).json()
    project = next(s for s in quota["scopes"] if (s["kind"], s["name"]) == ("project", "default"))
    assert project["daily_budget"]["used"] > 0
    await contained(h, path, "garbage")


@pytest.mark.parametrize("path", [CHAT, RESPONSES, MESSAGES])
@pytest.mark.parametrize("stream", [False, True])
async def test_gzip_answers_are_decoded_and_cached(h: Harness, path: str, stream: bool) -> None:
    plain, _ = await ask(h, path, "plain answer", stream)
    await h.faults("gzip")
    r, _ = await ask(h, path, "gzipped answer", stream)
    assert r.status_code == 200, r.text
    assert "content-encoding" not in r.headers
    if stream:
        events = [json.loads(d) for _, d in SSEParser().feed_events(r.content) if d != "[DONE]"]
        assert events and not any("error" in e for e in events)
    else:
        assert r.json().keys() == plain.json().keys()
    again = await h.client.post(path, json=body_for(path, "gzipped answer"))
    assert again.headers["x-cache"] == "HIT"


# --- streams that stop ----------------------------------------------------------------------


@pytest.mark.parametrize("path", [CHAT, RESPONSES, MESSAGES])
async def test_a_cut_stream_ends_with_an_error_event(h: Harness, path: str) -> None:
    await h.faults("drop")
    r, _ = await ask(h, path, "cut", stream=True)
    assert r.status_code == 200
    error = stream_error(path, r)
    if path != MESSAGES:
        assert error["code"] == "upstream_incomplete_stream"
    await contained(h, path, "cut")


class _Stalling:
    """The simulator's client, but a stream's chunks stop after the first (`stall`) or keep
    coming too slowly to finish before the deadline (`trickle`)."""

    def __init__(self, inner: HttpUpstream, mode: str) -> None:
        self.inner = inner
        self.mode = mode

    async def send(self, *a: Any) -> Any:
        return await self.inner.send(*a)

    async def raw(self, *a: Any) -> Any:
        return await self.inner.raw(*a)

    async def aclose(self) -> None:
        await self.inner.aclose()

    async def stream(
        self, path: str, body: dict[str, Any], headers: dict[str, str], auth: AuthScheme
    ) -> UpstreamStream:
        up = await self.inner.stream(path, body, headers, auth)
        mode = self.mode

        async def chunks() -> AsyncIterator[bytes]:
            data = b"".join([c async for c in up.chunks])
            events = data.split(b"\n\n")
            yield events[0] + b"\n\n"
            if mode == "stall":
                await asyncio.sleep(3600)
            for event in events[1:]:
                await asyncio.sleep(IDLE_S / 3)
                yield event + b"\n\n"
            while True:  # and never done
                await asyncio.sleep(IDLE_S / 3)
                yield b": keep-alive\n\n"

        return UpstreamStream(up.status, up.headers, chunks())


@pytest.mark.parametrize(
    ("mode", "code"), [("stall", "upstream_stream_stalled"), ("trickle", "upstream_deadline")]
)
@pytest.mark.parametrize("path", [CHAT, MESSAGES])
async def test_a_stalled_or_endless_stream_is_ended(
    settings_factory: Callable[..., Settings],
    embedder: HashingEmbedder,
    clock: FakeClock,
    path: str,
    mode: str,
    code: str,
) -> None:
    def wrap(inner: HttpUpstream) -> Upstream:
        return _Stalling(inner, mode)

    async with harness(settings_factory(**SETTINGS), embedder, clock, wrap=wrap) as h:
        r, took = await ask(h, path, mode, stream=True)
        assert r.status_code == 200
        error = stream_error(path, r)
        if path != MESSAGES:
            assert error["code"] == code
        assert took <= DEADLINE_S + IDLE_S + 0.5
        # Settled at the estimate, not stored.
        quota = (await h.client.get("/v1/quota")).json()
        project = next(
            s for s in quota["scopes"] if (s["kind"], s["name"]) == ("project", "default")
        )
        assert project["daily_budget"]["used"] > 0
        await contained(h, path, mode)


# --- storms ---------------------------------------------------------------------------------


@pytest.mark.parametrize("path", [CHAT, RESPONSES, MESSAGES])
@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("fault", ["500", "503", "429"])
async def test_storms_are_relayed_after_retries(
    h: Harness, path: str, stream: bool, fault: str
) -> None:
    await h.faults(*[fault] * FOUR, retry_after=0)
    r, _ = await ask(h, path, f"storm {fault}", stream)
    assert r.status_code == int(fault)
    error_of(path, r)
    # Which upstream said so, streamed or not (a client tells a relayed error from ours).
    assert (r.headers["x-upstream"], r.headers["x-upstream-attempts"]) == ("primary", "4")
    if not stream:  # a streamed miss's error is relayed before any store decision
        assert r.headers["x-cache-stored"] == "false"
    assert await h.upstream_calls() == FOUR
    await contained(h, path, f"storm {fault}")


async def test_no_retry_waits_past_the_deadline(h: Harness, clock: FakeClock) -> None:
    # Retry-After 10 s with a 0.6 s deadline: the first 429 is relayed at once.
    await h.faults("429", retry_after=10)
    r, took = await ask(h, CHAT, "patience")
    assert r.status_code == 429
    assert await h.upstream_calls() == 1
    assert not clock.slept and took < DEADLINE_S
    await contained(h, CHAT, "patience")


# --- connections that cannot be made ---------------------------------------------------------


async def test_a_refused_connection_falls_back_at_once(
    settings_factory: Callable[..., Settings], embedder: HashingEmbedder, clock: FakeClock
) -> None:
    upstreams = [
        {"name": "primary", "base_url": "http://127.0.0.1:9/v1"},
        {"name": "backup", "base_url": "http://sim/v1"},
    ]
    settings = settings_factory(**SETTINGS, upstreams=upstreams)

    def wrap(sim: HttpUpstream) -> dict[str, Upstream]:
        dead = HttpUpstream("http://127.0.0.1:9/v1", timeout_s=2, connect_timeout_s=1)
        return {"primary": dead, "backup": sim}

    async with harness(settings, embedder, clock, wrap=wrap) as h:
        r, _ = await ask(h, CHAT, "refused")
        assert r.status_code == 200, r.text
        assert r.headers["x-upstream"] == "backup"
        counters = (await h.client.get("/v1/quota")).json()["counters"]
        assert (counters["retries"], counters["fallbacks"]) == (0, 1)
        assert not clock.slept


# --- over a real connection -----------------------------------------------------------------


async def test_over_a_real_connection_drips_stall_and_gzip_streams_decode(
    settings_factory: Callable[..., Settings],
    embedder: HashingEmbedder,
    clock: FakeClock,
    server_url: str,  # noqa: F811
) -> None:
    # httpx's ASGI transport hands over a body only once it is complete; a real server
    # delivers it byte by byte, so here a drip is a stream going quiet mid-answer.
    def wrap(_: HttpUpstream) -> Upstream:
        return HttpUpstream(f"{server_url}/v1", timeout_s=10)

    settings = settings_factory(**{**SETTINGS, "request_deadline_s": 5.0})
    async with (
        harness(settings, embedder, clock, wrap=wrap) as h,
        httpx.AsyncClient(base_url=server_url) as sim,
    ):
        await sim.post("/_sim/faults", json={"faults": ["drip:1", "gzip"]})
        r, took = await ask(h, CHAT, "dripping", stream=True)
        assert r.status_code == 200
        assert stream_error(CHAT, r)["code"] == "upstream_stream_stalled"
        assert took < 5.0 - 1  # the idle timeout ended it, well before the deadline
        r, _ = await ask(h, CHAT, "compressed", stream=True)
        assert "content-encoding" not in r.headers
        events = [d for _, d in SSEParser().feed_events(r.content)]
        assert events[-1] == "[DONE]"
        assert (await h.chat("compressed")).headers["x-cache"] == "HIT"
        await contained(h, CHAT, "dripping")


async def test_an_audit_answered_with_garbage_is_skipped_not_a_disagreement(
    settings_factory: Callable[..., Settings], embedder: HashingEmbedder, clock: FakeClock
) -> None:
    settings = settings_factory(**SETTINGS, audit_sample_rate=1.0)
    async with harness(settings, embedder, clock) as h:
        await h.chat("How do I reset my password?")
        await h.faults("garbage")  # the audit's fresh call gets it
        hit = await h.chat("how do I reset my password")
        assert hit.headers["x-cache-match"] == "semantic"
        for _ in range(500):  # the audit runs in the background, after the hit was served
            audit = (await h.client.get("/v1/cache/stats")).json()["quality"]["audit"]
            if audit.get("skipped"):
                break
            await asyncio.sleep(0.02)
        assert (audit["skipped"], audit["audited"]) == (1, 0)
        assert (await h.client.get("/v1/quota")).json()["in_flight"] == 0


async def test_a_relayed_call_that_hangs_ends_at_the_deadline(h: Harness) -> None:
    # The relay is held to the same deadline as the cached routes: its answer's head comes
    # within it, or the caller gets a 504 naming the deadline.
    await h.faults("hang")
    start = time.monotonic()
    r = await h.client.get("/v1/models")
    took = time.monotonic() - start
    assert r.status_code == 504 and r.headers.get("x-request-id")
    assert error_of(CHAT, r)["code"] == "upstream_deadline"
    assert DEADLINE_S * 0.9 <= took < BOUND_S
    quota = (await h.client.get("/v1/quota")).json()
    assert quota["in_flight"] == 0
    assert (await h.client.get("/v1/models")).status_code == 200
