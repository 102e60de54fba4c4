"""The X-Cache family of response headers: what the cache did with a request, in one place.

Hits say how they matched (`X-Cache-Match`, `X-Cache-Similarity`, `X-Cache-Entry`, `Age`);
misses say where they went (`X-Upstream`, attempts, downgrades, the project's OpenAI-style
`x-ratelimit-*`) and how close the cache came (`X-Cache-Best-Similarity`,
`X-Cache-Rejected-By`). `X-Request-Id` is set by the middleware, on every answer.
"""

from __future__ import annotations

from cache_service.cache.front import Found
from cache_service.cache.semantic import Lookup
from cache_service.upstream.chain import CallInfo


def hit_headers(hit: Lookup, now: float) -> dict[str, str]:
    entry = hit.entry
    assert entry is not None
    return {
        "x-cache": "HIT",
        "x-cache-match": hit.match or "exact",
        "x-cache-similarity": f"{hit.similarity or 1.0:.4f}",
        "x-cache-entry": entry.id,
        "age": str(max(0, int(now - entry.created))),
    }


def call_headers(call: CallInfo) -> dict[str, str]:
    headers = {
        **call.ratelimit,
        "x-upstream": call.upstream,
        "x-upstream-attempts": str(call.attempts),
    }
    if call.downgraded_from:
        headers["x-model-downgraded"] = f"{call.downgraded_from} -> {call.model}"
    return headers


def lookup_headers(found: Found) -> dict[str, str]:
    searched = found.searched
    if searched is None or searched.best_rejected is None:
        return {}
    return {
        "x-cache-best-similarity": f"{searched.best_rejected:.4f}",
        "x-cache-rejected-by": searched.reason,
    }


COALESCED = {"x-cache-coalesced": "true"}
