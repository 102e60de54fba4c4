"""The real upstream: an OpenAI-compatible API over httpx. (`aiohttp_upstream.py` extends it
and sends the plain calls, a miss's, through aiohttp: less of the event loop per call.)

Transport failures become our own errors here (connection → 502, timeout → 504), so the
request path never sees an httpx exception and an upstream problem is never reported as a bug
of the sidecar. A connection that could not be made at all (refused, unknown host) is marked
not retryable: the same upstream will refuse again, the next one may not.

Every body handed on is decoded: httpx decodes `.content`, and streams are read with
`aiter_bytes` (not `aiter_raw`), because the content-encoding header is never returned to
the caller and the SSE parser needs plain text.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping
from typing import Any

import httpx

from cache_service.errors import BadRequest, UpstreamTimeout, UpstreamUnavailable
from cache_service.protocols import AuthScheme, UpstreamResponse, UpstreamStream

# Caller headers worth passing on. Everything else (host, content-length, our X-Cache-*,
# hop-by-hop headers) is either recomputed by httpx or meaningless upstream.
FORWARDED_HEADERS = (
    "authorization",
    "x-api-key",
    "openai-organization",
    "openai-project",
    "openai-beta",
    "anthropic-version",
    "anthropic-beta",
    "user-agent",
)

# Upstream answer headers worth returning to the caller.
RETURNED_HEADERS = (
    "retry-after",
    "retry-after-ms",
    "openai-processing-ms",
    "openai-version",
    "x-request-id",
    "openai-organization",
    "x-ratelimit-limit-requests",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-reset-requests",
    "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-tokens",
)


def pick_returned_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """Of an answer's headers (case-insensitive, as both clients give them), those returned."""
    return {k: headers[k] for k in RETURNED_HEADERS if k in headers}


def timed_out(e: Exception) -> UpstreamTimeout:
    """Our error for a client's timeout before any answer came (either client's)."""
    return UpstreamTimeout(f"upstream did not answer in time ({type(e).__name__})")


def unreachable(e: Exception, *, retryable: bool) -> UpstreamUnavailable:
    """Our error for a call that failed before any answer came (either client's). Not
    retryable when no connection could be made at all (refused, unknown host, a certificate
    refused): the same upstream will refuse again, the next one may not."""
    error = UpstreamUnavailable(f"upstream unreachable: {type(e).__name__}: {e}")
    error.retryable = retryable
    return error


def transport_error(e: httpx.HTTPError) -> UpstreamTimeout | UpstreamUnavailable:
    """Our error for an httpx failure before any answer came."""
    if isinstance(e, httpx.TimeoutException):
        return timed_out(e)
    # A timeout is caught above, so a ConnectError is a refusal or a failed name lookup.
    return unreachable(e, retryable=not isinstance(e, httpx.ConnectError))


class HttpUpstream:
    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        timeout_s: float = 60.0,
        connect_timeout_s: float = 5.0,
        transport: httpx.AsyncBaseTransport | None = None,
        max_connections: int = 64,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._api_key = api_key
        # Kept for a subclass that opens its own connections (aiohttp_upstream.py).
        self.timeout_s, self.connect_timeout_s = timeout_s, connect_timeout_s
        self.max_connections = max_connections
        # httpcore's pool rescans every connection (and, per idle one, all of them again) and
        # every queued request on each request and response: cheap at the few connections of
        # a normal load, quadratic under a backlog (found by the soak: past a few hundred
        # queued calls the scan alone kept the event loop busy, so the backlog never
        # drained). So the pool stays modest, keeps what it opens, and plain calls queue on
        # a semaphore in front of it, in O(1), instead of inside it. Streams hold their
        # connection while the caller reads and are bounded by the pool itself.
        self._client = httpx.AsyncClient(
            base_url=self.base_url + "/",
            timeout=httpx.Timeout(timeout_s, connect=connect_timeout_s),
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
            transport=transport,
        )
        self._calls = asyncio.Semaphore(max_connections // 2)

    def forwarded_headers(self, headers: dict[str, str], auth: AuthScheme) -> dict[str, str]:
        """What goes upstream of a caller's headers, with the operator's key if set."""
        out = {k: v for k, v in headers.items() if k in FORWARDED_HEADERS}
        if self._api_key:
            # The operator's key replaces the caller's, in the scheme the caller's wire
            # format expects (decided by the route, not guessed from the path).
            out.pop("x-api-key", None)
            out.pop("authorization", None)
            if auth == "x-api-key":
                out["x-api-key"] = self._api_key
            else:
                out["authorization"] = f"Bearer {self._api_key}"
        out["content-type"] = "application/json"
        return out

    async def send(
        self, path: str, body: dict[str, Any], headers: dict[str, str], auth: AuthScheme
    ) -> UpstreamResponse:
        try:
            async with self._calls:
                r = await self._client.post(
                    path,
                    content=json.dumps(body).encode(),
                    headers=self.forwarded_headers(headers, auth),
                )
        except httpx.HTTPError as e:
            raise transport_error(e) from e
        return UpstreamResponse(r.status_code, pick_returned_headers(r.headers), r.content)

    async def stream(
        self, path: str, body: dict[str, Any], headers: dict[str, str], auth: AuthScheme
    ) -> UpstreamStream:
        return await self._open("POST", path, json.dumps(body).encode(), headers, None, auth)

    async def raw(
        self,
        method: str,
        path: str,
        content: bytes,
        headers: dict[str, str],
        params: list[tuple[str, str]],
        auth: AuthScheme,
    ) -> UpstreamStream:
        """Any other API call, relayed as it is (body, query, content type), streamed back."""
        return await self._open(method, path, content, headers, params, auth)

    async def _open(
        self,
        method: str,
        path: str,
        content: bytes,
        headers: dict[str, str],
        params: list[tuple[str, str]] | None,
        auth: AuthScheme,
    ) -> UpstreamStream:
        out = self.forwarded_headers(headers, auth)
        if params is not None:  # a relayed call keeps its own content type
            out["content-type"] = headers.get("content-type", "application/json")
        request = self._client.build_request(
            method,
            path,
            content=content or None,
            headers=out,
            params=tuple(params) if params else None,
        )
        if not self._below_base(request.url):
            # Defence in depth behind the relay's path check: credentials go to the
            # configured upstream, under its base path, or nowhere.
            raise BadRequest(f"path {path[:200]!r} is not below the upstream", param="path")
        try:
            r = await self._client.send(request, stream=True)
        except httpx.HTTPError as e:
            raise transport_error(e) from e

        async def chunks() -> AsyncIterator[bytes]:
            try:
                async for chunk in r.aiter_bytes():
                    yield chunk
            except httpx.TimeoutException as e:
                raise UpstreamTimeout("upstream stream stalled") from e
            except httpx.HTTPError as e:
                raise UpstreamUnavailable(f"upstream stream broke: {type(e).__name__}") from e
            finally:
                await r.aclose()

        returned = pick_returned_headers(r.headers)
        if "content-type" in r.headers:
            returned["content-type"] = r.headers["content-type"]
        return UpstreamStream(r.status_code, returned, chunks())

    def _below_base(self, url: httpx.URL) -> bool:
        base = self._client.base_url
        return (url.scheme, url.host, url.port) == (
            base.scheme,
            base.host,
            base.port,
        ) and url.raw_path.startswith(base.raw_path)

    async def aclose(self) -> None:
        await self._client.aclose()
