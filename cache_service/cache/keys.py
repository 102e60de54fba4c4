"""Pure: from a chat request to the keys that decide what may match what.

The scope holds everything that changes the answer except the last user turn: tenant, model,
system prompt, tools, response format, sampling parameters and the earlier turns. Two
requests can only ever share an answer inside one scope; inside it, the last user turn is
compared exactly (exact key) or by meaning (embedding).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

# Request fields that change what the model says. Anything not listed (stream, user,
# metadata, store, stream_options, service_tier) does not change the answer's content.
ANSWER_PARAMS: tuple[str, ...] = (
    "temperature",
    "top_p",
    "presence_penalty",
    "frequency_penalty",
    "seed",
    "stop",
    "max_tokens",
    "max_completion_tokens",
    "logit_bias",
    "logprobs",
    "top_logprobs",
    "response_format",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "functions",
    "function_call",
    "reasoning_effort",
    "verbosity",
    "modalities",
    "audio",
    "prediction",
    "web_search_options",
    "top_k",  # Anthropic / open models
    "thinking",
    "stop_sequences",
    "min_p",
    "repetition_penalty",
)

SYSTEM_ROLES = frozenset({"system", "developer"})


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _digest(value: Any) -> str:
    return hashlib.sha256(_canonical(value).encode()).hexdigest()


def project_of(headers: dict[str, str]) -> str:
    """The quota project: X-Project-Id, else "default"."""
    return headers.get("x-project-id", "").strip() or "default"


def content_text(content: Any) -> tuple[str, bool]:
    """The text of a message's content and whether it was text only.

    Content may be a string or a list of parts; a non-text part (image, audio, file) makes
    the message unsuitable for semantic matching, since the embedding would not see it.
    """
    if content is None:
        return "", True
    if isinstance(content, str):
        return content, True
    if isinstance(content, list):
        texts: list[str] = []
        text_only = True
        for part in content:
            if isinstance(part, dict) and part.get("type") in ("text", "input_text"):
                texts.append(str(part.get("text", "")))
            else:
                text_only = False
        return "\n".join(texts), text_only
    return _canonical(content), False


@dataclass(frozen=True, slots=True)
class RequestKeys:
    tenant: str
    model: str
    scope: str
    """Hash of everything but the last user turn."""
    exact_key: str
    """Hash of scope plus the last user turn, byte for byte."""
    prompt: str
    """The last user turn's text: what is embedded and compared."""
    semantic_ok: bool
    """False when only an exact match is safe (no final user turn, non-text parts)."""


def build_keys(
    body: dict[str, Any],
    tenant: str,
    *,
    system: Any = None,
    api: str = "openai",
    max_semantic_chars: int | None = None,
) -> RequestKeys:
    """Keys of a chat-shaped body (`model`, `messages` and answer parameters at the top);
    `system` carries a top-level system prompt (Anthropic's)."""
    params = {k: body[k] for k in ANSWER_PARAMS if k in body and body[k] is not None}
    return keys_of(
        tenant=tenant,
        api=api,
        model=str(body["model"]),
        system=system,
        messages=body["messages"],
        params=params,
        max_semantic_chars=max_semantic_chars,
    )


def keys_of(
    *,
    tenant: str,
    api: str,
    model: str,
    system: Any,
    messages: list[dict[str, Any]],
    params: dict[str, Any],
    max_semantic_chars: int | None = None,
) -> RequestKeys:
    """Derive scope, exact key and prompt text from a request's canonical parts.

    `api` keeps the wire formats' entries apart, since their stored bodies differ.
    """
    last_user = len(messages) - 1
    while last_user >= 0 and messages[last_user].get("role") != "user":
        last_user -= 1
    # Only a conversation that ends with a user turn is a question waiting for an answer
    # we may have seen; one ending in a tool result or assistant prefill is matched exactly.
    ends_with_user = last_user == len(messages) - 1

    systems = [m for m in messages if m.get("role") in SYSTEM_ROLES]
    before = messages[:last_user] if ends_with_user else messages
    earlier = [m for m in before if m.get("role") not in SYSTEM_ROLES]

    scope_material = {
        "api": api,
        "tenant": tenant,
        "model": model,
        "system": [system, systems],
        "params": params,
        "earlier": earlier,
    }
    scope = _digest(scope_material)

    if ends_with_user:
        last = messages[last_user]
        prompt, text_only = content_text(last.get("content"))
        exact_material: Any = [scope, last.get("content"), last.get("name")]
    else:
        prompt, text_only = "", False
        exact_material = [scope, None]
    semantic_ok = ends_with_user and text_only and bool(prompt.strip())
    if max_semantic_chars is not None and len(prompt) > max_semantic_chars:
        semantic_ok = False
    return RequestKeys(
        tenant=tenant,
        model=model,
        scope=scope,
        exact_key=_digest(exact_material),
        prompt=prompt,
        semantic_ok=semantic_ok,
    )
