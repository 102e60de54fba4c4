"""What one request is and what it learned on its way: parsed once at the route into the
flavour's canonical view, the cache keys, the caller's directives, and the stage timings the
recorder reports."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from cache_service.cache.front import Found
from cache_service.cache.keys import RequestKeys, keys_of, project_of
from cache_service.cache.policy import CacheDirectives, DirectiveError, parse_directives
from cache_service.errors import BadRequest
from cache_service.flavors.base import CanonicalRequest, Flavor
from cache_service.settings import Settings


@dataclass(slots=True)
class RequestContext:
    flavor: Flavor
    body: dict[str, Any]
    request: CanonicalRequest | None
    """None for the cache-lookup API, whose requests are not any wire format's."""
    headers: dict[str, str]
    keys: RequestKeys
    directives: CacheDirectives
    threshold: float | None
    request_id: str
    project: str
    started: float = field(default_factory=time.perf_counter)
    found: Found = field(default_factory=Found)
    stages: dict[str, float] = field(default_factory=dict)
    upstream_status: int | None = None

    @property
    def stream(self) -> bool:
        return self.request is not None and self.request.stream


def parse_threshold(raw: Any, *, param: str, floor: float) -> float | None:
    """A per-request threshold may only be stricter than the operator's floor."""
    if raw is None or raw == "":
        return None
    try:
        value = float(raw)
    except (TypeError, ValueError) as e:
        raise BadRequest(f"{param} must be a number between 0 and 1", param=param) from e
    if not floor <= value <= 1:
        raise BadRequest(
            f"{param} must be between the operator's floor {floor} and 1, got {value}",
            param=param,
        )
    return value


def directives_of(headers: dict[str, str], settings: Settings) -> CacheDirectives:
    try:
        return parse_directives(
            headers.get("cache-control"),
            headers.get("x-cache-ttl"),
            default_ttl_s=settings.default_ttl_s,
            max_ttl_s=settings.max_ttl_s,
        )
    except DirectiveError as e:
        param = "Cache-Control" if "Cache-Control" in str(e) else "X-Cache-TTL"
        raise BadRequest(str(e), param=param) from e


def proxy_context(
    flavor: Flavor,
    body: dict[str, Any],
    headers: dict[str, str],
    request_id: str,
    settings: Settings,
    tenant: str,
) -> RequestContext:
    """A proxied request in `tenant`'s partition: its flavour's canonical view, keys,
    directives and threshold."""
    request = flavor.canonical(body)
    keys = keys_of(
        tenant=tenant,
        api=flavor.name,
        model=request.model,
        system=request.system,
        messages=request.messages,
        params=request.params,
        max_semantic_chars=settings.semantic_max_chars,
    )
    return RequestContext(
        flavor=flavor,
        body=body,
        request=request,
        headers=headers,
        keys=keys,
        directives=directives_of(headers, settings),
        threshold=parse_threshold(
            headers.get("x-cache-threshold"),
            param="X-Cache-Threshold",
            floor=settings.min_threshold,
        ),
        request_id=request_id,
        project=project_of(headers),
    )
