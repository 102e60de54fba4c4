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
        self._renewer = asyncio.get_running_loop().create_task(self._renew_forever())

    async def _renew_forever(self) -> None:
        f = self._flights
        while True:
            await asyncio.sleep(f.lease_s / 3)
            try:
                kept = await f._renew(keys=[f.lock_key(self.key)], args=[self.token, f.lease_ms])
            except RedisError:
                continue  # Redis away: the lock may lapse; a follower then calls too
            if not kept:
                return  # taken over after a lapse: nothing left to renew

    async def release(self) -> None:
        self._renewer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._renewer
        f = self._flights
        with contextlib.suppress(RedisError):  # else the lease runs out on its own
            await f._release(keys=[f.lock_key(self.key)], args=[self.token, f.channel(self.key)])


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
            return FlightLease(self, key, token)
        return None

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
                async for message in pubsub.listen():
                    if message.get("type") != "pmessage":
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
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
