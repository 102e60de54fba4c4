"""The Server-Sent Events codec every streaming wire format shares: an incremental parser
for upstream streams and an encoder for the events the sidecar writes. What the events mean
(assembly, replay) belongs to each format's module in `cache_service/flavors/`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

DONE = "[DONE]"


class SSEParser:
    """Incremental: feed raw bytes as they arrive, get each complete event's data."""

    def __init__(self) -> None:
        self._buffer = b""
        self._data: list[str] = []
        self._event = ""

    def feed(self, chunk: bytes) -> Iterator[str]:
        for _event, data in self.feed_events(chunk):
            yield data

    def feed_events(self, chunk: bytes) -> Iterator[tuple[str, str]]:
        """Like `feed`, with each event's name: Anthropic's stream names every event, and a
        relay must write the name back (the SDK dispatches on it). Unnamed events are
        "message", as the SSE spec says."""
        self._buffer += chunk
        while True:
            cut = self._buffer.find(b"\n")
            if cut < 0:
                return
            line = self._buffer[:cut].rstrip(b"\r").decode("utf-8", errors="replace")
            self._buffer = self._buffer[cut + 1 :]
            if line == "":
                if self._data:
                    yield self._event or "message", "\n".join(self._data)
                    self._data = []
                # The name belongs to one event only, even one without data (never dispatched).
                self._event = ""
            elif line.startswith("data:"):
                self._data.append(line[5:].lstrip(" "))
            elif line.startswith("event:"):
                self._event = line[6:].lstrip(" ")
            # other fields (id:, retry:, comments) carry nothing we relay or store


def encode(data: str | dict[str, Any], *, event: str | None = None) -> bytes:
    """One event; `event` adds the `event:` line Anthropic streams carry (OpenAI's have none)."""
    text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    head = f"event: {event}\n" if event is not None else ""
    return f"{head}data: {text}\n\n".encode()


def pieces(text: str, size: int = 24) -> list[str]:
    """Split at spaces into pieces of about `size` characters, so a replayed hit streams
    like a real answer (several deltas) but costs few events."""
    out: list[str] = []
    start = 0
    while start < len(text):
        end = min(len(text), start + size)
        if end < len(text):
            space = text.rfind(" ", start + 1, end)
            end = space if space > start else end
        out.append(text[start:end])
        start = end
    return out
