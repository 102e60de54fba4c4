from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import httpx
import pytest
from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from cache_service.app import create_app
from cache_service.backends.entry_journal import EntryJournal
from cache_service.backends.upstream import HttpUpstream
from cache_service.protocols import PairScorer, Upstream
from cache_service.settings import Settings, load_settings
from cache_service.simulator.app import create_simulated_app
from tests.fakes import FakeClock, HashingEmbedder
from tests.redis_server import RedisServer, running_redis


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def embedder() -> HashingEmbedder:
    return HashingEmbedder()


@pytest.fixture
def settings_factory(tmp_path: Path) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        # Never the repository's models/verifier (auto would load it once it ships): a test
        # wanting a verifier injects a pair scorer or names a directory.
        overrides.setdefault("verifier_dir", tmp_path / "no-verifier")
        return load_settings(None, data_dir=tmp_path / "data", **overrides)

    return make


def http_scope(method: str, raw_path: str, headers: list[tuple[bytes, bytes]]) -> Scope:
    """An HTTP request's ASGI scope as a server makes it, for tests that drive an app's
    `receive` and `send` themselves (what httpx's ASGI transport does not let them see)."""
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": unquote(raw_path),
        "raw_path": raw_path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": headers,
        "server": ("s", 80),
        "client": ("c", 1),
    }


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[Mapping[str, Any]]:
    """The app's lifespan, run as a server runs it, and the state it hands to `served`."""
    async with app.router.lifespan_context(app) as state:
        assert state is not None  # create_app's lifespan always yields its state
        yield state


def served(app: ASGIApp, state: Mapping[str, Any]) -> ASGIApp:
    """The app as a server runs it: each request gets a copy of the lifespan's state (httpx's
    ASGI transport runs no lifespan, so the test runs it and hands the state over here)."""

    async def asgi(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            scope = {**scope, "state": dict(state)}
        await app(scope, receive, send)

    return asgi


class Harness:
    """A sidecar app in-process (real store, index, request path; hashing embedder) in
    front of the simulated upstream, both over ASGI, plus handles on each."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        sim: httpx.AsyncClient,
        app: FastAPI,
        state: Mapping[str, Any],
    ) -> None:
        self.client = client
        self.sim = sim
        self.app = app
        self.state = state

    async def chat(self, content: str, **extra: Any) -> httpx.Response:
        headers = extra.pop("headers", None)
        body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": content}]}
        body.update(extra)
        return await self.client.post("/v1/chat/completions", json=body, headers=headers)

    async def upstream_calls(self) -> int:
        r = await self.sim.get("/_sim/stats")
        calls: int = r.json()["requests"]
        return calls

    async def faults(self, *faults: str, **opts: Any) -> None:
        r = await self.sim.post("/_sim/faults", json={"faults": list(faults), **opts})
        assert r.status_code == 200, r.text


@contextlib.asynccontextmanager
async def harness(
    settings: Settings,
    embedder: HashingEmbedder,
    clock: FakeClock,
    upstream_url: str | None = None,
    wrap: Callable[[HttpUpstream], Upstream | dict[str, Upstream]] | None = None,
    pair_scorer: PairScorer | None = None,
) -> AsyncIterator[Harness]:
    """`wrap` puts something between the sidecar and the simulator's client (a stalling
    stream, a dead primary), by upstream name if it returns a dict. `pair_scorer` turns the
    verifier on with that model in place of an ONNX one."""
    sim_app = create_simulated_app()
    sim_transport = httpx.ASGITransport(app=sim_app)
    upstream = HttpUpstream(upstream_url or "http://sim/v1", transport=sim_transport, timeout_s=10)
    injected = wrap(upstream) if wrap is not None else upstream
    app = create_app(
        settings, embedder=embedder, upstream=injected, clock=clock, pair_scorer=pair_scorer
    )
    async with (
        lifespan(app) as state,
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=served(app, state)), base_url="http://sidecar"
        ) as c,
        httpx.AsyncClient(transport=sim_transport, base_url="http://sim") as sim,
    ):
        # Generous: a loaded CI machine may take a while to open the store and index.
        deadline = asyncio.get_running_loop().time() + 30
        while (await c.get("/readyz")).status_code != 200:
            assert asyncio.get_running_loop().time() < deadline, "sidecar never became ready"
            await asyncio.sleep(0.01)
        yield Harness(c, sim, app, state)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One real Redis for the session (started on first use only)."""
    with running_redis(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """A URL to the session's Redis, emptied for this test."""
    redis_server.flush()
    return redis_server.url


@pytest.fixture
async def h(
    settings_factory: Callable[..., Settings], embedder: HashingEmbedder, clock: FakeClock
) -> AsyncIterator[Harness]:
    """A sidecar with the default settings (a module that needs others defines its own)."""
    async with harness(settings_factory(), embedder, clock) as sidecar:
        yield sidecar


def journalled(directory: Path) -> list[str]:
    """The prompts of every record in an entry journal's segments (stored or not)."""
    journal = EntryJournal(directory)
    return [r["prompt"] for seg in journal.segments() for r in EntryJournal.read(seg)]
