"""This replica's place in a fleet sharing one Redis: who is alive (each replica's share of a
limit while Redis is away is the limit ÷ the replicas last seen alive), and the stats every
replica publishes so any one of them can answer for the whole fleet.

Membership is a sorted set of replica → last heartbeat (Redis `TIME`, one clock for all);
a replica silent for `dead_after_s` no longer counts. Stats are each replica's own counters
(rebuilt from its own outcome log at start, so a restart republishes the same figures),
kept for `stats_ttl_s` after its last publication: a replica that went away still counts in
the fleet's totals for that long.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from cache_service.telemetry.stats import Stats

log = logging.getLogger("cache_service.fleet")


def default_replica_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass(frozen=True, slots=True)
class ReplicaStats:
    replica: str
    published_at: float
    rows: list[dict[str, Any]]


class Fleet:
    def __init__(
        self,
        client: aioredis.Redis,
        *,
        prefix: str,
        replica_id: str,
        heartbeat_s: float = 1.0,
        dead_after_s: float = 5.0,
        stats_ttl_s: float = 7 * 86_400,
    ) -> None:
        self._client = client
        self._prefix = prefix
        self.replica_id = replica_id
        self.heartbeat_s = heartbeat_s
        self.dead_after_s = dead_after_s
        self.stats_ttl_s = stats_ttl_s
        self.live = 1
        """Replicas alive at the last heartbeat Redis answered (this one included)."""
        self.redis_up = True

    @property
    def _members(self) -> str:
        return f"{self._prefix}:replicas"

    def _stats_key(self, replica: str) -> str:
        return f"{self._prefix}:stats:{replica}"

    async def beat(self, stats: Stats | None = None) -> None:
        """One heartbeat (and stats publication); raises RedisError when Redis is away."""
        seconds, micros = await self._client.time()
        now = seconds + micros / 1e6
        pipe = self._client.pipeline(transaction=True)
        pipe.zadd(self._members, {self.replica_id: now})
        pipe.zremrangebyscore(self._members, "-inf", now - self.dead_after_s)
        pipe.zcard(self._members)
        if stats is not None:
            record = {"replica": self.replica_id, "at": now, "rows": stats.rows()}
            pipe.set(self._stats_key(self.replica_id), json.dumps(record), ex=int(self.stats_ttl_s))
        replies = await pipe.execute()
        self.live = max(1, int(replies[2]))

    async def run(self, stats: Stats | None = None) -> None:
        """Heartbeat forever; notes whether Redis answers (logged once per change)."""
        while True:
            try:
                await self.beat(stats)
                if not self.redis_up:
                    log.warning("redis is back", extra={"replicas": self.live})
                self.redis_up = True
            except RedisError as e:
                if self.redis_up:
                    log.warning("redis unreachable", extra={"error": str(e)})
                self.redis_up = False
            await asyncio.sleep(self.heartbeat_s)

    async def replica_stats(self) -> list[ReplicaStats]:
        """Every replica's last published stats (this one's as of its last heartbeat)."""
        keys = [k async for k in self._client.scan_iter(match=self._stats_key("*"), count=500)]
        if not keys:
            return []
        out = []
        for raw in await self._client.mget(keys):
            if raw is None:
                continue  # expired between the scan and the read
            try:
                record = json.loads(raw)
                out.append(
                    ReplicaStats(str(record["replica"]), float(record["at"]), list(record["rows"]))
                )
            except (ValueError, KeyError, TypeError):
                log.warning("unreadable replica stats skipped")
        return sorted(out, key=lambda r: r.replica)

    async def close(self) -> None:
        """Leave the membership at once, so the others' shares grow back without waiting
        for this one to be declared dead."""
        with contextlib.suppress(RedisError):
            await self._client.zrem(self._members, self.replica_id)
