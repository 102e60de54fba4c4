"""Pure: what may be looked up, what may be stored, and for how long."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

UNSTORABLE_FINISH = frozenset({"length", "content_filter"})


@dataclass(frozen=True, slots=True)
class CacheDirectives:
    read: bool = True
    """no-cache (or no-store) skips the lookup."""
    write: bool = True
    """no-store keeps the answer out of the cache."""
    ttl_s: float | None = None


class DirectiveError(ValueError):
    pass


def parse_directives(
    cache_control: str | None, ttl_header: str | None, *, default_ttl_s: float, max_ttl_s: float
) -> CacheDirectives:
    """Read Cache-Control (no-cache: refresh the entry; no-store: neither read nor write)
    and X-Cache-TTL (seconds, capped by the operator's maximum)."""
    tokens = {t.strip().lower() for t in (cache_control or "").split(",") if t.strip()}
    no_store = "no-store" in tokens
    no_cache = "no-cache" in tokens or no_store
    ttl = default_ttl_s
    if ttl_header is not None and ttl_header.strip():
        try:
            ttl = float(ttl_header)
        except ValueError as e:
            raise DirectiveError("X-Cache-TTL must be a number of seconds") from e
        if not ttl > 0:
            raise DirectiveError("X-Cache-TTL must be positive")
        ttl = min(ttl, max_ttl_s)
    return CacheDirectives(read=not no_cache, write=not no_store, ttl_s=ttl)


def lookup_allowed(body: dict[str, Any]) -> bool:
    """Several choices are a request for variety: answering them from one stored answer
    would defeat the purpose."""
    n = body.get("n")
    return n is None or n == 1


def store_refusal(status: int, response: Any, *, cache_tool_calls: bool) -> str | None:
    """Why an upstream answer must not be stored, or None when it may be."""
    if not 200 <= status < 300:
        return f"status {status}"
    if not isinstance(response, dict):
        return "body is not a JSON object"
    if "error" in response:
        return "error body"
    choices = response.get("choices")
    if not isinstance(choices, list) or len(choices) != 1:
        return "not exactly one choice"
    choice = choices[0]
    if not isinstance(choice, dict) or not isinstance(choice.get("message"), dict):
        return "choice without a message"
    finish = choice.get("finish_reason")
    if finish in UNSTORABLE_FINISH:
        return f"finish_reason {finish}"
    if finish is None:
        return "no finish_reason"
    message = choice["message"]
    if (message.get("tool_calls") or message.get("function_call")) and not cache_tool_calls:
        return "tool calls"
    if not message.get("content") and not message.get("tool_calls"):
        return "empty answer"
    return None


def anthropic_store_refusal(status: int, response: Any, *, cache_tool_calls: bool) -> str | None:
    if not 200 <= status < 300:
        return f"status {status}"
    if not isinstance(response, dict) or response.get("type") != "message":
        return "not a message"
    stop = response.get("stop_reason")
    # Only a finished turn may be replayed; pause_turn and context overflow are unfinished.
    if stop in ("max_tokens", "refusal", "pause_turn", "model_context_window_exceeded") or (
        stop is None
    ):
        return f"stop_reason {stop}"
    content = response.get("content")
    if not isinstance(content, list) or not content:
        return "empty answer"
    uses_tools = any(isinstance(c, dict) and c.get("type") == "tool_use" for c in content)
    if uses_tools and not cache_tool_calls:
        return "tool calls"
    return None
