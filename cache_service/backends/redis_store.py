"""Entries in Redis, shared by every replica, with a stream of index events.

Layout (every key carries the hash tag ``{<prefix>}``, so each script's keys sit in one
slot and the layout also runs on a Redis Cluster):

- ``{p}:e:<id>``: the entry, a HASH. ``r`` is the record (records.py) as JSON without its
  vector, ``v`` the vector as raw little-endian float32 bytes (absent without one), and
  ``x``/``s``/``e`` the exact key, scope and expiry. A HASH rather than one serialized value
  because the scripts must read the exact key, scope and vector (for the exact-key check
  and the stream events) and Lua should not parse JSON or carry bytes through it.
- ``{p}:x:<exact key>``: the id answering that exact request.
- ``{p}:ids``: a ZSET of entry ids scored by expiry (ms on Redis's clock, +inf for none):
  ``len()`` counts the live ones with one ZCOUNT and ``iter_entries()`` walks it with
  ZSCAN, instead of SCANning a keyspace that may also hold quota keys and 2 keys per
  entry. Members of entries Redis expired are pruned by the next put.
- ``{p}:events``: a stream of ``add``/``del`` events (id, scope, expiry, vector, origin)
  from which each replica's FAISS index follows the store (cache/index_feed.py); trimmed
  to about ``maxlen`` events, beyond which a replica that falls behind re-bootstraps.

Entries and exact keys expire in Redis after the entry's lifetime (``expires - created``,
counted from the put, as DiskCacheStore does), so ``cull()`` has nothing to do.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, ParamSpec, TypeVar, cast

import numpy as np
import redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.retry import Retry

from cache_service.backends.records import from_record, to_record
from cache_service.errors import StoreUnavailable
from cache_service.protocols import Entry, Vector

P = ParamSpec("P")
R = TypeVar("R")

DEFAULT_MAXLEN = 100_000
"""Stream events kept (about 1.8 KB each with a 384-d vector, so ~180 MB): enough for a
replica to catch up after minutes away at hundreds of stores a second; longer outages end
in a re-bootstrap, which is cheap (20k entries in about a second) compared with the memory
a 1M-event stream would hold for ever."""

ITER_BATCH = 512
"""Entries fetched per round trip by iter_entries()."""

_PUT = """
local id, xk, scope = ARGV[1], ARGV[2], ARGV[3]
local ttl = tonumber(ARGV[5])
local pre, origin, maxlen = ARGV[9], ARGV[10], ARGV[11]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
-- Ids of entries Redis has already expired leave the count here, a few per put.
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
-- The same id re-put under another exact key: that key must stop naming it.
local prev = redis.call('HGET', KEYS[1], 'x')
if prev and prev ~= xk and redis.call('GET', pre .. 'x:' .. prev) == id then
  redis.call('DEL', pre .. 'x:' .. prev)
end
local old = redis.call('GET', KEYS[2])
if old == id then old = false end
if old then
  local okey = pre .. 'e:' .. old
  local oscope = redis.call('HGET', okey, 's') or scope
  redis.call('DEL', okey)
  redis.call('ZREM', KEYS[3], old)
  redis.call('XADD', KEYS[4], 'MAXLEN', '~', maxlen, '*',
    'op', 'del', 'id', old, 'scope', oscope, 'origin', origin)
end
redis.call('DEL', KEYS[1])
if ARGV[8] == '1' then
  redis.call('HSET', KEYS[1], 'r', ARGV[6], 'x', xk, 's', scope, 'e', ARGV[4], 'v', ARGV[7])
else
  redis.call('HSET', KEYS[1], 'r', ARGV[6], 'x', xk, 's', scope, 'e', ARGV[4])
end
if ttl > 0 then
  redis.call('PEXPIRE', KEYS[1], ttl)
  redis.call('SET', KEYS[2], id, 'PX', ttl)
  redis.call('ZADD', KEYS[3], now + ttl, id)
else
  redis.call('SET', KEYS[2], id)
  redis.call('ZADD', KEYS[3], '+inf', id)
end
redis.call('XADD', KEYS[4], 'MAXLEN', '~', maxlen, '*', 'op', 'add', 'id', id,
  'scope', scope, 'exp', ARGV[4], 'vec', ARGV[7], 'origin', origin)
redis.call('PUBLISH', ARGV[12], id)
return old
"""

_DELETE = """
local h = redis.call('HMGET', KEYS[1], 'r', 'v', 'x', 's')
if not h[1] then return false end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
local xkey = ARGV[2] .. 'x:' .. h[3]
if redis.call('GET', xkey) == ARGV[1] then redis.call('DEL', xkey) end
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[4], '*',
  'op', 'del', 'id', ARGV[1], 'scope', h[4], 'origin', ARGV[3])
return {h[1], h[2]}
"""

_GET_EXACT = """
local id = redis.call('GET', KEYS[1])
if not id then return false end
local h = redis.call('HMGET', ARGV[1] .. 'e:' .. id, 'r', 'v', 'x')
if not h[1] or h[3] ~= ARGV[2] then return false end
return {h[1], h[2]}
"""

# Many entries in one command: a pipeline of HMGETs costs redis-py ~25 µs per command to
# pack and parse, the larger part of a bootstrap. Key names are built here, not passed as
# KEYS; they share the script's hash tag, so they sit in its slot even on a Cluster.
_FETCH = """
local out = {}
for i = 2, #ARGV do
  local h = redis.call('HMGET', ARGV[1] .. 'e:' .. ARGV[i], 'r', 'v')
  out[#out + 1] = h[1]
  out[#out + 1] = h[2]
end
return out
"""

_COUNT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('ZCOUNT', KEYS[1], '(' .. now, '+inf')
"""

# The stream's bookkeeping and the events after an id, read atomically so that a trim
# cannot fall between the check and the read. XINFO's fields need Redis 7.0.
_READ = """
if redis.call('EXISTS', KEYS[1]) == 0 then return {false, false, 0, 0, {}} end
local info = redis.call('XINFO', 'STREAM', KEYS[1])
local last, first, added, length = false, false, 0, 0
for i = 1, #info, 2 do
  local k = info[i]
  if k == 'last-generated-id' then last = info[i + 1]
  elseif k == 'recorded-first-entry-id' then first = info[i + 1]
  elseif k == 'entries-added' then added = info[i + 1]
  elseif k == 'length' then length = info[i + 1] end
end
local rows = {}
if ARGV[2] ~= '0' then
  rows = redis.call('XRANGE', KEYS[1], '(' .. ARGV[1], '+', 'COUNT', ARGV[2])
end
return {last, first, added, length, rows}
"""


class StreamTrimmed(Exception):
    """Events after the id a reader resumes from are gone (trimmed away, or the stream
    itself was lost with Redis's data): its index can no longer follow by events alone
    and must be rebuilt from the entries."""


@dataclass(frozen=True, slots=True)
class IndexEvent:
    op: Literal["add", "del", "clear"]
    entry_id: str
    scope: str
    expires: float | None
    vector: Vector | None
    origin: str


def parse_id(event_id: str) -> tuple[int, int]:
    ms, _, seq = event_id.partition("-")
    return int(ms), int(seq or 0)


def _text(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw


def _event(raw: dict[bytes, bytes] | Sequence[bytes]) -> IndexEvent:
    # XREAD's reply comes parsed into a dict; a script's XRANGE, as a flat field/value list.
    fields = raw if isinstance(raw, dict) else dict(zip(raw[::2], raw[1::2], strict=True))
    op = _text(fields[b"op"])
    if op not in ("add", "del", "clear"):
        raise ValueError(f"unknown index event {op!r}")
    exp = fields.get(b"exp", b"")
    vec = fields.get(b"vec", b"")
    return IndexEvent(
        op=op,  # type: ignore[arg-type]  # checked just above
        entry_id=_text(fields.get(b"id", b"")),
        scope=_text(fields.get(b"scope", b"")),
        expires=float(exp) if exp else None,
        vector=np.frombuffer(vec, dtype="<f4").astype(np.float32) if vec else None,
        origin=_text(fields.get(b"origin", b"")),
    )


_DOWN = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)


def _unavailable_when_unreachable(method: Callable[P, R]) -> Callable[P, R]:
    """Redis being away is StoreUnavailable, which the request path fails open on, not
    one of redis-py's exceptions, which the layers above should not need to know."""

    @functools.wraps(method)
    def call(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(*args, **kwargs)
        except _DOWN as exc:
            raise StoreUnavailable(f"the entry store's Redis is unreachable: {exc}") from exc

    return call


def _decode_entry(record: bytes, vector: bytes | None) -> Entry:
    r: dict[str, Any] = json.loads(record)
    r["embedding"] = vector
    return from_record(r)


class RedisEntryStore:
    def __init__(
        self,
        client: redis.Redis,
        *,
        prefix: str = "llmcache",
        origin: str,
        maxlen: int = DEFAULT_MAXLEN,
    ) -> None:
        if client.get_connection_kwargs().get("decode_responses"):
            raise ValueError("RedisEntryStore needs a client with decode_responses=False")
        self._client = client
        self._owns_client = False
        # A blocking read must end before the client's read timeout, which would take an
        # idle stream for a dead Redis: half of it at most.
        timeout = client.get_connection_kwargs().get("socket_timeout")
        self._max_block_ms = None if not timeout else max(1, int(float(timeout) * 500))
        self.prefix = prefix
        self.origin = origin
        self.maxlen = maxlen
        self._pre = "{" + prefix + "}:"
        self._ids = self._pre + "ids"
        self.stream = self._pre + "events"
        self._put = client.register_script(_PUT)
        self._delete = client.register_script(_DELETE)
        self._get_exact = client.register_script(_GET_EXACT)
        self._count = client.register_script(_COUNT)
        self._fetch = client.register_script(_FETCH)
        self._read = client.register_script(_READ)

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        prefix: str = "llmcache",
        origin: str,
        maxlen: int = DEFAULT_MAXLEN,
        timeout_s: float = 2.0,
    ) -> RedisEntryStore:
        """A store with a client of its own, closed by close(). A call waits `timeout_s` at
        most for a reply (blocking reads are shortened to fit); a dropped connection is
        retried twice within about half a second (redis-py's default backs off for up to
        7 s, which a request would wait through when Redis is down)."""
        client = redis.Redis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=Retry(ExponentialWithJitterBackoff(base=0.05, cap=0.5), 2),
        )
        store = cls(client, prefix=prefix, origin=origin, maxlen=maxlen)
        store._owns_client = True
        return store

    def _entry_key(self, entry_id: str) -> str:
        return self._pre + "e:" + entry_id

    def _exact_key(self, exact_key: str) -> str:
        return self._pre + "x:" + exact_key

    def stored_channel(self, exact_key: str) -> str:
        """Where put() announces the id it stored under `exact_key` (for single flight)."""
        return f"{self.prefix}:stored:{exact_key}"

    # --- EntryStore

    @_unavailable_when_unreachable
    def put(self, entry: Entry) -> str | None:
        record = to_record(entry)
        vector: bytes | None = record.pop("embedding")
        ttl_ms = 0
        if entry.expires is not None:
            ttl_ms = max(1, math.ceil((entry.expires - entry.created) * 1000))
        old = self._put(
            keys=[
                self._entry_key(entry.id),
                self._exact_key(entry.exact_key),
                self._ids,
                self.stream,
            ],
            args=[
                entry.id,
                entry.exact_key,
                entry.scope,
                "" if entry.expires is None else repr(entry.expires),
                ttl_ms,
                # ASCII escapes: a lone surrogate in a prompt must not fail the encoding.
                json.dumps(record, separators=(",", ":")),
                vector or b"",
                "0" if vector is None else "1",
                self._pre,
                self.origin,
                self.maxlen,
                self.stored_channel(entry.exact_key),
            ],
        )
        return None if old is None else _text(old)

    @_unavailable_when_unreachable
    def get(self, entry_id: str) -> Entry | None:
        record, vector = cast(
            "list[bytes | None]", self._client.hmget(self._entry_key(entry_id), ["r", "v"])
        )
        return None if record is None else _decode_entry(record, vector)

    @_unavailable_when_unreachable
    def get_by_exact_key(self, exact_key: str) -> Entry | None:
        found = self._get_exact(keys=[self._exact_key(exact_key)], args=[self._pre, exact_key])
        return None if not found else _decode_entry(found[0], found[1])

    @_unavailable_when_unreachable
    def delete(self, entry_id: str) -> Entry | None:
        found = self._delete(
            keys=[self._entry_key(entry_id), self._ids, self.stream],
            args=[entry_id, self._pre, self.origin, self.maxlen],
        )
        return None if not found else _decode_entry(found[0], found[1])

    def iter_entries(self) -> Iterator[Entry]:
        """Every entry present from start to end of the walk, once; entries stored or
        deleted meanwhile may or may not appear (ZSCAN's guarantee)."""
        try:
            yield from self._walk()
        except _DOWN as exc:
            raise StoreUnavailable(f"the entry store's Redis is unreachable: {exc}") from exc

    def _walk(self) -> Iterator[Entry]:
        seen: set[bytes] = set()  # ZSCAN may return a member twice while the set rehashes
        cursor = 0
        while True:
            cursor, members = cast(
                "tuple[int, list[tuple[bytes, float]]]",
                self._client.zscan(self._ids, cursor, count=ITER_BATCH),
            )
            ids = [m for m, _ in members if m not in seen]
            seen.update(ids)
            for start in range(0, len(ids), ITER_BATCH):
                chunk = ids[start : start + ITER_BATCH]
                flat = self._fetch(keys=[self._ids], args=[self._pre, *chunk])
                for record, vector in zip(flat[::2], flat[1::2], strict=True):
                    if record is not None:  # expired since the id was listed
                        yield _decode_entry(record, vector)
            if cursor == 0:
                return

    def cull(self) -> int:
        """Nothing to do: Redis expires entries and exact keys itself."""
        return 0

    @_unavailable_when_unreachable
    def __contains__(self, entry_id: str) -> bool:
        return bool(self._client.exists(self._entry_key(entry_id)))

    @_unavailable_when_unreachable
    def missing(self, entry_ids: Sequence[str]) -> set[str]:
        """The ids among `entry_ids` whose entries are gone: ITER_BATCH per round trip."""
        gone: set[str] = set()
        for start in range(0, len(entry_ids), ITER_BATCH):
            chunk = entry_ids[start : start + ITER_BATCH]
            pipe = self._client.pipeline(transaction=False)
            for entry_id in chunk:
                pipe.exists(self._entry_key(entry_id))
            found = pipe.execute()
            gone.update(i for i, there in zip(chunk, found, strict=True) if not there)
        return gone

    @_unavailable_when_unreachable
    def __len__(self) -> int:
        """Live entries: ids whose expiry (Redis's clock) is still ahead, one ZCOUNT. An
        entry an `allkeys-lru` Redis evicted still counts until its expiry."""
        return int(self._count(keys=[self._ids]))

    @_unavailable_when_unreachable
    def volume(self) -> int:
        """Redis's `used_memory`: the whole server's, whatever else it holds. Per-key
        `MEMORY USAGE` would cost a round trip per entry, and a running sum could not see
        what Redis expires or evicts on its own."""
        info = cast("dict[str, Any]", self._client.info("memory"))
        return int(info["used_memory"])

    def close(self) -> None:
        if self._owns_client:
            self._client.close()

    # --- the event stream

    @_unavailable_when_unreachable
    def last_event_id(self) -> str:
        """The id of the latest event ("0-0" if none yet): a reader starting here sees
        every event stored after this call."""
        last = self._read(keys=[self.stream], args=["0-0", 0])[0]
        return "0-0" if not last else _text(last)

    @_unavailable_when_unreachable
    def read_events(
        self, after: str, count: int, block_ms: int | None = None
    ) -> list[tuple[str, IndexEvent]]:
        """Up to `count` events after the id `after`, oldest first; with `block_ms`, waits
        that long for one when there is none yet. Raises StreamTrimmed when events after
        `after` are gone, so the reader rebuilds instead of silently missing them."""
        last, first, added, length, rows = self._read(keys=[self.stream], args=[after, count])
        mark = parse_id(after)
        if last and not first:
            raise RuntimeError("the index feed needs Redis 7.0 or later (XINFO's fields)")
        if not last:
            if mark != (0, 0):
                raise StreamTrimmed(f"the event stream is gone (resuming after {after})")
        elif parse_id(_text(last)) < mark:
            raise StreamTrimmed(f"the event stream restarted below {after}: data was lost")
        elif mark == (0, 0) and int(added) > int(length):
            raise StreamTrimmed("events were trimmed before this reader's first read")
        elif mark != (0, 0) and first and parse_id(_text(first)) > mark:
            # The event at `after` itself is gone, so any after it and before the first
            # one left may be too. (Trimming removes the oldest first, so when only `after`
            # itself went, this rebuilds for nothing: rare, and safe.)
            raise StreamTrimmed(f"events after {after} were trimmed (first left {_text(first)})")
        if block_ms and self._max_block_ms is not None:
            block_ms = min(block_ms, self._max_block_ms)
        if not rows and block_ms:
            # Blocking cannot happen inside a script. Only events stored from now on can
            # arrive here, and a trim never reaches the newest event, so nothing is skipped.
            reply = cast(
                "list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes]]]]]",
                self._client.xread({self.stream: after}, count=count, block=block_ms),
            )
            rows = reply[0][1] if reply else []
        return [(_text(event_id), _event(fields)) for event_id, fields in rows]
