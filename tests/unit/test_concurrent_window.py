"""benchmarks/latency.py's `run_concurrent` in its steady-state mode: answers outside the
window (the ramp-up, the drain) are not counted, and the rate is over the window alone."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from benchmarks import latency as L
from tests.threaded_server import serving

DELAY_S = 0.02


async def _answer(request: Request) -> JSONResponse:
    await request.body()
    await asyncio.sleep(DELAY_S)
    return JSONResponse({}, headers={"x-cache-match": "semantic"})


async def _health(request: Request) -> JSONResponse:
    return JSONResponse({})


@pytest.fixture
def slow_server() -> Iterator[str]:
    routes = [Route("/v1/chat/completions", _answer, methods=["POST"]), Route("/healthz", _health)]
    with serving(Starlette(routes=routes)) as url:
        yield f"{url}/v1/chat/completions"


def test_window_counts_only_answers_inside_it(slow_server: str) -> None:
    bodies = [{"n": i} for i in range(3)]
    got = asyncio.run(
        L.run_concurrent(slow_server, bodies, "semantic", 4, window_s=0.5, warm_s=0.3)
    )
    assert got["timed_s"] == 0.5 and got["window_s"] == 0.5
    # The clients cycled through the 3 bodies far past them, ramp-up and drain included...
    assert got["requests"] > got["latency"]["n"] > 3
    assert got["wall_s"] >= 0.8
    # ...and the rate is the window's: 4 clients at one answer per ~20 ms each is at most
    # ~200/s, and what the ramp-up answered (~0.3 s of it) is not in it.
    assert got["req_per_s"] == pytest.approx(got["latency"]["n"] / 0.5, abs=0.1)
    assert got["latency"]["n"] <= 4 * (0.5 / DELAY_S + 1)


def test_without_a_window_every_body_once_over_the_wall_time(slow_server: str) -> None:
    bodies = [{"n": i} for i in range(8)]
    got = asyncio.run(L.run_concurrent(slow_server, bodies, "semantic", 4))
    assert got["requests"] == 8 and got["latency"]["n"] == 8
    assert got["timed_s"] == got["wall_s"]
