"""RFC 9211 `Cache-Status` beside `X-Cache`, derived in one place from the headers the
request path already sets, so every answer that says X-Cache (hits, misses, refreshes,
streams, errors) says Cache-Status too, in the standard's terms:

    X-Cache: HIT        llm-cache; hit; detail=exact | detail=semantic
    X-Cache: MISS       llm-cache; fwd=uri-miss[; fwd-status=S][; stored][; collapsed]
    X-Cache: REFRESH    llm-cache; fwd=request[; fwd-status=S][; stored]
    X-Cache: BYPASS     llm-cache; fwd=bypass[; fwd-status=S]

`fwd-status` is the upstream's status, present only when the upstream was called (its
`X-Upstream` says so): a quota refusal was never forwarded. `stored` is the answer entering
the cache (`X-Cache-Stored: true`), `collapsed` an answer shared with an identical request
in flight (single flight).
"""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

CACHE_NAME = "llm-cache"

_FWD = {"MISS": "uri-miss", "REFRESH": "request", "BYPASS": "bypass"}


def cache_status(headers: MutableHeaders, status: int) -> str | None:
    state = headers.get("x-cache")
    if state == "HIT":
        return f"{CACHE_NAME}; hit; detail={headers.get('x-cache-match', 'exact')}"
    fwd = _FWD.get(state or "")
    if fwd is None:
        return None
    parts = [CACHE_NAME, f"fwd={fwd}"]
    if "x-upstream" in headers:
        parts.append(f"fwd-status={status}")
    if headers.get("x-cache-stored") == "true":
        parts.append("stored")
    if headers.get("x-cache-coalesced") == "true":
        parts.append("collapsed")
    return "; ".join(parts)


class CacheStatusMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_status(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                value = cache_status(headers, message["status"])
                if value is not None and "cache-status" not in headers:
                    headers["cache-status"] = value
            await send(message)

        await self.app(scope, receive, send_with_status)
