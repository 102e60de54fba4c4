"""How a simulated answer reaches the client under a fault that spoils its delivery, not its
content: `drip` (a few bytes at a time), `gzip` (compressed, `content-encoding: gzip`) and
`reset` (the connection dies before the answer)."""

from __future__ import annotations

import asyncio
import gzip
import zlib
from collections.abc import AsyncIterator, Callable

import httpx
from fastapi.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

DRIP_BYTES = 4
"""A `drip` fault sends this many bytes per pause."""
DEFAULT_DRIP_S = 1.0


class SimulatedReset(httpx.RemoteProtocolError):
    """The connection closing mid-answer. An httpx transport error, so an in-process client
    (httpx's ASGI transport re-raises app exceptions) sees what a real reset gives it."""


class ResetResponse(Response):
    """Sends a status line promising a body, then dies: uvicorn closes the connection (it
    only answers 500 to an app that fails before starting its response), an in-process
    transport raises `SimulatedReset`."""

    def __init__(self) -> None:
        super().__init__(status_code=200)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"64")],
            }
        )
        raise SimulatedReset("connection reset by the simulated upstream")


def deliver(kind: str | None, seconds: float | None, response: Response) -> Response:
    """The answer as the fault `kind` delivers it (unchanged for any other fault)."""
    if kind == "drip":
        pause = DEFAULT_DRIP_S if seconds is None else seconds
        return _restream(response, lambda body: _drip(body, pause), encoding=None)
    if kind == "gzip":
        if isinstance(response, StreamingResponse):
            return _restream(response, _gzip_stream, encoding="gzip")
        headers = _headers(response, encoding="gzip")
        return Response(
            gzip.compress(response.body), status_code=response.status_code, headers=headers
        )
    return response


def _headers(response: Response, *, encoding: str | None) -> dict[str, str]:
    # The length changes with the body; starlette recomputes it for a plain body.
    out = {k: v for k, v in response.headers.items() if k != "content-length"}
    if encoding is not None:
        out["content-encoding"] = encoding
    return out


def _restream(
    response: Response,
    transform: Callable[[AsyncIterator[bytes]], AsyncIterator[bytes]],
    *,
    encoding: str | None,
) -> Response:
    return StreamingResponse(
        transform(_body_of(response)),
        status_code=response.status_code,
        headers=_headers(response, encoding=encoding),
    )


async def _body_of(response: Response) -> AsyncIterator[bytes]:
    if isinstance(response, StreamingResponse):
        async for chunk in response.body_iterator:
            yield chunk.encode() if isinstance(chunk, str) else bytes(chunk)
    else:
        yield bytes(response.body)


async def _drip(body: AsyncIterator[bytes], pause: float) -> AsyncIterator[bytes]:
    async for chunk in body:
        for i in range(0, len(chunk), DRIP_BYTES):
            await asyncio.sleep(pause)
            yield chunk[i : i + DRIP_BYTES]


async def _gzip_stream(body: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    # A sync flush per chunk keeps a compressed stream a stream: each event can be decoded
    # as soon as it arrives.
    encoder = zlib.compressobj(wbits=31)
    async for chunk in body:
        yield encoder.compress(chunk) + encoder.flush(zlib.Z_SYNC_FLUSH)
    yield encoder.flush()
