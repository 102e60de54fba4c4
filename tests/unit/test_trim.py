"""After a large request body the heap is handed back (malloc_trim), once, off the loop;
small requests do not pay for it."""

from __future__ import annotations

import asyncio

import httpx
from starlette.types import Receive, Scope, Send

from cache_service.api.trim import TrimAfterLargeBodies


async def echo_size(scope: Scope, receive: Receive, send: Send) -> None:
    size, more = 0, True
    while more:
        message = await receive()
        size += len(message.get("body", b""))
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": str(size).encode()})


async def test_large_bodies_are_followed_by_one_trim() -> None:
    calls: list[int] = []
    app = TrimAfterLargeBodies(echo_size, threshold_bytes=1000)

    def trim(pad: int) -> int:
        calls.append(pad)
        return 1

    app._trim = trim
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t"
    ) as client:
        r = await client.post("/", content=b"x" * 10)
        assert r.text == "10"
        await asyncio.sleep(0.05)
        assert calls == []
        r = await client.post("/", content=b"x" * 5000)
        assert r.text == "5000"
        for _ in range(100):
            if calls:
                break
            await asyncio.sleep(0.01)
        assert calls == [0]
