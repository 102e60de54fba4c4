"""Server-sent events for chat completions: parse an upstream stream, assemble the answer
it carried (to store it), and replay a stored answer as a stream (to serve a hit)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

DONE = "[DONE]"


class SSEParser:
    """Incremental: feed raw bytes as they arrive, get each complete event's data."""

    def __init__(self) -> None:
        self._buffer = b""
        self._data: list[str] = []

    def feed(self, chunk: bytes) -> Iterator[str]:
        self._buffer += chunk
        while True:
            cut = self._buffer.find(b"\n")
            if cut < 0:
                return
            line = self._buffer[:cut].rstrip(b"\r").decode("utf-8", errors="replace")
            self._buffer = self._buffer[cut + 1 :]
            if line == "":
                if self._data:
                    yield "\n".join(self._data)
                    self._data = []
            elif line.startswith("data:"):
                self._data.append(line[5:].lstrip(" "))
            # other fields (event:, id:, retry:, comments) carry nothing we relay or store


def encode(data: str | dict[str, Any]) -> bytes:
    text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return f"data: {text}\n\n".encode()


class ChatStreamAssembler:
    """Rebuilds the chat.completion a stream delivered, choice 0 only (n > 1 is never
    stored). `complete` is true only after a finish_reason and [DONE] both arrived."""

    def __init__(self) -> None:
        self.meta: dict[str, Any] = {}
        self.content: list[str] = []
        self.role = "assistant"
        self.tool_calls: dict[int, dict[str, Any]] = {}
        self.finish_reason: str | None = None
        self.usage: dict[str, Any] | None = None
        self.done = False
        self.malformed = False

    def add(self, data: str) -> dict[str, Any] | None:
        """Take one event's data; return the parsed chunk (None for [DONE] or garbage)."""
        if data.strip() == DONE:
            self.done = True
            return None
        try:
            chunk = json.loads(data)
        except json.JSONDecodeError:
            self.malformed = True
            return None
        if not isinstance(chunk, dict):
            self.malformed = True
            return None
        if "error" in chunk:
            self.malformed = True
            return chunk
        for key in ("id", "created", "model", "system_fingerprint"):
            if key in chunk and key not in self.meta:
                self.meta[key] = chunk[key]
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        for choice in chunk.get("choices") or []:
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            if delta.get("role"):
                self.role = delta["role"]
            if delta.get("content"):
                self.content.append(delta["content"])
            for call in delta.get("tool_calls") or []:
                slot = self.tool_calls.setdefault(
                    call.get("index", 0),
                    {"id": None, "type": "function", "function": {"name": "", "arguments": ""}},
                )
                if call.get("id"):
                    slot["id"] = call["id"]
                fn = call.get("function") or {}
                slot["function"]["name"] += fn.get("name") or ""
                slot["function"]["arguments"] += fn.get("arguments") or ""
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
        return chunk

    @property
    def complete(self) -> bool:
        return self.done and self.finish_reason is not None and not self.malformed

    def completion(self) -> dict[str, Any]:
        message: dict[str, Any] = {"role": self.role, "content": "".join(self.content) or None}
        if self.tool_calls:
            message["tool_calls"] = [self.tool_calls[i] for i in sorted(self.tool_calls)]
        body: dict[str, Any] = {
            "id": self.meta.get("id", ""),
            "object": "chat.completion",
            "created": self.meta.get("created", 0),
            "model": self.meta.get("model", ""),
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "finish_reason": self.finish_reason,
                    "logprobs": None,
                }
            ],
        }
        if "system_fingerprint" in self.meta:
            body["system_fingerprint"] = self.meta["system_fingerprint"]
        if self.usage is not None:
            body["usage"] = self.usage
        return body


def _pieces(text: str, size: int = 24) -> list[str]:
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


def replay(completion: dict[str, Any], *, include_usage: bool) -> Iterator[bytes]:
    """A stored chat.completion as the SSE chunks the openai SDK's stream iterator expects."""
    base = {
        "id": completion.get("id", ""),
        "object": "chat.completion.chunk",
        "created": completion.get("created", 0),
        "model": completion.get("model", ""),
    }
    if "system_fingerprint" in completion:
        base["system_fingerprint"] = completion["system_fingerprint"]
    choice = completion["choices"][0]
    message = choice.get("message") or {}

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        c = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return encode({**base, "choices": [c]})

    yield chunk({"role": message.get("role", "assistant"), "content": ""})
    for piece in _pieces(message.get("content") or ""):
        yield chunk({"content": piece})
    for i, call in enumerate(message.get("tool_calls") or []):
        yield chunk({"tool_calls": [{"index": i, **call}]})
    yield chunk({}, choice.get("finish_reason") or "stop")
    if include_usage and completion.get("usage"):
        yield encode({**base, "choices": [], "usage": completion["usage"]})
    yield encode(DONE)


class Fanout:
    """One upstream stream, many readers: each reader gets every event from the start, at
    its own pace, including events pushed before it joined."""

    def __init__(self) -> None:
        self._events: list[tuple[bytes, bool]] = []
        self.done = False
        self._changed = asyncio.Event()
        self.started: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        """True once the upstream stream is open; False if it never opened."""

    def start(self) -> None:
        self.started.set_result(True)

    def abandon(self) -> None:
        """The upstream call failed before streaming: followers make their own calls."""
        if not self.started.done():
            self.started.set_result(False)
        self.finish()

    def push(self, data: bytes, *, usage_only: bool = False) -> None:
        self._events.append((data, usage_only))
        self._wake()

    def finish(self) -> None:
        self.done = True
        self._wake()

    def _wake(self) -> None:
        # A fresh Event per change: readers waiting on the old one wake, later waits block.
        self._changed.set()
        self._changed = asyncio.Event()

    async def follow(self, include_usage: bool) -> AsyncIterator[bytes]:
        """The events; the usage-only chunk only for readers that asked for usage."""
        i = 0
        while True:
            changed = self._changed
            while i < len(self._events):
                data, usage_only = self._events[i]
                i += 1
                if include_usage or not usage_only:
                    yield data
            if self.done:
                return
            await changed.wait()
