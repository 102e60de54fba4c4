"""`POST /v1/messages`, Anthropic's Messages API: validation, the message and its named events."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from cache_service.simulator.answers import (
    answer_text,
    count_tokens,
    digest_of,
    last_user_text,
    prompt_tokens,
    truncate,
)
from cache_service.simulator.errors import BadRequest, bad_request
from cache_service.simulator.openai_chat import validate_messages
from cache_service.simulator.state import admit
from cache_service.simulator.stream import (
    DROP_AFTER_CONTENT_CHUNKS,
    event_stream,
    named_event,
    word_pieces,
)


def _stream_events(message: dict[str, Any], drop: bool) -> Iterator[bytes]:
    """The Messages API stream for a one-text-block message, in Anthropic's documented order.
    Written out here rather than shared with the cache's replay, so the simulator stays an
    independent check on it."""
    start = {
        **message,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        # Upstream reports the input up front and a token-so-far output count.
        "usage": {**message["usage"], "output_tokens": 1},
    }
    yield named_event({"type": "message_start", "message": start})
    yield named_event(
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
    )
    yield named_event({"type": "ping"})
    for n, piece in enumerate(word_pieces(message["content"][0]["text"])):
        if drop and n >= DROP_AFTER_CONTENT_CHUNKS:
            return
        delta = {"type": "text_delta", "text": piece}
        yield named_event({"type": "content_block_delta", "index": 0, "delta": delta})
    if drop:
        # Too short to drop mid-content: still end without message_delta or message_stop.
        return
    yield named_event({"type": "content_block_stop", "index": 0})
    yield named_event(
        {
            "type": "message_delta",
            "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
            "usage": {"output_tokens": message["usage"]["output_tokens"]},
        }
    )
    yield named_event({"type": "message_stop"})


async def anthropic_messages(request: Request) -> Response:
    admitted = await admit(request, "anthropic")
    if isinstance(admitted, Response):
        return admitted
    try:
        data = admitted.json_object()
        model = data.get("model")
        if not isinstance(model, str) or not model:
            raise BadRequest("model: Field required")
        max_tokens = data.get("max_tokens")
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
            raise BadRequest("max_tokens: Field required and must be a positive integer")
        messages = validate_messages(data.get("messages"), frozenset({"user", "assistant"}))
        system = data.get("system")
        if system is not None and not isinstance(system, str | list):
            raise BadRequest("system: must be a string or an array of text blocks")
        stream = data.get("stream")
        if stream is not None and not isinstance(stream, bool):
            raise BadRequest("stream: Input should be a valid boolean")
    except BadRequest as exc:
        return bad_request("anthropic", exc)

    config = await admitted.sim.pause()
    # Folding system into the message list makes this the same answer as the equivalent
    # chat completion.
    full = ([{"role": "system", "content": system}] if system else []) + messages
    text = answer_text(digest_of(model, full, config.seed), last_user_text(messages))
    text, truncated = truncate(text, max_tokens)
    message = {
        "id": f"msg_{uuid.uuid4().hex[:24]}",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": text}],
        "stop_reason": "max_tokens" if truncated else "end_turn",
        "stop_sequence": None,
        "usage": {
            "input_tokens": prompt_tokens(full, []),
            "output_tokens": count_tokens(text),
        },
    }
    headers = {"request-id": f"req_{uuid.uuid4().hex}"}
    if not stream:
        return admitted.deliver(JSONResponse(message, headers=headers))

    admitted.sim.streams += 1
    return admitted.deliver(event_stream(_stream_events(message, admitted.drop), config, headers))
