"""The entries of the latest hits, kept in memory so a repeated request skips the store.

An exact hit read from the local store was ~38 us of the ~195 us an exact hit costs the app
(sampled in process: the joined SQLite query over a ~4 KB record, unpickling it, building the
Entry), the largest single part of it. A repeated prompt is what an exact hit is, so the
latest few hundred of them answer most of the next ones; `HOT_ENTRIES` of them cost a few
MB, whatever the store's size. Measured (`benchmarks/ab.py`, 1k entries, 6 interleaved
rounds against the build without it: `benchmarks/results/ab_hot_entries.json`): exact hit
p50 over HTTP 0.767 → 0.697 ms beside a 0.528 ms round trip to a trivial app (in process,
~190 → ~136 us); semantic hits and misses unchanged within the rounds' spread.

Only for a store this process owns (`app.py`): every removal then passes through
`SemanticCache`, which forgets the entry here too. Removals are counted, and an entry read
from the store is kept only if none happened during the read, so a read that raced a delete
cannot bring the deleted entry back. An entry the store evicted under its size limit stays
answerable from here until the sweep finds it gone; it is a valid answer, not an
invalidated one (invalidations forget what they match here, whether or not the store still
holds it). Expiry is the reader's to check, as for an entry read from the store.

Semantic hits are kept too, and a search looks its candidates up here by id before the
store: at a million entries the store's read of a candidate took ~100 us right after the
model's pass (15 us warm), and a popular answer is what most semantic hits find.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable

from cache_service.protocols import Entry

HOT_ENTRIES = 1024
"""Entries kept: ~4-5 KB each with their vector and answer, ~5 MB in all."""

MAX_ANSWER_CHARS = 16 * 1024
"""A longer answer is read from the store each time, so the memory held stays under ~20 MB
whatever the answers' size; serving such an answer costs more than its read anyway."""


class HotEntries:
    def __init__(self, size: int) -> None:
        self.size = size
        self._by_key: OrderedDict[str, Entry] = OrderedDict()
        self._key_of: dict[str, str] = {}  # entry id -> its exact key
        self._lock = threading.Lock()  # readers on the loop, removals from worker threads
        self._removals = 0

    def get(self, exact_key: str) -> Entry | None:
        if not self.size:
            return None
        with self._lock:
            entry = self._by_key.get(exact_key)
            if entry is not None:
                self._by_key.move_to_end(exact_key)
            return entry

    def get_id(self, entry_id: str) -> Entry | None:
        """The entry held here with this id: a semantic search's candidate."""
        if not self.size:
            return None
        with self._lock:
            key = self._key_of.get(entry_id)
            if key is None:
                return None
            self._by_key.move_to_end(key)
            return self._by_key[key]

    def mark(self) -> int:
        """Taken before reading the store: `keep` refuses the entry read if anything was
        removed since."""
        return self._removals

    def keep(self, entry: Entry, mark: int) -> None:
        if not self.size or len(entry.body) > MAX_ANSWER_CHARS:
            return
        with self._lock:
            if mark != self._removals:
                return  # a removal ran during the read: it may have been this entry
            old = self._by_key.pop(entry.exact_key, None)
            if old is not None:
                del self._key_of[old.id]
            self._by_key[entry.exact_key] = entry
            self._key_of[entry.id] = entry.exact_key
            if len(self._by_key) > self.size:
                _, oldest = self._by_key.popitem(last=False)
                del self._key_of[oldest.id]

    def forget(self, entry_ids: Iterable[str]) -> None:
        """Called for every entry leaving the store (deleted, replaced, expired, evicted)."""
        with self._lock:
            self._drop(entry_ids)

    def forget_where(self, doomed: Callable[[Entry], bool]) -> None:
        """Forget every entry held here that `doomed` picks (an invalidation)."""
        with self._lock:
            self._drop([entry.id for entry in self._by_key.values() if doomed(entry)])

    def _drop(self, entry_ids: Iterable[str]) -> None:
        self._removals += 1
        for entry_id in entry_ids:
            key = self._key_of.pop(entry_id, None)
            if key is not None:
                del self._by_key[key]
