"""serve's own listening socket must give accepted connections TCP_NODELAY, as asyncio does
for sockets it creates itself: without it, Nagle holds each response body (written after its
headers) until the client's delayed ACK, 40 ms per request on Linux."""

from __future__ import annotations

import asyncio
import socket

from cache_service.preflight import listen_socket


def test_accepted_connections_get_tcp_nodelay() -> None:
    async def run() -> int:
        nodelay: list[int] = []

        def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            sock = writer.get_extra_info("socket")
            nodelay.append(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            writer.close()

        sock = listen_socket("127.0.0.1", 0, "test")
        server = await asyncio.start_server(on_connect, sock=sock)
        port = sock.getsockname()[1]
        async with server:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            for _ in range(100):
                if nodelay:
                    break
                await asyncio.sleep(0.01)
            writer.close()
        return nodelay[0]

    assert asyncio.run(run()) != 0
