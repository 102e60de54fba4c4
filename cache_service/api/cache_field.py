"""LiteLLM's per-request cache controls in the body: `"cache": {"no-cache": true,
"no-store": true, "ttl": 600, "s-maxage": 600, "namespace": "team-a"}`.

Clients written for LiteLLM send this field; an upstream that does not know it may refuse
the request, and it says nothing to the model. So it is taken out of the body before
anything else reads it (it is never forwarded) and turned into the headers it stands for,
the one currency the rest of the request path reads: Cache-Control, X-Cache-TTL,
X-Cache-Namespace. A header the caller also sent wins over the body's value, except
Cache-Control, whose directives are merged (the stricter one applies).
"""

from __future__ import annotations

import math
from typing import Any

from cache_service.errors import BadRequest

FIELD = "cache"
_FLAGS = ("no-cache", "no-store")
_SECONDS = ("ttl", "s-maxage")
_KNOWN = (*_FLAGS, *_SECONDS, "namespace")


def take_cache_field(
    body: dict[str, Any], headers: dict[str, str]
) -> tuple[dict[str, Any], dict[str, str]]:
    """The body without its `cache` field and the headers with what it asked for. Lowercase
    header names in and out. A malformed field is a 400 naming the offending key."""
    if FIELD not in body:
        return body, headers
    controls = body[FIELD]
    body = {k: v for k, v in body.items() if k != FIELD}
    if not isinstance(controls, dict):
        raise BadRequest("'cache' must be an object", param=FIELD)
    unknown = sorted(set(controls) - set(_KNOWN))
    if unknown:
        raise BadRequest(
            f"unknown key in 'cache': {unknown[0]!r}; known: {', '.join(_KNOWN)}", param=FIELD
        )
    directives: list[str] = []
    implied: dict[str, str] = {}
    for flag in _FLAGS:
        value = controls.get(flag)
        if value is None:
            continue
        if not isinstance(value, bool):
            raise BadRequest(f"'cache.{flag}' must be true or false", param=f"{FIELD}.{flag}")
        if value:
            directives.append(flag)
    for name in _SECONDS:
        value = controls.get(name)
        if value is None:
            continue
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or value < 0
        ):
            raise BadRequest(
                f"'cache.{name}' must be a number of seconds >= 0", param=f"{FIELD}.{name}"
            )
        if name == "ttl":
            if value == 0:
                raise BadRequest("'cache.ttl' must be positive", param=f"{FIELD}.ttl")
            implied["x-cache-ttl"] = repr(float(value))
        else:
            directives.append(f"s-maxage={float(value)!r}")
    namespace = controls.get("namespace")
    if namespace is not None:
        if not isinstance(namespace, str) or not namespace.strip():
            raise BadRequest(
                "'cache.namespace' must be a non-empty string", param=f"{FIELD}.namespace"
            )
        implied["x-cache-namespace"] = namespace.strip()
    merged = {**implied, **headers}
    if directives:
        given = headers.get("cache-control", "").strip()
        merged["cache-control"] = ", ".join([given, *directives] if given else directives)
    return body, merged
