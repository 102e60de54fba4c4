"""Entries in diskcache (SQLite + files): durable across restarts and crash-safe per write.

Layout: ``e:<id>`` holds the entry, ``x:<exact key>`` the id of the entry answering that
exact request. Both carry the entry's expiry so diskcache drops them together; readers
still check expiry themselves, since diskcache only culls on writes and sweeps.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import diskcache
from diskcache.core import MODE_RAW

from cache_service.backends.key_filter import KeyFilter
from cache_service.backends.records import from_record, to_record
from cache_service.heap import give_back
from cache_service.protocols import Entry

_ENTRY = "e:"
_EXACT = "x:"
# Every "e:..." key sorts in ["e:", "e;"): ";" is the character after ":".
_KEY_RANGE = (_ENTRY, "e;")
_EXACT_RANGE = (_EXACT, "x;")
RELOAD_SLACK = 65_536
"""Keys the exact-key filter may hold beyond twice the store's before a sweep reloads it: a
small store is not listed again for a few stale keys."""
# The entry filed under an exact key, in one statement: both rows unexpired, as diskcache's
# own `get` reads them (`raw = 1`: a str key; the id is a short str, kept in the row).
_ENTRY_BY_EXACT_KEY = (
    "SELECT e.mode, e.filename, e.value FROM Cache AS x"
    " JOIN Cache AS e ON e.key = ? || x.value AND e.raw = 1"
    " WHERE x.key = ? AND x.raw = 1 AND x.mode = ?"
    " AND (x.expire_time IS NULL OR x.expire_time > ?)"
    " AND (e.expire_time IS NULL OR e.expire_time > ?)"
)
# Unexpired entries in table (rowid) order, a chunk per statement. Rows sit in the file
# roughly in the order they were stored, so a cold start reads it front to back; the key
# index's order is random in the file. Reading 1M entries at start (a rebuild without a
# snapshot): a `get` per listed key took ~115 us an entry from a cold page cache, 18 warm;
# this 14 us cold, 9 warm (measured, benchmarks' 1M store). `+key` keeps SQLite off the
# key index, and a chunk per statement holds no read transaction open across the scan.
_ENTRIES_AFTER = (
    "SELECT rowid, mode, filename, value FROM Cache"
    " WHERE rowid > ? AND +key >= ? AND +key < ? AND raw = 1"
    " AND (expire_time IS NULL OR expire_time > ?)"
    " ORDER BY rowid LIMIT ?"
)


class DiskCacheStore:
    def __init__(self, directory: Path, size_limit: int = 6 * 1024**3) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self._cache = diskcache.Cache(
            str(directory),
            size_limit=size_limit,
            eviction_policy="least-recently-stored",
            # Readers must never wait on a long write; SQLite WAL is diskcache's default.
            timeout=10,
        )
        self.keys = KeyFilter()
        """Which exact keys were ever stored (`load_keys` at start): an absent key is
        answered without SQLite."""

    def put(self, entry: Entry, *, now: float | None = None) -> str | None:
        """`now`, on the clock that made the entry, for one stored later than it was made
        (replayed from the entry journal, or re-embedded): diskcache counts a TTL from its
        own write, so the row keeps only what is left of the entry's life. Without it the
        entry is taken to be new (the writer stores it within milliseconds)."""
        ttl = None
        if entry.expires is not None:
            ttl = max(entry.expires - (entry.created if now is None else now), 0.001)
        # One transaction: a crash leaves either both keys or neither. The entry is written
        # first within it, so even a torn write can only leave an entry without its exact
        # key (harmless), never an exact key without its entry.
        with self.keys.adding(entry.exact_key), self._cache.transact():
            old_id = self._cache.get(_EXACT + entry.exact_key)
            self._cache.set(_ENTRY + entry.id, to_record(entry), expire=ttl)
            self._cache.set(_EXACT + entry.exact_key, entry.id, expire=ttl)
            if isinstance(old_id, str) and old_id != entry.id:
                self._cache.delete(_ENTRY + old_id)
                return old_id
        return None

    def get(self, entry_id: str) -> Entry | None:
        record = self._cache.get(_ENTRY + entry_id)
        return None if record is None else from_record(record)

    def get_by_exact_key(self, exact_key: str) -> Entry | None:
        # One query joining the exact key's row to its entry's: two `get`s, two statements
        # and two passes through diskcache's Python, took 21 us a read here, this 13 (an
        # exact hit is ~200 us in the app). The record is decoded as `get` does it.
        if not self.keys.may_hold(exact_key):
            return None
        now = time.time()
        rows = self._cache._sql(
            _ENTRY_BY_EXACT_KEY, (_ENTRY, _EXACT + exact_key, MODE_RAW, now, now)
        ).fetchall()
        if not rows:
            return None
        ((mode, filename, value),) = rows
        try:
            record = self._cache._disk.fetch(mode, filename, value, False)
        except OSError:
            return None  # a large record's file, removed since the query (as `get` does)
        entry = from_record(record)
        return entry if entry.exact_key == exact_key else None

    def delete(self, entry_id: str) -> Entry | None:
        with self._cache.transact():
            record = self._cache.pop(_ENTRY + entry_id, default=None)
            if record is None:
                return None
            entry = from_record(record)
            if self._cache.get(_EXACT + entry.exact_key) == entry_id:
                self._cache.delete(_EXACT + entry.exact_key)
        return entry

    def load_keys(self) -> int:
        """Fill the exact-key filter from one range query (at start, in a thread); returns
        how many keys it listed."""
        self.keys.load(self._exact_keys())
        self._after_listing()
        return len(self.keys)

    def _exact_keys(self) -> Iterator[str]:
        rows = self._cache._sql(
            "SELECT key FROM Cache WHERE key >= ? AND key < ? AND raw = 1", _EXACT_RANGE
        )
        return (key[len(_EXACT) :] for (key,) in rows)

    def _after_listing(self) -> None:
        self._drop_pages()
        # The listing's million key strings left ~100 MB of free heap at a million entries
        # (anonymous RSS 936 -> 1,036 MiB right after), which glibc would otherwise keep.
        give_back()

    def _entry_keys(self) -> list[str]:
        # One indexed range query on diskcache's own table. Its iterkeys() pages 100 keys
        # per query and took 8-11 s at 100k entries (measured), which a periodic sweep and
        # every start would pay.
        rows = self._cache._sql(
            "SELECT key FROM Cache WHERE key >= ? AND key < ? AND raw = 1", _KEY_RANGE
        ).fetchall()
        self._drop_pages()
        return [row[0] for row in rows]

    def _drop_pages(self) -> None:
        # A listing (or a read of every entry) brings every page of the key index into this
        # thread's connection's page cache (diskcache sizes it at 8,192 pages, 32 MiB),
        # which the connection then keeps for good; the OS caches the pages anyway. At a
        # million entries the two listings at start held ~70 MiB this way, 73 B an entry
        # (settled RSS, measured).
        self._cache._sql("PRAGMA shrink_memory")

    def entry_ids(self) -> list[str]:
        """Every entry's id, in one query over the keys, reading no entry (expired ones not
        yet culled included): what an index snapshot is reconciled against at start."""
        return [key[len(_ENTRY) :] for key in self._entry_keys()]

    def iter_entries(self, chunk: int = 2048) -> Iterator[Entry]:
        """Every unexpired entry, read `chunk` at a time in the order they were stored. An
        entry stored during the scan may or may not be listed; one deleted is not, unless
        its chunk was read already (as with any listing followed by reads)."""
        after = 0
        while True:
            rows = self._cache._sql(
                _ENTRIES_AFTER, (after, *_KEY_RANGE, time.time(), chunk)
            ).fetchall()
            for _, mode, filename, value in rows:
                try:
                    record = self._cache._disk.fetch(mode, filename, value, False)
                except OSError:
                    continue  # a large record's file, removed since the query
                yield from_record(record)
            if len(rows) < chunk:
                self._drop_pages()
                return
            after = rows[-1][0]

    def cull(self) -> int:
        """Let diskcache drop what it knows has expired, and the exact-key filter forget
        the keys of entries gone, once they are most of it; returns how many keys went."""
        culled = int(self._cache.expire())
        # A listing costs ~3 s at a million keys (in the sweep's thread), so it waits until
        # the filter holds the store's keys twice over: it then runs at most once per
        # store's worth of entries gone, and the filter stays within twice the store. The
        # store's count (one query) is only read once the filter is past the slack.
        held = len(self.keys)
        if self.keys.loaded and held > RELOAD_SLACK and held > 2 * len(self) + RELOAD_SLACK:
            self.keys.reload(self._exact_keys)
            self._after_listing()
        return culled

    def __contains__(self, entry_id: str) -> bool:
        return (_ENTRY + entry_id) in self._cache

    def __len__(self) -> int:
        """Entries on disk, expired ones not yet culled included."""
        row = self._cache._sql(
            "SELECT COUNT(*) FROM Cache WHERE key >= ? AND key < ? AND raw = 1", _KEY_RANGE
        ).fetchone()
        return int(row[0])

    def volume(self) -> int:
        return int(self._cache.volume())

    def close(self) -> None:
        self._cache.close()
