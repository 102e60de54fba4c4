"""The real upstream, with its plain calls over aiohttp: what a miss waits for on the request
path. Streams and relayed calls stay `HttpUpstream`'s (httpx), which this extends.

Why a second client: measured on this box against the simulated upstream (1,000 sequential
calls, one keep-alive connection), httpx took 2.5 ms a call and 1.65 ms of the event loop's
CPU (its client layers and h11, a parser in Python); aiohttp, whose parser is C, 1.1 ms and
0.4 ms. A miss pays that on the loop every request serves from. Streams keep httpx: their
relay checks (a relayed URL stays below the upstream's base) and their fault handling are
written and tested against it, and a stream's time is the upstream's anyway.

Same contract as `HttpUpstream.send`: the operator's key and the forwarded headers
(`forwarded_headers`), decoded bodies (content-encoding is never returned), the returned
headers it picks, failures as the same errors (`timed_out`, `unreachable`).
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

import aiohttp
import httpx
from aiohttp.helpers import get_env_proxy_for_url
from yarl import URL

from cache_service.backends.upstream import (
    HttpUpstream,
    pick_returned_headers,
    timed_out,
    unreachable,
)
from cache_service.protocols import AuthScheme, UpstreamResponse

# httpx's default for idle keep-alive connections: an upstream that closes idle connections
# sooner makes the next call on one fail (retryable, so retried, but a wasted attempt).
_KEEPALIVE_S = 5.0


class AiohttpUpstream(HttpUpstream):
    _session: aiohttp.ClientSession | None = None

    def _aiohttp(self) -> aiohttp.ClientSession:
        # Made on first use: a session belongs to the event loop it was made in, and this
        # object is built before serving starts.
        if self._session is None:
            # What httpx trusts, so both clients reach the same upstreams: httpx's own TLS
            # context (certifi's roots, or SSL_CERT_FILE/SSL_CERT_DIR; aiohttp's default
            # is the system store, which a slim image may lack) and the proxy variables.
            proxy, proxy_auth = _env_proxy(self.base_url)
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    limit=self.max_connections,
                    keepalive_timeout=_KEEPALIVE_S,
                    ssl=httpx.create_ssl_context(),
                ),
                # As httpx's Timeout(timeout_s, connect=...): each wait (a free connection, a
                # read) at most timeout_s, making a connection at most connect_timeout_s; no
                # total, since the chain's request deadline bounds the whole call.
                timeout=aiohttp.ClientTimeout(
                    total=None,
                    connect=self.timeout_s,
                    sock_connect=self.connect_timeout_s,
                    sock_read=self.timeout_s,
                ),
                # Not trust_env: with it aiohttp looks the proxy up again on every call and
                # reads ~/.netrc, each in a worker thread (two thread hops a miss), and a
                # .netrc entry for the upstream's host would add its login to calls that
                # carry the operator's key in another header, or fail those that carry
                # Authorization. httpx reads the proxy variables once, and no .netrc.
                trust_env=False,
                proxy=proxy,
                proxy_auth=proxy_auth,
            )
        return self._session

    async def send(
        self, path: str, body: dict[str, Any], headers: dict[str, str], auth: AuthScheme
    ) -> UpstreamResponse:
        # `path` is a flavour's own route below the base (never the caller's): no check here.
        url = f"{self.base_url}/{path.lstrip('/')}"
        content = json.dumps(body).encode()
        try:
            async with self._aiohttp().post(
                url, data=content, headers=self.forwarded_headers(headers, auth)
            ) as r:
                return UpstreamResponse(r.status, pick_returned_headers(r.headers), await r.read())
        except TimeoutError as e:  # aiohttp's timeouts are TimeoutErrors too
            raise timed_out(e) from e
        except aiohttp.ClientConnectorError as e:  # refused, unresolvable, certificate refused
            raise unreachable(e, retryable=False) from e
        except aiohttp.ClientError as e:
            raise unreachable(e, retryable=True) from e

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
        await super().aclose()


def _env_proxy(base_url: str) -> tuple[URL | None, aiohttp.BasicAuth | None]:
    """The proxy the environment names for the upstream (HTTP(S)_PROXY, honouring NO_PROXY),
    read once, when the session is made, as httpx reads it when its client is."""
    with contextlib.suppress(LookupError):
        return get_env_proxy_for_url(URL(base_url))
    return None, None
