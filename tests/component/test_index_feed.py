"""Replicas sharing one Redis: each SemanticCache has its own FaissIndex and its own
RedisEntryStore client, and its IndexFeed keeps that index in step with what the others
store and delete. Feeds are stepped by hand except where the real loop is the point."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
import redis

from cache_service.backends.faiss_index import FaissIndex
from cache_service.backends.redis_store import (
    DEFAULT_MAXLEN,
    RedisEntryStore,
    StreamTrimmed,
)
from cache_service.cache.guards import AcceptConfig
from cache_service.cache.index_feed import IndexFeed
from cache_service.cache.semantic import Lookup, SemanticCache
from cache_service.errors import StoreUnavailable
from cache_service.protocols import Entry
from tests.fakes import FakeClock, HashingEmbedder
from tests.redis_server import RedisServer

Q = "How do I reset my password?"
SCOPE = "scope-a"
TTL = 600.0


class Replica:
    def __init__(
        self,
        url: str,
        origin: str,
        clock: FakeClock,
        embedder: HashingEmbedder,
        *,
        maxlen: int = DEFAULT_MAXLEN,
        batch: int = 512,
    ) -> None:
        self.embedder = embedder
        self.store = RedisEntryStore.from_url(url, origin=origin, maxlen=maxlen)
        self.index = FaissIndex(embedder.dim)
        self.cache = SemanticCache(self.store, self.index, clock, AcceptConfig(threshold=0.9))
        self.feed = IndexFeed(
            self.cache, self.store, batch=batch, block_ms=50, first_backoff_s=0.02
        )

    def put(self, prompt: str = Q, *, namespace: str = "ns-a", ttl_s: float = TTL) -> Entry:
        entry = self.cache.new_entry(
            scope=SCOPE,
            exact_key=f"{SCOPE}|{prompt}",
            namespace=namespace,
            model="gpt-4o-mini",
            prompt=prompt,
            embedding=self.embedder.embed([prompt])[0],
            response={"choices": [{"message": {"content": f"answer to {prompt}"}}]},
            ttl_s=ttl_s,
        )
        self.cache.put(entry)
        return entry

    def search(self, prompt: str = Q) -> Lookup:
        return self.cache.search(SCOPE, self.embedder.embed([prompt])[0], prompt)

    def catch_up(self) -> int:
        """Step the feed until no event is left; returns how many it read."""
        total = 0
        while n := self.feed.step():
            total += n
        return total


@pytest.fixture
def replica(
    redis_url: str, clock: FakeClock, embedder: HashingEmbedder
) -> Iterator[Callable[..., Replica]]:
    made: list[Replica] = []

    def make(origin: str, *, bootstrap: bool = True, **kw: Any) -> Replica:
        r = Replica(redis_url, origin, clock, embedder, **kw)
        made.append(r)
        if bootstrap:
            r.feed.bootstrap()
        return r

    yield make
    for r in made:
        r.store.close()


def prompt(i: int) -> str:
    return f"question {i} about subject {i * 7919} and item {i * 104729}"


# ------------------------------------------------------------------ following another replica


def test_an_entry_put_on_one_replica_is_found_on_another(
    replica: Callable[..., Replica],
) -> None:
    a, b = replica("a"), replica("b")
    entry = a.put()
    # Exact hits read the shared store: at once, no feed needed.
    found = b.cache.get_exact(entry.exact_key)
    assert found is not None
    assert found.id == entry.id
    assert b.search().reason == "no_candidates"  # b's index has not heard of it yet
    assert b.feed.step() == 1
    hit = b.search("how do I reset my password")
    assert hit.entry is not None
    assert hit.entry.id == entry.id
    assert hit.match == "semantic"
    assert b.feed.applied == 1
    assert b.feed.lag_s >= 0.0


def test_a_delete_on_one_replica_leaves_the_others_index(
    replica: Callable[..., Replica],
) -> None:
    a, b = replica("a"), replica("b")
    entry = a.put()
    kept = a.put("What is the capital of France?")
    b.catch_up()
    assert len(b.index) == 2
    assert a.cache.delete(entry.id) is not None
    b.catch_up()
    assert len(b.index) == 1
    assert b.search().reason == "no_candidates" or b.search().entry is None
    assert b.search("What is the capital of France?").entry is not None
    assert b.search("What is the capital of France?").entry.id == kept.id  # type: ignore[union-attr]


def test_a_replacement_under_the_same_exact_key_moves_every_index(
    replica: Callable[..., Replica],
) -> None:
    a, b = replica("a"), replica("b")
    old = a.put()
    b.catch_up()
    new = b.put()  # the same prompt stored again, by the other replica
    a.catch_up()
    for r in (a, b):
        assert len(r.index) == 1
        hit = r.search()
        assert hit.entry is not None
        assert hit.entry.id == new.id != old.id


def test_invalidation_by_namespace_reaches_the_other_replicas(
    replica: Callable[..., Replica],
) -> None:
    a, b = replica("a"), replica("b")
    doomed = [a.put(prompt(i), namespace="ns-doomed") for i in range(3)]
    kept = [a.put(prompt(i), namespace="ns-kept") for i in range(3, 5)]
    b.catch_up()
    assert len(b.index) == 5
    assert a.cache.delete_where(namespace="ns-doomed") == 3
    b.catch_up()
    assert len(b.index) == 2
    for e in doomed:
        assert b.search(e.prompt).entry is None
    for e in kept:
        hit = b.search(e.prompt)
        assert hit.entry is not None
        assert hit.entry.id == e.id


def test_a_replica_started_later_bootstraps_from_the_store(
    replica: Callable[..., Replica],
) -> None:
    a = replica("a")
    entries = [a.put(prompt(i)) for i in range(6)]
    a.cache.delete(entries[0].id)
    c = replica("c")  # bootstraps as it starts
    assert c.feed.bootstraps == 1
    assert len(c.index) == 5
    assert c.catch_up() == 0  # the events before the bootstrap are not read again
    for e in entries[1:]:
        hit = c.search(e.prompt)
        assert hit.entry is not None
        assert hit.entry.id == e.id
    later = a.put("What is the capital of France?")
    assert c.catch_up() == 1
    hit = c.search(later.prompt)
    assert hit.entry is not None
    assert hit.entry.id == later.id


def test_entries_redis_expired_on_its_own_clock_leave_the_index_at_the_sweep(
    replica: Callable[..., Replica],
) -> None:
    a, b = replica("a"), replica("b")
    a.put(ttl_s=0.05)  # the fake clock stands still: only Redis sees this one expire
    kept = a.put("What is the capital of France?")
    b.catch_up()
    time.sleep(0.2)
    assert len(b.store) == 1
    for r in (a, b):
        assert r.cache.sweep() == (0, 1)
        assert len(r.index) == 1
        hit = r.search(kept.prompt)
        assert hit.entry is not None
        assert hit.entry.id == kept.id


def test_own_events_are_skipped_so_a_late_add_cannot_revive_a_delete(
    replica: Callable[..., Replica],
) -> None:
    a = replica("a", batch=1)
    entry = a.put()
    a.cache.delete(entry.id)
    assert a.feed.step() == 1  # only the add: applied late, it would bring the vector back
    assert len(a.index) == 0
    assert a.catch_up() == 1
    assert len(a.index) == 0


def test_a_trimmed_stream_makes_the_feed_rebuild_from_the_entries(
    replica: Callable[..., Replica],
) -> None:
    a, b = replica("a", maxlen=5), replica("b")
    doomed = a.put("What is the capital of France?")
    b.catch_up()
    assert len(b.index) == 1
    a.cache.delete(doomed.id)
    # `MAXLEN ~` trims whole stream nodes (100 events each), so write a few nodes' worth.
    stored = [a.put(prompt(i)) for i in range(300)]
    assert b.feed.step() == 0  # the delete was trimmed away: rebuilt instead
    assert b.feed.bootstraps == 2
    assert len(b.index) == 300  # the missed delete is applied too
    assert b.search(doomed.prompt).entry is None
    assert b.search(stored[123].prompt).entry is not None
    later = a.put(Q)
    assert b.catch_up() == 1
    assert b.search().entry is not None
    assert b.search().entry.id == later.id  # type: ignore[union-attr]


def test_a_feed_that_never_read_notices_a_trim_too(replica: Callable[..., Replica]) -> None:
    b = replica("b")  # bootstrapped on an empty stream: resumes from 0-0
    a = replica("a", maxlen=5)
    for i in range(300):
        a.put(prompt(i))
    assert b.feed.step() == 0
    assert b.feed.bootstraps == 2
    assert len(b.index) == 300


def test_a_stream_lost_with_redis_data_makes_the_feed_rebuild(
    replica: Callable[..., Replica], redis_url: str
) -> None:
    a, b = replica("a"), replica("b")
    a.put()
    b.catch_up()
    with pytest.raises(StreamTrimmed):
        client = redis.Redis.from_url(redis_url)
        try:
            client.flushall()
        finally:
            client.close()
        b.store.read_events(b.feed.last_id, 10)
    assert b.feed.step() == 0
    assert b.feed.bootstraps == 2
    assert len(b.index) == 0  # the entry went with the data
    a.put("What is the capital of France?")
    assert b.catch_up() == 1
    assert len(b.index) == 1


# ------------------------------------------------------------------ the store's own signals


def test_put_and_delete_write_typed_events_and_announce_the_store(
    replica: Callable[..., Replica], redis_url: str
) -> None:
    a = replica("a")
    listener = redis.Redis.from_url(redis_url)
    pubsub = listener.pubsub()  # type: ignore[no-untyped-call]  # unannotated in redis-py
    try:
        pubsub.subscribe(a.store.stored_channel(f"{SCOPE}|{Q}"))
        assert pubsub.get_message(timeout=1) is not None  # the subscription's confirmation
        start = a.store.last_event_id()
        first = a.put()
        message = pubsub.get_message(timeout=1)
        assert message is not None
        assert message["data"] == first.id.encode()
        second = a.put()  # same exact key: replaces the first
        a.cache.delete(second.id)
        events = a.store.read_events(start, 10)
        assert [(e.op, e.entry_id) for _, e in events] == [
            ("add", first.id),
            ("del", first.id),
            ("add", second.id),
            ("del", second.id),
        ]
        add = events[0][1]
        assert add.scope == SCOPE
        assert add.origin == "a"
        assert add.expires == first.expires
        assert add.vector is not None
        assert first.embedding is not None
        assert np.array_equal(add.vector, first.embedding)
        assert a.store.last_event_id() == events[-1][0]
        assert a.store.read_events(events[-1][0], 10, block_ms=20) == []
    finally:
        pubsub.close()
        listener.close()


def test_a_blocking_read_ends_before_the_clients_read_timeout(redis_url: str) -> None:
    store = RedisEntryStore.from_url(redis_url, origin="a", timeout_s=0.2)
    try:
        started = time.monotonic()
        assert store.read_events(store.last_event_id(), 10, block_ms=1000) == []
        assert time.monotonic() - started < 1.0  # cut to 100 ms: no timeout, no full wait
    finally:
        store.close()


# ------------------------------------------------------------------ the real loop


async def wait_for(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def test_the_feed_loop_survives_redis_going_away_and_resumes(
    replica: Callable[..., Replica], redis_server: RedisServer
) -> None:
    a, b = replica("a"), replica("b")
    task = asyncio.create_task(b.feed.run())
    try:
        a.put()
        await wait_for(lambda: len(b.index) == 1)
        redis_server.stop()
        try:
            await wait_for(lambda: not b.feed.connected)
            await asyncio.sleep(0.2)  # a few failed retries
            assert not task.done()
            with pytest.raises(StoreUnavailable):  # what the request path fails open on
                a.cache.get_exact(f"{SCOPE}|{Q}")
            with pytest.raises(StoreUnavailable):
                a.put("Where is the nearest station?")
        finally:
            redis_server.start()  # the session's server: always left running
        later = a.put("What is the capital of France?")
        # The step that indexes it runs in the feed's thread; `connected` is set when the
        # loop resumes the feed after it, so the index can show it a moment before.
        await wait_for(lambda: len(b.index) == 2 and b.feed.connected)
        assert b.feed.bootstraps == 1  # resumed from its id, no rebuild needed
        hit = b.search(later.prompt)
        assert hit.entry is not None
        assert hit.entry.id == later.id
    finally:
        b.feed.stop()
        await asyncio.wait_for(task, 5)


async def test_the_loop_bootstraps_first_and_a_cancelled_loop_ends_quietly(
    replica: Callable[..., Replica],
) -> None:
    a = replica("a")
    first = a.put()
    b = replica("b", bootstrap=False)
    assert not b.cache.ready
    task = asyncio.create_task(b.feed.run())
    await wait_for(lambda: b.cache.ready)
    assert b.feed.bootstraps == 1
    a.put("What is the capital of France?")
    await wait_for(lambda: len(b.index) == 2)
    assert b.search(first.prompt).entry is not None
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0.1)  # the abandoned read (block_ms 50) ends on its own
