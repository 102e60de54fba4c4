"""The deterministic answer: a pure function of (model, messages, seed), shared by every endpoint,
plus the token counting, truncation and fake JSON values that go with it."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

_TOKEN_RE = re.compile(r"\w+|[^\w\s]")
_MESSAGE_OVERHEAD_TOKENS = 4
_MIN_ANSWER_TOKENS = 20
_MAX_ANSWER_TOKENS = 120

# Only \w characters, so each one is exactly one token and lengths stay predictable.
_VOCABULARY: tuple[str, ...] = (
    "the", "cache", "answer", "model", "request", "response", "latency", "token", "prompt",
    "context", "result", "value", "system", "data", "query", "simple", "detailed", "quick",
    "useful", "example", "first", "second", "next", "finally", "because", "therefore", "which",
    "should", "could", "would", "might", "often", "usually", "always", "never", "here", "there",
    "this", "that", "these", "with", "without", "about", "across", "between", "under", "over",
    "within", "process", "method", "approach", "option", "feature", "service", "client",
    "server", "network", "memory", "storage", "policy", "budget", "quality", "accuracy",
    "consider", "improve", "reduce", "measure", "return", "explain", "describe", "compare",
)  # fmt: skip


def count_tokens(text: str) -> int:
    """A tokenizer-free stand-in: words and punctuation marks, close enough to BPE counts."""
    return len(_TOKEN_RE.findall(text))


def digest_of(model: str, messages: Sequence[Any], seed: str, index: int = 0) -> str:
    payload = json.dumps(
        [model, messages, seed], sort_keys=True, ensure_ascii=False, separators=(",", ":")
    )
    # Choice 0 keeps the plain digest so an n=1 answer equals the first of an n>1 answer.
    if index:
        payload += f"#{index}"
    return hashlib.sha256(payload.encode()).hexdigest()


def hash_ints(digest: str) -> Iterator[int]:
    """An endless stream of ints from chained hashes; unlike `random`, stable by construction."""
    counter = 0
    while True:
        block = hashlib.sha256(f"{digest}:{counter}".encode()).digest()
        for offset in range(0, len(block), 4):
            yield int.from_bytes(block[offset : offset + 4], "big")
        counter += 1


def text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts: list[str] = []
        for part in content:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, dict) and isinstance(part.get("text"), str):
                parts.append(part["text"])
        return " ".join(parts)
    return ""


def last_user_text(messages: Sequence[Mapping[str, Any]]) -> str:
    for message in reversed(messages):
        if message.get("role") == "user":
            return text_of(message.get("content"))
    return ""


def answer_text(digest: str, last_user: str) -> str:
    snippet = " ".join(last_user.split())[:60].rstrip()
    prefix = f'Simulated answer {digest[:8]} to: "{snippet}".'
    ints = hash_ints(digest)
    target = _MIN_ANSWER_TOKENS + next(ints) % (_MAX_ANSWER_TOKENS - _MIN_ANSWER_TOKENS + 1)
    tokens = count_tokens(prefix)
    sentences = [prefix]
    while tokens < target:
        # Each word is one token and the full stop another; the cap keeps the total near target.
        length = max(1, min(4 + next(ints) % 9, target - tokens - 1))
        words = [_VOCABULARY[next(ints) % len(_VOCABULARY)] for _ in range(length)]
        words[0] = words[0].capitalize()
        sentences.append(" ".join(words) + ".")
        tokens += length + 1
    return " ".join(sentences)


def truncate(text: str, max_tokens: int) -> tuple[str, bool]:
    matches = list(_TOKEN_RE.finditer(text))
    if len(matches) <= max_tokens:
        return text, False
    # Cut at the end of the last kept token so the original spacing survives.
    return text[: matches[max_tokens - 1].end()], True


def fake_value(schema: Any, ints: Iterator[int], depth: int = 0) -> Any:
    if not isinstance(schema, dict):
        return f"sim_{next(ints) % 0xFFFFFF:06x}"
    enum = schema.get("enum")
    if isinstance(enum, list) and enum:
        return enum[next(ints) % len(enum)]
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "string")
    if kind == "integer":
        return next(ints) % 100
    if kind == "number":
        return (next(ints) % 10_000) / 100
    if kind == "boolean":
        return next(ints) % 2 == 0
    if kind == "array":
        return [] if depth >= 3 else [fake_value(schema.get("items"), ints, depth + 1)]
    if kind == "object" or "properties" in schema:
        return {} if depth >= 3 else fake_object(schema, ints, depth + 1)
    return f"sim_{next(ints) % 0xFFFFFF:06x}"


def fake_object(schema: Mapping[str, Any], ints: Iterator[int], depth: int = 0) -> dict[str, Any]:
    properties = schema.get("properties")
    if not isinstance(properties, dict):
        return {}
    return {name: fake_value(sub, ints, depth) for name, sub in sorted(properties.items())}


def fake_arguments(parameters: Any, digest: str, name: str) -> str:
    """A tool call's JSON arguments: a fake object for its parameter schema, compact."""
    arguments = fake_object(parameters or {}, hash_ints(f"{digest}:{name}"))
    return json.dumps(arguments, separators=(",", ":"))


def prompt_tokens(messages: Sequence[Mapping[str, Any]], tools: Sequence[Any]) -> int:
    total = 0
    for message in messages:
        total += _MESSAGE_OVERHEAD_TOKENS + count_tokens(text_of(message.get("content")))
        if message.get("tool_calls"):
            total += count_tokens(json.dumps(message["tool_calls"]))
    if tools:
        total += count_tokens(json.dumps(tools))
    return total


def fingerprint(seed: str) -> str:
    return "fp_" + hashlib.sha256(f"sim:{seed}".encode()).hexdigest()[:10]
