"""Server-Sent Events as the simulator writes them: framing, chunking of text, pacing."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any

from fastapi.responses import StreamingResponse

from cache_service.simulator.state import SimConfig

WORDS_PER_STREAM_CHUNK = 3
ARGUMENT_CHARS_PER_STREAM_CHUNK = 12
DROP_AFTER_CONTENT_CHUNKS = 2
"""A `drop` fault ends a stream after this many content (or argument) chunks."""


def sse(payload: Any) -> bytes:
    return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n".encode()


def named_event(payload: Mapping[str, Any]) -> bytes:
    """An `event: <type>` line, then the data line whose JSON carries the same type."""
    return f"event: {payload['type']}\n".encode() + sse(payload)


def word_pieces(text: str) -> list[str]:
    # Leading whitespace stays attached to its word, so the pieces concatenate back exactly.
    words = re.findall(r"\s*\S+\s*$|\s*\S+", text)
    step = WORDS_PER_STREAM_CHUNK
    return ["".join(words[i : i + step]) for i in range(0, len(words), step)]


def argument_pieces(arguments: str) -> list[str]:
    """A tool call's JSON arguments in fixed-size slices, as upstream streams them."""
    step = ARGUMENT_CHARS_PER_STREAM_CHUNK
    return [arguments[i : i + step] for i in range(0, len(arguments), step)]


async def paced(events: Iterator[bytes], delay_s: float) -> AsyncIterator[bytes]:
    first = True
    for event in events:
        if not first and delay_s > 0:
            await asyncio.sleep(delay_s)
        first = False
        yield event


def event_stream(
    events: Iterator[bytes], config: SimConfig, headers: Mapping[str, str]
) -> StreamingResponse:
    return StreamingResponse(
        paced(events, config.stream_chunk_delay_ms / 1000),
        media_type="text/event-stream",
        headers={**headers, "cache-control": "no-cache"},
    )
