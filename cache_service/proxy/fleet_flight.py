"""Single flight across replicas: identical concurrent misses on different replicas make one
upstream call.

`proxy/singleflight.py` coalesces the misses of one process; this does the same for a fleet
through Redis, in front of it. The first replica to miss a key takes a leased lock on it
(`SET NX PX`) and makes the call; the others wait until the answer is stored (the store
publishes on the key's channel in the same script that writes the entry), the lock is
released, or its lease runs out, and then re-read the exact key. The lock is renewed while
its call lasts, so a slow answer keeps it; a leader that dies stops renewing, and after the
lease a follower takes over.

What is not shared: an answer that is not stored (an error, a refusal) is not handed to
followers, which then make their own call, as they would have without a fleet; and streams
coalesce per replica only.

Every Redis failure here fails open: the request goes on as if it were alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Callable

import redis.asyncio as aioredis
from redis.exceptions import RedisError

log = logging.getLogger("cache_service.fleet")

# Compare-and-delete: only the lock's own holder may release it (a leader slower than its
# lease must not release the lock a successor took), then wake the followers at once.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    redis.call('DEL', KEYS[1])
    redis.call('PUBLISH', ARGV[2], '')
    return 1
end
return 0
"""

# Compare-and-extend, for the same reason.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""


class FlightLease:
    """This replica leads a key's call; `release()` when the answer is stored (or not)."""

    def __init__(self, flights: FleetFlights, key: str, token: str) -> None:
        self._flights = flights
        self.key = key
        self.token = token

    async def release(self) -> None:
        await self._flights._let_go(self)


class FleetFlights:
    """Leased per-key locks and a wake-up channel per key, shared by every replica."""

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        prefix: str,
        channel: Callable[[str], str],
        lease_s: float,
        poll_s: float = 0.25,
    ) -> None:
        """`channel(key)`: where the store announces an entry stored under that exact key
        (the lock's release is announced there too)."""
        self._client = client
        self._prefix = prefix
        self.channel = channel
        self.lease_s = lease_s
        self.lease_ms = max(1, int(lease_s * 1000))
        self.poll_s = poll_s
        self._waiting: dict[str, list[asyncio.Future[None]]] = {}
        self._release = client.register_script(_RELEASE)
        self._renew = client.register_script(_RENEW)
        self._listener: asyncio.Task[None] | None = None
        # Leases held now, renewed together by one task: a task per lease would have to be
        # cancelled at release, and cancelling a task in the middle of a Redis call can
        # leave redis-py's connection handling waiting (seen here: a release that hung).
        self._held: dict[int, FlightLease] = {}
        self._renewer: asyncio.Task[None] | None = None
        self.led = 0
        self.followed = 0

    def lock_key(self, key: str) -> str:
        return f"{self._prefix}:flight:{key}"

    async def acquire(self, key: str) -> FlightLease | None:
        """Lead `key`'s call (a lease), or None when another replica leads it. Raises
        RedisError when Redis cannot say (the caller then goes alone)."""
        token = secrets.token_hex(8)
        if await self._client.set(self.lock_key(key), token, nx=True, px=self.lease_ms):
            self.led += 1
            lease = FlightLease(self, key, token)
            self._held[id(lease)] = lease
            if self._renewer is None or self._renewer.done():
                self._renewer = asyncio.get_running_loop().create_task(self._renew_forever())
            return lease
        return None

    async def _let_go(self, lease: FlightLease) -> None:
        if self._held.pop(id(lease), None) is None:
            return  # released already
        with contextlib.suppress(RedisError):  # else the lease runs out on its own
            await self._release(
                keys=[self.lock_key(lease.key)], args=[lease.token, self.channel(lease.key)]
            )

    async def _renew_forever(self) -> None:
        """Extend every held lease each third of a lease (one round trip for all), until
        none is held. A lease that could not be extended (Redis away, or taken over after
        a lapse) is left alone: a follower may then call too, which costs a duplicate
        call, never a wrong answer."""
        while self._held:
            await asyncio.sleep(self.lease_s / 3)
            held = list(self._held.values())
            if not held:
                return
            try:
                async with self._client.pipeline(transaction=False) as pipe:
                    for lease in held:
                        await self._renew(
                            keys=[self.lock_key(lease.key)],
                            args=[lease.token, self.lease_ms],
                            client=pipe,
                        )
                    await pipe.execute()
            except RedisError:
                continue

    async def wait(self, key: str, timeout_s: float) -> None:
        """Until the leader of `key` stores its answer or lets go of the lock (released, or
        its lease ran out), or `timeout_s`. Returns either way: the caller re-reads the
        cache and, finding nothing, makes its own call."""
        self.followed += 1
        self._ensure_listener()
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(key, []).append(future)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        try:
            while (left := deadline - loop.time()) > 0:
                # The channel wakes us at once; polling the lock is the fallback for a
                # message missed (subscription not yet up, or lost with a connection).
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(future), min(self.poll_s, left))
                    return
                try:
                    if not await self._client.exists(self.lock_key(key)):
                        return
                except RedisError:
                    return
        finally:
            waiters = self._waiting.get(key, [])
            if future in waiters:
                waiters.remove(future)
            if not waiters:
                self._waiting.pop(key, None)

    def _ensure_listener(self) -> None:
        if self._listener is None or self._listener.done():
            self._listener = asyncio.get_running_loop().create_task(self._listen())

    async def _listen(self) -> None:
        """One pattern subscription per replica, dispatching to the local waiters: a
        subscription per waiting request would cost a connection each."""
        pattern = self.channel("*")
        prefix_len = len(pattern) - 1
        backoff = 0.1
        while True:
            pubsub = self._client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.psubscribe(pattern)
                backoff = 0.1
                while True:
                    # A read with a timeout of its own returns None when nothing came;
                    # `listen()` would read under the client's socket timeout and take a
                    # quiet half second for a dead connection.
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if message is None or message.get("type") != "pmessage":
                        continue
                    channel = message["channel"]
                    if isinstance(channel, bytes):
                        channel = channel.decode()
                    for future in self._waiting.pop(channel[prefix_len:], []):
                        if not future.done():
                            future.set_result(None)
            except RedisError:
                # Waiters fall back to polling meanwhile; resubscribe once Redis answers.
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
            finally:
                with contextlib.suppress(RedisError):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def close(self) -> None:
        for task in (self._listener, self._renewer):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
