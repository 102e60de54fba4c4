"""The request path searches a cheap scope on the event loop and a costly one in a thread,
with the same answers either way."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from cache_service.cache.search_placement import SearchPlacement
from tests.conftest import Harness

Q = "How do I reset my password?"
PARAPHRASE = "how do I reset my password"


class Searches:
    """Records, for each search the request path runs, whether it ran on the event loop;
    `delay` slows every search down."""

    def __init__(self, h: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
        self.on_loop: list[bool] = []
        self.delay = 0.0
        cache = h.state["front"].cache
        search = cache.search

        def watched(*args: Any, **kwargs: Any) -> Any:
            self.on_loop.append(threading.current_thread() is threading.main_thread())
            time.sleep(self.delay)
            return search(*args, **kwargs)

        monkeypatch.setattr(cache, "search", watched)


async def placed(
    h: Harness, monkeypatch: pytest.MonkeyPatch, *, inline_s: float, alone_s: float
) -> Searches:
    """Searches recorded under these bounds, once a miss has stored Q (its own search, the
    scope's first, runs in a thread: nothing has measured the scope yet)."""
    searches = Searches(h, monkeypatch)
    h.state["front"].placement = SearchPlacement(inline_s=inline_s, alone_s=alone_s)
    assert (await h.chat(Q)).headers["x-cache"] == "MISS"
    await h.state["front"].settle()
    return searches


async def test_a_cheap_scope_is_searched_inline_and_a_slow_one_in_a_thread(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A bound far above this test's own searches, which a loaded CI box may slow down.
    searches = await placed(h, monkeypatch, inline_s=0.005, alone_s=0.005)
    for _ in range(3):
        assert (await h.chat(PARAPHRASE)).headers["x-cache-match"] == "semantic"
    # The miss's search measured it in a thread.
    assert searches.on_loop == [False, True, True, True]
    searches.delay = 0.01  # the scope's searches got slow (it grew, the store slowed down)
    for _ in range(8):
        assert (await h.chat(PARAPHRASE)).headers["x-cache-match"] == "semantic"
    assert searches.on_loop[-1] is False


async def test_a_lookup_alone_searches_inline_up_to_a_longer_bound_than_one_among_others(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    front = h.state["front"]
    # No search is cheap enough to run inline beside another lookup; alone, any is.
    searches = await placed(h, monkeypatch, inline_s=0.0, alone_s=1.0)
    assert (await h.chat(PARAPHRASE)).headers["x-cache-match"] == "semantic"
    assert searches.on_loop == [False, True]

    # Another lookup waits for its embedding: this one is no longer alone.
    waiting, gate = asyncio.Event(), asyncio.Event()
    embed = front.batcher.embed

    async def held(text: str, timeout_s: float | None = None, **kwargs: Any) -> Any:
        if "token bucket" in text:
            waiting.set()
            await gate.wait()
        return await embed(text, timeout_s, **kwargs)

    monkeypatch.setattr(front.batcher, "embed", held)
    other = asyncio.create_task(h.chat("What is a token bucket?"))
    await waiting.wait()
    assert (await h.chat(PARAPHRASE)).headers["x-cache-match"] == "semantic"
    gate.set()
    assert (await other).headers["x-cache"] == "MISS"
    assert searches.on_loop == [False, True, False, True]  # the held one: alone, at the end
    assert front.lookups == 0


async def test_a_store_across_the_network_is_never_searched_inline(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    front = h.state["front"]
    # As for a fleet's Redis store (`app.py`): its candidates are network reads.
    front.reads_inline = False
    searches = await placed(h, monkeypatch, inline_s=1.0, alone_s=1.0)
    for _ in range(3):
        assert (await h.chat(PARAPHRASE)).headers["x-cache-match"] == "semantic"
    assert searches.on_loop == [False] * 4
