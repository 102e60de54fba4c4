"""The simulator's transport faults: reset, hang, drip, garbage and gzip, on every API."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from cache_service.simulator.delivery import DRIP_BYTES, SimulatedReset
from tests.unit.test_simulated import (
    CHAT,
    SLACK_S,
    answer,
    chat,
    client_for,
    server_url,  # noqa: F401  (a fixture)
    sse_events,
)

MESSAGES = "/v1/messages"
RESPONSES = "/v1/responses"
BODIES: dict[str, dict[str, Any]] = {
    CHAT: chat(),
    MESSAGES: {
        "model": "claude-3-5-haiku-latest",
        "max_tokens": 64,
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
    },
    RESPONSES: {"model": "gpt-4o-mini", "input": "What is the capital of France?"},
}
EVERY_API = pytest.mark.parametrize("path", list(BODIES))


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with client_for() as c:
        yield c


def _same_answer(path: str, a: dict[str, Any], b: dict[str, Any]) -> bool:
    # Ids and timestamps differ per call; the content does not.
    if path == CHAT:
        return bool(a["choices"][0]["message"] == b["choices"][0]["message"])
    if path == MESSAGES:
        return bool(a["content"] == b["content"])
    return bool(a["output"][0]["content"] == b["output"][0]["content"])


@EVERY_API
async def test_reset_breaks_the_connection(client: httpx.AsyncClient, path: str) -> None:
    await client.post("/_sim/faults", json={"faults": ["reset"]})
    with pytest.raises(SimulatedReset):
        await client.post(path, json=BODIES[path])
    assert isinstance(SimulatedReset("x"), httpx.TransportError)
    # Only that one request: the next is answered.
    assert (await client.post(path, json=BODIES[path])).status_code == 200


def test_reset_over_a_real_server_closes_without_an_answer(server_url: str) -> None:  # noqa: F811
    with httpx.Client(base_url=server_url) as c:
        with pytest.raises(httpx.RemoteProtocolError):
            c.post(CHAT, json=chat(), headers={"X-Sim-Fault": "reset"})
        assert c.post(CHAT, json=chat()).status_code == 200


async def test_hang_never_answers(client: httpx.AsyncClient) -> None:
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(client.post(CHAT, json=chat(), headers={"X-Sim-Fault": "hang"}), 0.2)
    # A hang that ends still gives no answer: the line dies.
    await client.post("/_sim/faults", json={"faults": ["hang"], "hang_s": 0.05})
    start = time.monotonic()
    with pytest.raises(SimulatedReset):
        await client.post(CHAT, json=chat())
    assert time.monotonic() - start >= 0.05 - SLACK_S


@EVERY_API
async def test_drip_delivers_the_same_answer_slowly(client: httpx.AsyncClient, path: str) -> None:
    plain = (await client.post(path, json=BODIES[path])).json()
    start = time.monotonic()
    r = await client.post(path, json=BODIES[path], headers={"X-Sim-Fault": "drip:0.002"})
    took = time.monotonic() - start
    assert r.status_code == 200
    assert _same_answer(path, plain, r.json())
    assert took >= (len(r.content) // DRIP_BYTES) * 0.002 * 0.9


async def test_drip_paces_a_stream_and_takes_its_default_from_the_request(
    client: httpx.AsyncClient,
) -> None:
    body = chat(stream=True)
    plain = sse_events((await client.post(CHAT, json=body)).text)
    await client.post("/_sim/faults", json={"faults": ["drip"], "drip_s": 0.001})
    start = time.monotonic()
    r = await client.post(CHAT, json=body)
    dripped = sse_events(r.text)
    assert [e if e == "[DONE]" else e["choices"] for e in dripped] == [
        e if e == "[DONE]" else e["choices"] for e in plain
    ]
    assert time.monotonic() - start >= (len(r.content) // DRIP_BYTES) * 0.001 * 0.9


@EVERY_API
async def test_garbage_is_a_200_that_is_no_answer(client: httpx.AsyncClient, path: str) -> None:
    await client.post("/_sim/faults", json={"faults": ["garbage"]})
    r = await client.post(path, json={**BODIES[path], "stream": True})
    assert r.status_code == 200
    assert r.json() == {"nope": 1}


@EVERY_API
async def test_gzip_encodes_a_valid_answer(client: httpx.AsyncClient, path: str) -> None:
    plain = (await client.post(path, json=BODIES[path])).json()
    r = await client.post(path, json=BODIES[path], headers={"X-Sim-Fault": "gzip"})
    assert r.status_code == 200
    assert r.headers["content-encoding"] == "gzip"
    assert r.content[:2] != b"\x1f\x8b"  # httpx decoded it
    assert _same_answer(path, plain, r.json())


async def test_gzip_encodes_a_stream_event_by_event(client: httpx.AsyncClient) -> None:
    body = chat(stream=True)
    plain = sse_events((await client.post(CHAT, json=body)).text)
    async with client.stream("POST", CHAT, json=body, headers={"X-Sim-Fault": "gzip"}) as r:
        assert r.headers["content-encoding"] == "gzip"
        raw = b"".join([c async for c in r.aiter_raw()])
    assert raw[:2] == b"\x1f\x8b"
    r = await client.post(CHAT, json=body, headers={"X-Sim-Fault": "gzip"})
    got = sse_events(r.text)
    assert [e if e == "[DONE]" else e["choices"] for e in got] == [
        e if e == "[DONE]" else e["choices"] for e in plain
    ]


@pytest.mark.parametrize("spec", ["gzip:1", "garbage:2", "reset:0.1", "drip:soon"])
async def test_untimed_new_faults_take_no_seconds(client: httpx.AsyncClient, spec: str) -> None:
    r = await client.post("/_sim/faults", json={"faults": [spec]})
    assert r.status_code == 400
    assert (await client.get("/_sim/stats")).json()["queued_faults"] == 0


async def test_new_faults_count_as_served(client: httpx.AsyncClient) -> None:
    await client.post("/_sim/faults", json={"faults": ["garbage", "gzip", "drip:0"]})
    for _ in range(3):
        await client.post(CHAT, json=chat())
    await answer(client, chat())
    stats = (await client.get("/_sim/stats")).json()
    assert stats["faults_served"] == 3
