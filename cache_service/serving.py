"""How `serve` runs uvicorn: the client-facing limits from settings, so that stalled, idle or
too many connections cost a bounded amount instead of being held open indefinitely.

- idle keep-alive connections close after `keep_alive_timeout_s` (uvicorn's timer);
- a connection must send each request's headers within `header_timeout_s` (our timer,
  below: uvicorn arms none before the first request or while headers trickle in);
- `max_concurrency` open connections or running requests: further requests get 503;
- headers over `max_header_bytes` get 400 (h11's incomplete-event limit);
- the body's own deadline, `body_timeout_s`, is kept where the body is read (`api/body.py`),
  so its 408 is written in the route's wire format.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from cache_service.settings import Settings


class _HeadDeadlineProtocol(H11Protocol):
    """uvicorn's h11 protocol plus a deadline on each request's head.

    Armed when the connection opens and after each answer; it closes the connection if no
    new request (a new request/response cycle) has started by then. A request whose headers
    arrived is left alone: its body has its own deadline."""

    header_timeout_s: float = 10.0
    _head_timer: asyncio.TimerHandle | None = None

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
        "HeadDeadlineProtocol",
        (_HeadDeadlineProtocol,),
        {"header_timeout_s": settings.header_timeout_s},
    )
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        http=protocol,
        timeout_keep_alive=settings.keep_alive_timeout_s,
        limit_concurrency=settings.max_concurrency,
        h11_max_incomplete_event_size=settings.max_header_bytes,
    )


def serve(app: Any, settings: Settings, sock: socket.socket) -> None:
    """Run on `sock`, bound by the caller before the app loaded (see `preflight`)."""
    uvicorn.Server(server_config(app, settings)).run(sockets=[sock])
