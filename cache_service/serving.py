"""How `serve` runs uvicorn: the client-facing limits from settings, so that stalled, idle or
too many connections cost a bounded amount instead of being held open indefinitely.

- idle keep-alive connections close after `keep_alive_timeout_s` (uvicorn's timer);
- a connection must send each request's headers within `header_timeout_s` (our timer,
  below: uvicorn arms none before the first request or while headers trickle in);
- `max_concurrency` open connections or running requests: further requests get 503, in the
  route's error format with a request id and Retry-After (uvicorn's own is plain text);
- a request head over `max_header_bytes` gets 400 (counted here: httptools has no limit);
- the body's own deadline, `body_timeout_s`, is kept where the body is read (`api/body.py`),
  so its 408 is written in the route's wire format.

The parser is httptools (llhttp, in C) on uvloop, not h11 on asyncio's own loop: measured on
this box, an exact hit's server CPU fell from ~1.4 to ~1.05 ms and its p50 by ~0.3 ms; the
loop and the parser were a third of the work of a request that is otherwise a dict lookup.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import uvicorn
from uvicorn.protocols.http.flow_control import service_unavailable
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from cache_service.api.middleware import RequestIdMiddleware, error_response
from cache_service.errors import OverCapacity
from cache_service.flavors import for_route
from cache_service.settings import Settings


async def _over_capacity(scope: Any, receive: Any, send: Any) -> None:
    """The 503 past `max_concurrency`, written as the app writes its errors, so SDKs raise
    their usual error (and retry after Retry-After) and the answer carries a request id.
    The request's URL picks the format: no route has matched (none will run)."""
    refused = OverCapacity(
        "the cache sidecar is serving as many requests as it allows; retry shortly",
        headers={"retry-after": "1", "connection": "close"},
    )
    await error_response(for_route(scope.get("path")), refused)(scope, receive, send)


_refuse: Any = RequestIdMiddleware(_over_capacity)


class _HeadLimitsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol plus a deadline and a size limit on each request's head.

    The deadline is armed when the connection opens and after each answer; it closes the
    connection if no new request (a new request/response cycle) has started by then. A
    request whose headers arrived is left alone: its body has its own deadline.

    The size: httptools buffers a header until it ends, however long, so the bytes received
    while a head is open are counted, and past `max_head_bytes` the request gets a 400 and
    the connection closes (what h11's incomplete-event limit did before)."""

    header_timeout_s: float = 10.0
    max_head_bytes: int = 16 * 1024
    _head_timer: asyncio.TimerHandle | None = None
    _head_open = False
    _head_bytes = 0
    _ended_in_chunk = False

    def data_received(self, data: bytes) -> None:
        self._ended_in_chunk = False
        super().data_received(data)
        # After the parse: a chunk that completed its head (and carried body bytes) is not
        # counted, one that left a head open counts whole (a bound, not an exact count),
        # unless it also ended the request before (pipelined): its bytes are mostly that
        # one's body, and the next chunks are counted.
        if self._head_open and not self.transport.is_closing():
            if not self._ended_in_chunk:
                self._head_bytes += len(data)
            if self._head_bytes > self.max_head_bytes:
                self._head_open = False
                self.send_400_response("Request headers too large.")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_open, self._head_bytes = True, 0

    def on_message_complete(self) -> None:
        self._ended_in_chunk = True
        super().on_message_complete()

    def on_headers_complete(self) -> None:
        self._head_open = False
        super().on_headers_complete()

    def _start_asgi_task(self, cycle: Any, app: Any) -> None:
        super()._start_asgi_task(cycle, _refuse if app is service_unavailable else app)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_deadline(None)

    def on_response_complete(self) -> None:
        answered = self.cycle
        # May start a pipelined request's cycle at once: the deadline watches for any new one.
        super().on_response_complete()
        self._arm_head_deadline(answered)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_deadline()
        super().connection_lost(exc)

    def _arm_head_deadline(self, cycle_now: Any) -> None:
        self._disarm_head_deadline()
        if self.transport.is_closing():
            return
        self._head_timer = self.loop.call_later(
            self.header_timeout_s, self._head_deadline_passed, cycle_now
        )

    def _disarm_head_deadline(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_deadline_passed(self, cycle_then: Any) -> None:
        self._head_timer = None
        if self.cycle is cycle_then and not self.transport.is_closing():
            self.transport.close()


def server_config(app: Any, settings: Settings) -> uvicorn.Config:
    protocol = type(
        "HeadLimitsProtocol",
        (_HeadLimitsProtocol,),
        {
            "header_timeout_s": settings.header_timeout_s,
            "max_head_bytes": settings.max_header_bytes,
        },
    )
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        http=protocol,
        loop="uvloop",
        timeout_keep_alive=settings.keep_alive_timeout_s,
        limit_concurrency=settings.max_concurrency,
    )


def serve(app: Any, settings: Settings, sock: socket.socket) -> bool:
    """Run on `sock`, bound by the caller before the app loaded (see `preflight`); False
    when the app never started (its lifespan raised: uvicorn logs why and returns)."""
    server = uvicorn.Server(server_config(app, settings))
    server.run(sockets=[sock])
    return server.started
