"""What one wire format (OpenAI chat, Anthropic messages, OpenAI Responses...) must tell the
rest of the sidecar, and the canonical request every layer below the route works on.

A flavour is chosen by the route that received the request, never guessed from a URL: the
proxy, the cache keys, the quota estimate and the recorder read the canonical view; only the
flavour's own module knows where its usage lives, what may be stored, how its stream is
assembled and replayed, and what its errors look like. A new format is one module here, a
schema in `api/schemas.py` and a line in `flavors/__init__.py`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from pydantic import BaseModel

from cache_service.pricing import Usage
from cache_service.protocols import AuthScheme


@dataclass(frozen=True, slots=True)
class CanonicalRequest:
    """One request in the terms every wire format shares."""

    model: str
    system: Any
    """A top-level system prompt (Anthropic's `system`, Responses' `instructions`); chat
    keeps its system turns among the messages."""
    messages: list[dict[str, Any]]
    """Every turn in order, as chat-shaped `{role, content}` objects; the last user turn is
    the prompt, the earlier ones belong to the scope."""
    params: dict[str, Any]
    """Fields that change what the model answers (sampling, tools, formats, limits)."""
    completion_cap: int | None
    """The most completion tokens the request allows, if it says."""
    stream: bool
    choices: int = 1
    """How many alternative answers were asked for (`n`); more than one is never cached."""
    stream_usage: bool = False
    """A streaming caller asked for the usage chunk (OpenAI chat's `include_usage`)."""

    def count_text(self) -> tuple[str, int]:
        """The text a tokenizer should count for the quota estimate, and the framing tokens
        the format adds (~4 per turn): message texts plus system and tools as JSON."""
        parts: list[str] = []
        for m in self.messages:
            content = m.get("content")
            parts.append(content if isinstance(content, str) else json.dumps(content))
        for value in (self.system, self.params.get("tools")):
            if value:
                parts.append(value if isinstance(value, str) else json.dumps(value))
        return "\n".join(parts), 4 * len(self.messages)


class StreamAssembler(Protocol):
    """Rebuilds the complete answer a stream delivered, event by event, so it can be stored
    and accounted. `complete` is true only when the stream ended as a finished answer."""

    def add(self, data: str) -> dict[str, Any] | None:
        """Take one event's data; return it parsed (None for a sentinel or garbage)."""
        ...

    @property
    def complete(self) -> bool: ...

    def result(self) -> dict[str, Any]:
        """The answer as the non-streaming API would have returned it."""
        ...


class Flavor(Protocol):
    name: str
    """Tag kept in the scope: entries of one format are never served to another."""
    route: str
    """The sidecar's path for it, e.g. `/v1/chat/completions`."""
    upstream_path: str
    """The path below the upstream's base URL."""
    auth: AuthScheme
    schema: type[BaseModel]
    """The minimum the sidecar must understand of a request (validated at the route)."""

    def canonical(self, body: dict[str, Any]) -> CanonicalRequest: ...

    def usage(self, body: Any) -> Usage:
        """The tokens an answer reports, cached prompt tokens included where the format
        says; all zero when it reports none."""
        ...

    def valid(self, body: Any) -> bool:
        """A successful answer's parsed body is an answer of this format (a JSON object of
        its kind), not a proxy's page or `{"nope": 1}`: else it is a 502, never stored."""
        ...

    def refusal(self, status: int, body: Any, *, cache_tool_calls: bool) -> str | None:
        """Why an upstream answer must not be stored, or None when it may be."""
        ...

    def stream_body(self, body: dict[str, Any]) -> dict[str, Any]:
        """The body sent upstream for a streamed miss (e.g. asking for usage to account)."""
        ...

    def assembler(self) -> StreamAssembler: ...

    def usage_only(self, event: dict[str, Any] | None) -> bool:
        """An event that only carries usage the sidecar asked for on the caller's behalf:
        followers that did not ask for it skip it."""
        ...

    def replay(self, body: dict[str, Any], include_usage: bool) -> Iterator[bytes]:
        """A stored answer as the SSE events the format's SDK expects."""
        ...

    def error_body(
        self, message: str, type_: str, *, param: str | None = None, code: str | None = None
    ) -> dict[str, Any]: ...

    def error_event(
        self, message: str, type_: str, *, param: str | None = None, code: str | None = None
    ) -> bytes:
        """An error inside a stream whose headers are already sent."""
        ...

    def answer_text(self, body: dict[str, Any]) -> str:
        """The answer's text, for audits comparing a stored answer with a fresh one."""
        ...


def answer_params(body: dict[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
    """The fields among `names` the body sets (a null is as good as absent)."""
    return {k: body[k] for k in names if body.get(k) is not None}


def int_or_zero(value: Any) -> int:
    # bool is an int to Python but never a token count.
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def usage_object(body: Any) -> dict[str, Any]:
    """An answer's `usage` object; empty when it has none (or something else there)."""
    usage = body.get("usage") if isinstance(body, dict) else None
    return usage if isinstance(usage, dict) else {}


def openai_usage(body: Any, prompt_key: str, completion_key: str, details_key: str) -> Usage:
    """OpenAI's shape: the prompt count includes the tokens read from and written to the
    prompt cache, which a details object (`prompt_tokens_details` in chat,
    `input_tokens_details` in Responses) breaks out."""
    usage = usage_object(body)
    details = usage.get(details_key)
    if not isinstance(details, dict):
        details = {}
    return Usage(
        int_or_zero(usage.get(prompt_key)),
        int_or_zero(usage.get(completion_key)),
        int_or_zero(details.get("cached_tokens")),
        int_or_zero(details.get("cache_write_tokens")),
    )


def positive_int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def typed_event(data: str) -> dict[str, Any] | None:
    """An event's data as a JSON object carrying a string `type` (Anthropic's and the
    Responses API's streams), or None for anything else."""
    try:
        event = json.loads(data)
    except json.JSONDecodeError:
        return None
    if not isinstance(event, dict) or not isinstance(event.get("type"), str):
        return None
    return event
