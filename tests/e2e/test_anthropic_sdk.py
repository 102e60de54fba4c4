"""The official anthropic SDK against the running sidecar (/v1/messages), real processes."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import anthropic
import pytest

from tests.e2e.test_openai_sdk import Upstream, base, upstream

pytestmark = pytest.mark.e2e
__all__ = ["base", "upstream"]  # the module-scoped sidecar and simulated upstream fixtures

MODEL = "claude-haiku-4-5"


@contextmanager
def client(base: str, namespace: str, **options: Any) -> Iterator[anthropic.Anthropic]:
    # Closed after each test: a client left to the garbage collector leaves its pooled
    # sockets open, and their ResourceWarning fails whichever test runs at that moment.
    with anthropic.Anthropic(
        base_url=base,
        api_key="sk-ant-test",
        default_headers={"X-Cache-Namespace": namespace},
        **options,
    ) as c:
        yield c


def ask(c: anthropic.Anthropic, content: str, **kw: Any) -> tuple[str, dict[str, str]]:
    raw = c.messages.with_raw_response.create(
        model=MODEL, max_tokens=200, messages=[{"role": "user", "content": content}], **kw
    )
    message = raw.parse()
    text = "".join(block.text for block in message.content if block.type == "text")
    return text, dict(raw.headers)


def test_message_then_paraphrase_is_a_hit(base: str, upstream: Upstream) -> None:
    with client(base, "anthropic-plain") as c:
        message_then_paraphrase(c, upstream)


def message_then_paraphrase(c: anthropic.Anthropic, upstream: Upstream) -> None:
    before = upstream.calls()
    first, h1 = ask(c, "How do I reset my password?")
    assert h1["x-cache"] == "MISS"
    assert first
    again, h2 = ask(c, "How can I reset my password?")
    assert h2["x-cache"] == "HIT"
    assert again == first
    assert upstream.calls() == before + 1


def test_stream_miss_then_stream_hit_with_named_events(base: str) -> None:
    with client(base, "anthropic-stream") as c:
        stream_miss_then_hit(c)


def stream_miss_then_hit(c: anthropic.Anthropic) -> None:
    q = "Explain what a token bucket rate limiter does."

    def stream() -> tuple[str, str, int]:
        with c.messages.with_streaming_response.create(
            model=MODEL, max_tokens=200, messages=[{"role": "user", "content": q}], stream=True
        ) as raw:
            state = raw.headers["x-cache"]
        with c.messages.stream(
            model=MODEL, max_tokens=200, messages=[{"role": "user", "content": q}]
        ) as s:
            text = "".join(s.text_stream)
            final = s.get_final_message()
        assert final.stop_reason == "end_turn"
        return text, state, final.usage.output_tokens

    first, state1, used1 = stream()
    second, state2, used2 = stream()
    assert (state1, state2) == ("MISS", "HIT")
    assert first and second == first
    assert used1 == used2 > 0
    plain, h = ask(c, q)
    assert h["x-cache"] == "HIT"
    assert plain == first


def test_errors_have_the_anthropic_shape(base: str) -> None:
    with (
        client(base, "anthropic-errors", max_retries=0) as c,
        pytest.raises(anthropic.BadRequestError) as e,
    ):
        c.messages.create(model=MODEL, max_tokens=-5, messages=[{"role": "user", "content": "x"}])
    assert e.value.status_code == 400
    body = e.value.body
    assert isinstance(body, dict)
    assert body["type"] == "error"
    assert body["error"]["type"] == "invalid_request_error"
    assert "max_tokens" in body["error"]["message"]
