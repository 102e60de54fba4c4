"""Verdicts and single flight shared through a real Redis, between two "replicas" in one
process (each with clients of its own)."""

from __future__ import annotations

import asyncio
import contextlib

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from cache_service.cache.feedback import FeedbackLearner, ServedHit
from cache_service.cache.feedback_feed import FeedbackFeed
from cache_service.cache.served_feed import ServedFeed
from cache_service.proxy.fleet_flight import FleetFlights
from tests.redis_server import RedisServer


async def test_a_verdict_given_on_one_replica_is_learned_by_the_others(redis_url: str) -> None:
    a_client, b_client = Redis.from_url(redis_url), Redis.from_url(redis_url)
    a, b = FeedbackLearner(0.9), FeedbackLearner(0.9)
    feed_a = FeedbackFeed(a_client, prefix="t", origin="a", block_ms=100)
    feed_b = FeedbackFeed(b_client, prefix="t", origin="b", block_ms=100)
    await feed_b.bootstrap(b)
    follower = asyncio.create_task(feed_b.run(b))
    try:
        for _ in range(2):  # two corroborating wrong reports move a threshold
            a.record("ns", 0.95, correct=False)
            await feed_a.publish("ns", 0.95, correct=False)
        assert a.threshold("ns") > 0.9
        for _ in range(100):
            if b.threshold("ns") == a.threshold("ns"):
                break
            await asyncio.sleep(0.02)
        assert b.threshold("ns") == a.threshold("ns")
        # A replica started later replays the fleet's verdicts, its own included.
        late = FeedbackLearner(0.9)
        await FeedbackFeed(a_client, prefix="t", origin="a", block_ms=100).bootstrap(late)
        assert late.threshold("ns") == a.threshold("ns")
    finally:
        follower.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await follower
        await a_client.aclose()
        await b_client.aclose()


async def test_one_replica_leads_a_key_and_the_other_is_woken_when_it_lets_go(
    redis_url: str,
) -> None:
    a_client, b_client = Redis.from_url(redis_url), Redis.from_url(redis_url)

    def channel(key: str) -> str:
        return f"t:stored:{key}"

    a = FleetFlights(a_client, prefix="t", channel=channel, lease_s=0.6)
    b = FleetFlights(b_client, prefix="t", channel=channel, lease_s=0.6)
    try:
        lease = await a.acquire("k")
        assert lease is not None
        assert await b.acquire("k") is None
        await asyncio.sleep(1.0)  # past the lease: renewed while held, so still a's
        assert await b.acquire("k") is None
        waiter = asyncio.create_task(b.wait("k", timeout_s=5.0))
        await asyncio.sleep(0.3)
        started = asyncio.get_running_loop().time()
        await lease.release()
        await waiter
        assert asyncio.get_running_loop().time() - started < 0.3
        second = await b.acquire("k")
        assert second is not None
        await second.release()
    finally:
        await a.close()
        await b.close()
        await a_client.aclose()
        await b_client.aclose()


async def test_a_dead_leaders_lock_lapses_after_its_lease(redis_url: str) -> None:
    a_client, b_client = Redis.from_url(redis_url), Redis.from_url(redis_url)
    a = FleetFlights(a_client, prefix="t", channel=lambda k: f"t:stored:{k}", lease_s=0.5)
    b = FleetFlights(b_client, prefix="t", channel=lambda k: f"t:stored:{k}", lease_s=0.5)
    try:
        assert await a.acquire("k") is not None
        await a.close()  # the leader stops renewing: as if it died
        started = asyncio.get_running_loop().time()
        await b.wait("k", timeout_s=5.0)
        assert asyncio.get_running_loop().time() - started < 1.5
        assert await b.acquire("k") is not None
    finally:
        await b.close()
        await a_client.aclose()
        await b_client.aclose()


async def test_a_hit_served_by_one_replica_is_found_by_request_id_on_another(
    redis_url: str, redis_server: RedisServer
) -> None:
    a_client = Redis.from_url(redis_url, socket_timeout=0.5, retry=Retry(NoBackoff(), 0))
    b_client = Redis.from_url(redis_url)
    a = ServedFeed(a_client, prefix="t", ttl_s=60.0, max_pending=3)
    b = ServedFeed(b_client, prefix="t")
    hit = ServedHit("entry-1", "ns", 0.95, "semantic")
    try:
        a.remember("req-1", hit)
        assert await b.find("req-1") is None  # not flushed yet
        await a.flush()
        assert await b.find("req-1") == hit
        assert 0 < await b_client.pttl("t:served:req-1") <= 60_000
        assert await b.find("req-never") is None
        # Redis away: the hits wait, bounded, newest kept, and go once it answers.
        redis_server.stop()
        try:
            for i in range(5):
                a.remember(f"away-{i}", hit)
                await a.flush()
        finally:
            redis_server.start()
        await a.flush()
        found = [await b.find(f"away-{i}") for i in range(5)]
        assert found.count(hit) == 3 and found[-1] == hit
    finally:
        await a_client.aclose()
        await b_client.aclose()
