"""Pure: what the caller's cache directives allow (read, write, for how long), and which
requests may be looked up at all. What an answer must be to be stored is each wire
format's own rule (`cache_service/flavors/`)."""

from __future__ import annotations

from dataclasses import dataclass

from cache_service.flavors.base import CanonicalRequest


@dataclass(frozen=True, slots=True)
class CacheDirectives:
    read: bool = True
    """no-cache, max-age=0 (or no-store) skip the lookup."""
    write: bool = True
    """no-store keeps the answer out of the cache."""
    ttl_s: float | None = None
    max_age_s: float | None = None
    """max-age / s-maxage: only an entry younger than this may answer."""

    def miss_state(self, looked_up: bool) -> str:
        """X-Cache for an answer that did not come from the cache: MISS when it was looked
        up and not found (or too old for max-age); REFRESH when the caller asked for a
        fresh answer that is then stored (no-cache, max-age=0: Kong's and Portkey's word);
        BYPASS when the cache stays out of it (no-store, or several choices asked for)."""
        if looked_up:
            return "MISS"
        return "REFRESH" if self.write and not self.read else "BYPASS"


class DirectiveError(ValueError):
    pass


def parse_directives(
    cache_control: str | None, ttl_header: str | None, *, default_ttl_s: float, max_ttl_s: float
) -> CacheDirectives:
    """Read Cache-Control (no-cache or max-age=0: refresh the entry; no-store: neither read
    nor write; max-age=N, s-maxage=N: serve only entries younger than N seconds, s-maxage
    winning as in a shared cache) and X-Cache-TTL (seconds, capped by the operator's
    maximum). Unknown directives are ignored, as HTTP caches do."""
    tokens: set[str] = set()
    ages: dict[str, float] = {}
    for raw in (cache_control or "").split(","):
        name, _, value = raw.strip().lower().partition("=")
        if not name:
            continue
        tokens.add(name)
        if name in ("max-age", "s-maxage"):
            try:
                age = float(value.strip().strip('"'))
            except ValueError as e:
                raise DirectiveError(f"Cache-Control {name} must be a number of seconds") from e
            if not age >= 0:
                raise DirectiveError(f"Cache-Control {name} must not be negative")
            ages[name] = age
    max_age = ages.get("s-maxage", ages.get("max-age"))
    no_store = "no-store" in tokens
    no_cache = "no-cache" in tokens or no_store or max_age == 0
    ttl = default_ttl_s
    if ttl_header is not None and ttl_header.strip():
        try:
            ttl = float(ttl_header)
        except ValueError as e:
            raise DirectiveError("X-Cache-TTL must be a number of seconds") from e
        if not ttl > 0:
            raise DirectiveError("X-Cache-TTL must be positive")
        ttl = min(ttl, max_ttl_s)
    return CacheDirectives(read=not no_cache, write=not no_store, ttl_s=ttl, max_age_s=max_age)


def lookup_allowed(request: CanonicalRequest) -> bool:
    """Several choices are a request for variety: answering them from one stored answer
    would defeat the purpose."""
    return request.choices == 1
