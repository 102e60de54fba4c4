"""A real Redis for tests: Debian's `redis-server` (installed by `make test`, see the
Makefile's `redis-server` target), started by the test session on a free loopback port in
its own directory, with append-only persistence on so that a restart keeps what it
acknowledged. Nothing is shared with a Redis the machine may already run.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import redis


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class RedisServer:
    """One `redis-server` process; `stop()`/`kill()` and `start()` again on the same port
    and directory, for the tests of a Redis that goes away and comes back."""

    def __init__(self, directory: Path, port: int | None = None) -> None:
        executable = shutil.which("redis-server")
        if executable is None:
            raise RuntimeError(
                "redis-server is not installed: `make test` installs it (Debian's package)"
            )
        self.executable = executable
        self.directory = directory
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None
        directory.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                self.executable,
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--dir", str(self.directory),
                "--save", "",
                "--appendonly", "yes",
                "--appendfsync", "everysec",
                "--protected-mode", "no",
                "--loglevel", "warning",
                "--logfile", str(self.directory / "redis.log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    if client.ping():
                        return
                except redis.exceptions.RedisError:
                    pass  # not listening yet, or still loading its append-only file
                if self.process.poll() is not None or time.monotonic() > deadline:
                    log = (self.directory / "redis.log").read_text(errors="replace")
                    raise RuntimeError(f"redis-server did not start on {self.port}: {log}")
                time.sleep(0.02)
        finally:
            client.close()

    def stop(self) -> None:
        """A clean shutdown (it writes nothing more: persistence is the append-only file)."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        self.process = None

    def kill(self) -> None:
        """`kill -9`: what an acknowledged write must survive."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self.process = None

    def flush(self) -> None:
        client = redis.Redis(port=self.port)
        try:
            client.flushall()
        finally:
            client.close()


@contextmanager
def running_redis(directory: Path) -> Iterator[RedisServer]:
    """A started server, stopped on leaving."""
    server = RedisServer(directory)
    server.start()
    try:
        yield server
    finally:
        server.stop()
