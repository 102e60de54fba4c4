"""Pure: what the caller's cache directives allow (read, write, for how long), and which
requests may be looked up at all. What an answer must be to be stored is each wire
format's own rule (`cache_service/flavors/`)."""

from __future__ import annotations

from dataclasses import dataclass

from cache_service.flavors.base import CanonicalRequest


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


def lookup_allowed(request: CanonicalRequest) -> bool:
    """Several choices are a request for variety: answering them from one stored answer
    would defeat the purpose."""
    return request.choices == 1
