"""OpenAI's Responses API through the sidecar with the official SDK's
`client.responses.create` (plain and streamed): real processes, real MiniLM."""

from __future__ import annotations

from typing import Any

import openai
import pytest

from tests.e2e.test_openai_sdk import Upstream, ask, base, client, upstream

pytestmark = pytest.mark.e2e
__all__ = ["base", "upstream"]  # the module-scoped sidecar and simulated upstream fixtures

MODEL = "gpt-4o-mini"


def respond(c: openai.OpenAI, text: str, **kw: Any) -> tuple[str, dict[str, str], Any]:
    raw = c.responses.with_raw_response.create(model=MODEL, input=text, **kw)
    response = raw.parse()
    return response.output_text, dict(raw.headers), response.usage


def test_miss_then_exact_and_paraphrase_hits(base: str, upstream: Upstream) -> None:
    c = client(base, **{"X-Cache-Namespace": "responses"})
    before = upstream.calls()
    answer, h1, usage = respond(c, "How do I reset my password?")
    assert h1["x-cache"] == "MISS"
    assert answer and usage is not None and usage.input_tokens > 0 and usage.output_tokens > 0

    again, h2, usage2 = respond(c, "How do I reset my password?")
    assert (h2["x-cache"], h2["x-cache-match"]) == ("HIT", "exact")
    assert again == answer and usage2 == usage

    paraphrase, h3, _ = respond(c, "How can I reset my password?")
    assert (h3["x-cache"], h3["x-cache-match"]) == ("HIT", "semantic"), h3
    assert paraphrase == answer
    assert upstream.calls() == before + 1


def test_streamed_miss_then_streamed_and_plain_hits(base: str) -> None:
    c = client(base, **{"X-Cache-Namespace": "responses-stream"})
    q = "Explain what a sliding window rate limiter does."

    def stream_text() -> tuple[str, str, Any]:
        raw = c.responses.with_raw_response.create(model=MODEL, input=q, stream=True)
        deltas: list[str] = []
        final = None
        for event in raw.parse():
            if event.type == "response.output_text.delta":
                deltas.append(event.delta)
            elif event.type == "response.completed":
                final = event.response
        assert final is not None
        assert final.output_text == "".join(deltas)
        return "".join(deltas), raw.headers["x-cache"], final.usage

    first, state1, usage1 = stream_text()
    second, state2, usage2 = stream_text()
    assert (state1, state2) == ("MISS", "HIT")
    assert first and second == first
    assert usage1 is not None and usage1.output_tokens > 0 and usage2 == usage1
    plain, h, _ = respond(c, q)
    assert h["x-cache"] == "HIT"
    assert plain == first


def test_instructions_belong_to_the_scope(base: str) -> None:
    c = client(base, **{"X-Cache-Namespace": "responses-scope"})
    respond(c, "Which plan includes priority support?")
    _, h, _ = respond(
        c, "Which plan includes priority support?", instructions="Talk like a pirate."
    )
    assert h["x-cache"] == "MISS"


def test_chat_entries_never_answer_responses(base: str) -> None:
    c = client(base, **{"X-Cache-Namespace": "responses-vs-chat"})
    ask(c, "What is the refund window for annual plans?")
    _, h, _ = respond(c, "What is the refund window for annual plans?")
    assert h["x-cache"] == "MISS"


def test_bad_request_is_openai_style(base: str) -> None:
    c = client(base).with_options(max_retries=0)
    with pytest.raises(openai.BadRequestError) as e:
        c.responses.create(model=MODEL, input=[])
    assert "input" in str(e.value)
