"""Latency of the Redis quota ledger: one reserve over three scopes (project, upstream,
global) with rpm, tpm and a daily budget set, and one settle, each timed alone on one
connection over loopback; plus the Redis CPU per script call (INFO commandstats).

Run: python benchmarks/redis_ledger.py [--url redis://...] [--n 3000]
Without --url it starts its own redis-server (as the tests do) in a temporary directory.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from redis.asyncio import Redis

from cache_service.quota.ledger import Held
from cache_service.quota.limits import Limits
from cache_service.quota.redis_ledger import RedisLedger

SCOPES = (("project", "default"), ("upstream", "primary"), ("global", "total"))


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def measure(url: str, n: int) -> None:
    client = Redis.from_url(url)
    ledger = RedisLedger(client, prefix="bench", replica_id="bench")
    try:
        limits = Limits(rpm=10**9, tpm=10**12, daily_budget_usd=10**6)
        for scope in SCOPES:
            await ledger.configure(*scope, limits)
        for _ in range(200):  # warm up: scripts loaded, connection open
            held = await ledger.reserve(SCOPES, 500, 0.001)
            assert isinstance(held, Held), held
            await ledger.settle(held, 420, 0.0008)
        # Reserves then settles, each phase on its own so Redis's CPU per call is its own;
        # n holds in flight at once, as under load.
        helds: list[Held] = []
        timings: dict[str, list[float]] = {"reserve": [], "settle": []}
        for phase in ("reserve", "settle"):
            await client.config_resetstat()
            for i in range(n):
                t0 = time.perf_counter()
                if phase == "reserve":
                    held = await ledger.reserve(SCOPES, 500, 0.001)
                    assert isinstance(held, Held), held
                    helds.append(held)
                else:
                    await ledger.settle(helds[i], 420, 0.0008)
                timings[phase].append((time.perf_counter() - t0) * 1000)
            stats = await client.info("commandstats")
            cpu = stats["cmdstat_evalsha"]["usec_per_call"]
            samples = timings[phase]
            print(
                f"{phase:8s} n={len(samples)} p50={statistics.median(samples):.3f} ms "
                f"p90={pct(samples, 0.9):.3f} ms p99={pct(samples, 0.99):.3f} ms; "
                f"Redis CPU {cpu:.0f} µs per call"
            )
    finally:
        await ledger.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url")
    parser.add_argument("--n", type=int, default=3000)
    args = parser.parse_args()
    if args.url:
        asyncio.run(measure(args.url, args.n))
        return
    from tests.redis_server import RedisServer

    with tempfile.TemporaryDirectory() as directory:
        server = RedisServer(Path(directory))
        server.start()
        try:
            asyncio.run(measure(server.url, args.n))
        finally:
            server.stop()


if __name__ == "__main__":
    main()
