"""Hostile and malformed input, through the whole app in-process: each is a 4xx (405 for a
wrong method) with the route's error body and an X-Request-Id, never a 500 or a call
upstream. The relay's cases (10, and 7's control characters) are in test_hostile_relay.py."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from cache_service.backends.records import to_record
from cache_service.proxy.handler import ProxyHandler
from cache_service.settings import Settings
from tests.conftest import Harness, harness
from tests.fakes import FakeClock, HashingEmbedder

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
MESSAGES = {
    "model": "claude-3-5-haiku-latest",
    "max_tokens": 64,
    "messages": [{"role": "user", "content": "hi"}],
}
RESPONSES = {"model": "gpt-4o-mini", "input": "hi"}
LOOKUP = {"model": "gpt-4o-mini", "prompt": "hi"}
STORE = {"model": "gpt-4o-mini", "prompt": "hi", "response": {"text": "hello"}}

# Each JSON endpoint and a valid body for it.
ENDPOINTS = [
    ("/v1/chat/completions", CHAT),
    ("/v1/messages", MESSAGES),
    ("/v1/responses", RESPONSES),
    ("/v1/cache/lookup", LOOKUP),
    ("/v1/cache/store", STORE),
]


@pytest.fixture
async def h(
    settings_factory: Callable[..., Settings], embedder: HashingEmbedder, clock: FakeClock
) -> AsyncIterator[Harness]:
    async with harness(settings_factory(backoff_base_s=0.001), embedder, clock) as h:
        yield h


def json_with(body: dict[str, Any], field: str, raw: str) -> bytes:
    """`body` as JSON with one more field whose value is written raw (what json.dumps
    would not write: NaN, 1e400, a lone surrogate escape...)."""
    text = httpx.Request("POST", "http://x", json=body).content.decode()
    return f'{text[:-1]}, "{field}": {raw}}}'.encode()


def assert_refused(r: httpx.Response, path: str, status: int = 400) -> dict[str, Any]:
    """The status, an error body in the route's shape, and a request id; the error."""
    assert r.status_code == status, r.text
    assert r.headers["x-request-id"]
    body = r.json()
    if path == "/v1/messages":
        assert body["type"] == "error"
        error: dict[str, Any] = body["error"]
        assert error["type"] == "invalid_request_error"
    else:
        error = body["error"]
        assert error["type"] == "invalid_request_error"
        assert error["message"]
    return error


async def post(h: Harness, path: str, content: bytes) -> httpx.Response:
    return await h.client.post(path, content=content, headers={"content-type": "application/json"})


# 1. A lone surrogate escape cannot be encoded (the scope hash, the upstream call).
@pytest.mark.parametrize(("path", "body"), ENDPOINTS)
async def test_a_lone_surrogate_is_refused_at_parse_time(
    h: Harness, path: str, body: dict[str, Any]
) -> None:
    content = json_with(body, "metadata", '{"note": "\\ud800"}')
    if "messages" in body:  # in the prompt itself, where it broke the scope hash
        content = content.replace(b'"content": "hi"', b'"content": "hi \\udfff"')
    error = assert_refused(await post(h, path, content), path)
    assert "surrogate" in error["message"]
    # as UTF-8 bytes, which the JSON decoder lets pass as a surrogate too
    utf8 = content.replace(b"\\ud800", "\ud800".encode("utf-8", "surrogatepass"))
    assert "surrogate" in assert_refused(await post(h, path, utf8), path)["message"]
    # a proper pair is text, and still welcome
    ok = await post(
        h, path, content.replace(b"\\ud800", b"\\ud83d\\ude00").replace(b" \\udfff", b"")
    )
    assert ok.status_code < 300, ok.text
    assert await h.upstream_calls() <= 1


# 2. Deep nesting: refused before the parser recurses.
@pytest.mark.parametrize("depth", [65, 1_000, 100_000])
@pytest.mark.parametrize(("path", "body"), ENDPOINTS[:3])
async def test_deep_nesting_is_refused(
    h: Harness, path: str, body: dict[str, Any], depth: int
) -> None:
    content = json_with(body, "metadata", "[" * depth + "]" * depth)
    error = assert_refused(await post(h, path, content), path)
    assert "levels deep" in error["message"]
    # brackets inside strings are text, not nesting
    ok = await post(
        h, path, json_with(body, "metadata", '{"note": "' + "[{" * min(depth, 200) + '"}')
    )
    assert ok.status_code == 200, ok.text
    assert await h.upstream_calls() == 1


# 3. An integer longer than Python converts.
@pytest.mark.parametrize(("path", "body"), ENDPOINTS)
async def test_an_integer_of_thousands_of_digits_is_refused(
    h: Harness, path: str, body: dict[str, Any]
) -> None:
    error = assert_refused(await post(h, path, json_with(body, "seed", "9" * 5000)), path)
    assert "digits" in error["message"]
    assert await h.upstream_calls() == 0


# 4. Non-finite numbers: not JSON, and an overflow in the pricing.
@pytest.mark.parametrize(
    "raw", ["NaN", "Infinity", "-Infinity", "1e400", "-1e400", "1E+309", "9" * 250 + "e99"]
)
@pytest.mark.parametrize("field", ["max_tokens", "metadata", "temperature"])
async def test_non_finite_numbers_are_refused(h: Harness, raw: str, field: str) -> None:
    path = "/v1/chat/completions"
    value = f'{{"x": [{raw}]}}' if field == "metadata" else raw
    assert_refused(await post(h, path, json_with(CHAT, field, value)), path)
    assert await h.upstream_calls() == 0


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/v1/chat/completions", CHAT, "max_tokens"),
        ("/v1/chat/completions", CHAT, "max_completion_tokens"),
        ("/v1/chat/completions", CHAT, "n"),
        ("/v1/messages", MESSAGES, "max_tokens"),
        ("/v1/responses", RESPONSES, "max_output_tokens"),
    ],
)
@pytest.mark.parametrize("raw", ["1e400", "16.0", "1e300", '"16"', "true", str(2**64)])
async def test_integer_fields_must_be_integers(
    h: Harness, path: str, body: dict[str, Any], field: str, raw: str
) -> None:
    r = await post(h, path, json_with({k: v for k, v in body.items() if k != field}, field, raw))
    error = assert_refused(r, path)
    if path != "/v1/messages":
        assert error["param"] == field or "out of range" in error["message"]
    assert await h.upstream_calls() == 0


# 5. `stream` must be a JSON boolean: "false" had been taken for a stream.
@pytest.mark.parametrize("raw", ['"false"', '"true"', "0", "1", '"no"'])
@pytest.mark.parametrize(("path", "body"), ENDPOINTS[:3])
async def test_stream_must_be_a_boolean(
    h: Harness, path: str, body: dict[str, Any], raw: str
) -> None:
    error = assert_refused(await post(h, path, json_with(body, "stream", raw)), path)
    if path != "/v1/messages":
        assert error["param"] == "stream"
    assert await h.upstream_calls() == 0


# 6. Wrong types in any field the flavours read.
@pytest.mark.parametrize(
    ("path", "body", "field", "raw"),
    [
        ("/v1/chat/completions", {**CHAT, "stream": True}, "stream_options", "5"),
        ("/v1/chat/completions", {**CHAT, "stream": True}, "stream_options", "[]"),
        ("/v1/chat/completions", CHAT, "stream_options", '{"include_usage": "yes"}'),
        ("/v1/chat/completions", CHAT, "messages", '[{"role": "user", "content": 5}]'),
        ("/v1/chat/completions", CHAT, "messages", '[{"role": "user", "content": [5]}]'),
        ("/v1/chat/completions", CHAT, "messages", '[{"role": "user", "content": true}]'),
        ("/v1/chat/completions", CHAT, "messages", '{"role": "user"}'),
        ("/v1/chat/completions", CHAT, "model", "5"),
        ("/v1/chat/completions", CHAT, "temperature", '"0.5"'),
        ("/v1/chat/completions", CHAT, "temperature", "true"),
        ("/v1/chat/completions", CHAT, "top_p", '"1"'),
        ("/v1/responses", RESPONSES, "temperature", '"0.5"'),
        ("/v1/responses", RESPONSES, "top_p", "false"),
        ("/v1/messages", MESSAGES, "system", "5"),
        ("/v1/messages", MESSAGES, "system", "[5]"),
        ("/v1/messages", MESSAGES, "messages", '[{"role": "user", "content": 5}]'),
        ("/v1/messages", MESSAGES, "messages", '[{"role": "user", "content": null}]'),
        ("/v1/responses", RESPONSES, "instructions", "5"),
        ("/v1/responses", RESPONSES, "instructions", '["a"]'),
        ("/v1/responses", RESPONSES, "input", "5"),
        ("/v1/responses", RESPONSES, "input", "[5]"),
        ("/v1/responses", RESPONSES, "input", '{"role": "user"}'),
    ],
)
async def test_wrong_types_in_fields_the_sidecar_reads(
    h: Harness, path: str, body: dict[str, Any], field: str, raw: str
) -> None:
    rest = {k: v for k, v in body.items() if k != field}
    assert_refused(await post(h, path, json_with(rest, field, raw)), path)
    assert await h.upstream_calls() == 0


async def test_anthropic_stream_options_are_forwarded_untouched(h: Harness) -> None:
    # Not a field of Anthropic's, nor one the sidecar reads there: a stream still works.
    body = {**MESSAGES, "stream": True, "stream_options": 5}
    r = await h.client.post("/v1/messages", json=body)
    assert r.status_code == 200, r.text
    assert "message_stop" in r.text


# 7. An empty request id in feedback (control characters in a relayed path: in
# test_hostile_relay.py).
@pytest.mark.parametrize(
    "body",
    [
        {"request_id": "", "correct": False},
        {"entry_id": "", "correct": False},
        {"request_id": "", "entry_id": "", "correct": True},
    ],
)
async def test_empty_ids_in_feedback_are_refused(h: Harness, body: dict[str, Any]) -> None:
    r = await h.client.post("/v1/cache/feedback", json=body)
    assert_refused(r, "/v1/cache/feedback")


# 8. Poisoned entries: refused at store time, and never a 500 at lookup time.
@pytest.mark.parametrize(
    ("field", "raw"),
    [
        ("response", "NaN"),
        ("response", '{"x": Infinity}'),
        ("response", '{"x": 1e400}'),
        ("prompt_tokens", "1e400"),
        ("prompt_tokens", "1e300"),
        ("completion_tokens", str(10**40)),
        ("prompt_tokens", "1.5"),
        ("prompt_tokens", '"3"'),
    ],
)
async def test_poisoned_entries_are_refused_at_store_time(h: Harness, field: str, raw: str) -> None:
    rest = {k: v for k, v in STORE.items() if k != field}
    r = await post(h, "/v1/cache/store", json_with(rest, field, raw))
    assert_refused(r, "/v1/cache/store")
    found = await h.client.post("/v1/cache/lookup", json=LOOKUP)
    assert found.status_code == 200
    assert found.json()["hit"] is False


async def poison(h: Harness, entry_id: str, **changes: Any) -> None:
    """Rewrite a stored entry as another writer (or an older version) might have left it.
    A `response` is written as version-1 records held answers: a dict, never checked."""
    await h.state["front"].settle()  # the entry is written to the store after its answer
    store = h.state["front"].cache.store
    entry = store.get(entry_id)
    assert entry is not None
    response = changes.pop("response", None)
    poisoned = dataclasses.replace(entry, **changes)
    if response is None:
        store.put(poisoned)
        return
    record = to_record(poisoned)
    del record["body"]
    record.update(v=1, response=response)
    store._cache.set("e:" + entry_id, record)


@pytest.mark.parametrize(
    "changes",
    [
        {"response": {"value": float("nan")}},
        {"response": {"value": [float("inf")]}},
        {"prompt_tokens": 10**400},
        {"completion_tokens": -1},
        {"prompt_tokens": 1e300},
        {"response": ["not", "an", "object"]},
    ],
)
async def test_an_unservable_entry_is_a_miss_and_is_dropped(
    h: Harness, changes: dict[str, Any]
) -> None:
    stored = await h.client.post("/v1/cache/store", json=STORE)
    assert stored.status_code == 201
    entry_id = stored.json()["entry_id"]
    await poison(h, entry_id, **changes)
    for _ in range(2):  # exact lookup, then the semantic one once the entry is gone
        r = await h.client.post("/v1/cache/lookup", json=LOOKUP)
        assert r.status_code == 200, r.text
        assert r.json()["hit"] is False
    assert h.state["front"].cache.store.get(entry_id) is None
    # the next store serves again
    assert (await h.client.post("/v1/cache/store", json=STORE)).status_code == 201
    assert (await h.client.post("/v1/cache/lookup", json=LOOKUP)).json()["hit"] is True


async def test_an_unservable_proxied_entry_is_a_miss(h: Harness) -> None:
    first = await h.chat("What is the capital of France?")
    assert first.headers["x-cache"] == "MISS"
    await h.state["front"].settle()
    (entry,) = list(h.state["front"].cache.store.iter_entries())
    await poison(h, entry.id, prompt_tokens=10**400)
    again = await h.chat("What is the capital of France?")
    assert again.status_code == 200, again.text
    assert again.headers["x-cache"] == "MISS"  # fetched afresh, and stored afresh
    assert (await h.chat("What is the capital of France?")).headers["x-cache"] == "HIT"


# 9. An unhandled exception: a 500 with an error body and the request id, logged once.
async def test_an_unhandled_error_has_a_request_id_and_an_error_body(
    h: Harness, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken(self: ProxyHandler, ctx: Any) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr(ProxyHandler, "handle", broken)
    with caplog.at_level(logging.ERROR):
        r = await h.chat("hello", headers={"X-Request-Id": "trace-500"})
        anthropic = await h.client.post("/v1/messages", json=MESSAGES)
    assert r.status_code == 500
    assert r.headers["x-request-id"] == "trace-500"
    assert r.json()["error"]["type"] == "server_error"
    assert "a bug" not in r.text  # no internals leak
    assert anthropic.status_code == 500
    assert anthropic.headers["x-request-id"]
    assert anthropic.json()["type"] == "error"
    logged = [rec for rec in caplog.records if rec.exc_info and "a bug" in str(rec.exc_info[1])]
    assert len(logged) == 2  # once per request
    assert getattr(logged[0], "request_id", None) == "trace-500"
