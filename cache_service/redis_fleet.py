"""What `--redis-url` changes: the pieces a replica shares with the rest of its fleet, built
from one URL, and the background work that keeps them in step.

- entries and exact keys in Redis (`RedisEntryStore`), with each replica's own FAISS index
  fed from the store's event stream (`IndexFeed`);
- quota and budgets in Redis (`RedisLedger`), behind the fail-over policy for when Redis is
  away (`FailoverLedger`);
- single flight across replicas (`FleetFlights`), verdicts (`FeedbackFeed`), membership
  and published stats (`Fleet`).

Each piece has a client of its own: the index feed's blocking reads must not queue behind
the request path's calls, and redis-py's asyncio and sync clients cannot share a pool.
Every client gives up on a call after `redis_timeout_s` and retries a dropped connection
only briefly, so a Redis that is away costs a request half a second, not redis-py's default
backoff of seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff

from cache_service.backends.redis_store import RedisEntryStore
from cache_service.cache.feedback import FeedbackLearner
from cache_service.cache.feedback_feed import FeedbackFeed
from cache_service.cache.index_feed import IndexFeed
from cache_service.cache.semantic import SemanticCache
from cache_service.cache.served_feed import ServedFeed
from cache_service.fleet import Fleet, default_replica_id
from cache_service.model_identity import ModelIdentity, mismatch
from cache_service.protocols import Clock
from cache_service.proxy.fleet_flight import FleetFlights
from cache_service.quota.failover import FailoverLedger
from cache_service.quota.redis_ledger import RedisLedger
from cache_service.settings import Settings
from cache_service.telemetry.metrics import FleetGauges
from cache_service.telemetry.stats import Stats

log = logging.getLogger("cache_service.fleet")

USE_REFRESH_S = 5.0
"""How often the shared quota use is read, for the share each replica may spend while Redis
is away (`quota/failover.py`)."""


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value or "")


def _client(settings: Settings) -> aioredis.Redis:
    assert settings.redis_url is not None
    client: aioredis.Redis = aioredis.Redis.from_url(
        settings.redis_url,
        socket_timeout=settings.redis_timeout_s,
        socket_connect_timeout=settings.redis_timeout_s,
        retry=Retry(ExponentialWithJitterBackoff(base=0.05, cap=0.2), 1),
    )
    return client


@dataclass
class RedisFleet:
    replica_id: str
    store: RedisEntryStore
    ledger: FailoverLedger
    redis_ledger: RedisLedger
    flights: FleetFlights
    feedback: FeedbackFeed
    served: ServedFeed
    fleet: Fleet
    prefix: str
    _clients: list[aioredis.Redis] = field(default_factory=list)
    _feed: IndexFeed | None = None

    @classmethod
    def open(cls, settings: Settings, clock: Clock) -> RedisFleet:
        """Clients and pieces; nothing is contacted yet (Redis may be away at start: the
        replica then starts anyway, and its feeds catch up when Redis answers)."""
        assert settings.redis_url is not None
        replica = settings.replica_id or default_replica_id()
        prefix = settings.redis_prefix
        store = RedisEntryStore.from_url(
            settings.redis_url, prefix=prefix, origin=replica, timeout_s=settings.redis_timeout_s
        )
        ledger_client, shared = _client(settings), _client(settings)
        redis_ledger = RedisLedger(
            ledger_client, prefix=prefix, replica_id=replica, lease_s=settings.redis_lease_s
        )
        fleet = Fleet(shared, prefix=prefix, replica_id=replica)
        ledger = FailoverLedger(
            redis_ledger,
            clock,
            policy=settings.redis_down_quota,
            replicas=lambda: fleet.live,
            replica_id=replica,
        )
        return cls(
            replica_id=replica,
            store=store,
            ledger=ledger,
            redis_ledger=redis_ledger,
            flights=FleetFlights(
                shared,
                prefix=prefix,
                channel=store.stored_channel,
                lease_s=settings.redis_lease_s,
            ),
            feedback=FeedbackFeed(
                shared,
                prefix=prefix,
                origin=replica,
                block_ms=max(1, int(settings.redis_timeout_s * 500)),
            ),
            served=ServedFeed(shared, prefix=prefix),
            fleet=fleet,
            prefix=prefix,
            _clients=[shared],
        )

    async def claim_model(self, configured: ModelIdentity) -> None:
        """Record the fleet's model in Redis, or refuse (`ModelMismatch`) a replica whose
        model differs: its vectors would be compared with the fleet's. With Redis away it is
        not checked, and the replica starts, as it does for everything else."""
        client, key = self._clients[0], f"{self.prefix}:model"
        try:
            await client.set(key, configured.to_json(), nx=True)
            raw = await client.get(key)
        except aioredis.RedisError:
            log.warning("the fleet's embedding model not checked (redis unreachable)")
            return
        try:
            recorded = ModelIdentity.parse(json.loads(raw)) if raw is not None else None
        except ValueError:
            recorded = None
        if recorded is None:
            log.warning("the fleet's embedding model record is unreadable", extra={"key": key})
        elif recorded != configured:
            raise mismatch(recorded, configured, f"redis (prefix {self.prefix!r})")

    async def load_feedback(self, learner: FeedbackLearner) -> None:
        """The fleet's verdicts so far (in place of this replica's own file)."""
        try:
            await self.feedback.bootstrap(learner)
        except aioredis.RedisError:
            log.warning("fleet verdicts not loaded (redis unreachable); following from now")

    def tasks(
        self, cache: SemanticCache, learner: FeedbackLearner, stats: Stats
    ) -> list[Coroutine[Any, Any, None]]:
        """The background work: index feed (which also first builds the index), verdicts,
        hits by request id, heartbeat and stats, quota leases, and the use the fail-over
        policy divides."""
        self._feed = IndexFeed(cache, self.store)
        return [
            self.check_redis(),
            self._feed.run(),
            self.feedback.run(learner),
            self.served.run(),
            self.fleet.run(stats),
            self.redis_ledger.renew_forever(),
            self._remember_use(),
        ]

    async def _remember_use(self) -> None:
        """Also what brings the shared ledger back after an outage when no miss comes to
        try it (and books what was charged meanwhile): every second while it is away."""
        while True:
            with contextlib.suppress(Exception):
                await self.ledger.remember_use()
            down = self.ledger.down_since is not None
            await asyncio.sleep(self.ledger.retry_s if down else USE_REFRESH_S)

    def gauges(self, store_unavailable: int) -> FleetGauges:
        feed = self._feed
        return FleetGauges(
            redis_up=1.0 if self.fleet.redis_up else 0.0,
            replicas=self.fleet.live,
            quota_local=0.0 if self.ledger.down_since is None else 1.0,
            booked=self.ledger.booked,
            feed_lag_s=feed.lag_s if feed is not None else 0.0,
            feed_events=feed.applied if feed is not None else 0,
            store_unavailable=store_unavailable,
            flights_led=self.flights.led,
            flights_followed=self.flights.followed,
        )

    async def check_redis(self) -> None:
        """Warn, once at start, about a Redis configured to lose what the fleet relies on.
        Managed Redis may refuse CONFIG: then nothing is said."""
        client = self._clients[0]
        try:
            appendonly = await client.config_get("appendonly")
            policy = await client.config_get("maxmemory-policy")
        except aioredis.RedisError:
            return
        if _text(appendonly.get("appendonly")) != "yes":
            log.warning(
                "redis persistence (appendonly) is off: a Redis restart loses entries and spend"
            )
        value = _text(policy.get("maxmemory-policy"))
        if value and value != "noeviction":
            log.warning(
                "redis may evict keys (maxmemory-policy %s): quota windows could under-count",
                value,
            )

    async def close(self) -> None:
        """After the background tasks are cancelled: leave the membership, close clients.
        Quota holds still open are left to their leases (the crash rule)."""
        if self._feed is not None:
            self._feed.stop()
        await self.flights.close()
        await self.fleet.close()
        await self.redis_ledger.close()
        for client in self._clients:
            await client.aclose()
        await asyncio.to_thread(self.store.close)
