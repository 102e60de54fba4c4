"""The exact keys a local store holds, in memory: a lookup of a key it never held skips SQLite.

Every new prompt starts with an exact lookup that finds nothing: each miss, and each semantic
lookup of a wording not seen before. At a million entries that read is a descent of a b-tree
whose pages are mostly not in SQLite's cache (and another connection's write empties that
cache in WAL mode): 0.08-0.14 ms in a process of its own, 0.3-0.4 ms as a stage of a miss in
the sidecar, on the event loop (`CacheFront` reads a local store inline). Here the answer
"never held" costs a set lookup and a binary search.

Each key is kept as its 64-bit `hash()` (strings cache theirs; the keys are SHA-256 hex
digests, so the bits are uniform): sorted in a numpy array, 8 bytes an entry, plus a set of
the ones added since the last merge. A key deleted or expired stays: it only costs the read
it would have cost anyway, so the filter can answer "maybe" wrongly but never "no" (a false
"maybe" is one chance in ~2^64 / n). Until it is loaded at start (one query listing the keys,
~3 s at a million, after the index is ready) it answers "maybe".

Kept forever, the keys of expired entries would grow the filter without bound in a sidecar
that runs for months under TTL churn (8 bytes a key stored, and each merge sorts them all):
`reload` replaces the keys with a new listing, which the store's sweep runs once the filter
holds twice the keys the store does. A key must not be lost to it while its write is under
way: keys added once the reload began are kept whatever the listing says, and the listing
starts only after the writes begun before have ended (`adding` counts them per epoch).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

import numpy as np

from cache_service.id_table import distinct

_MERGE_AT = 65_536
"""Recent keys that are merged into the sorted array: a set of them is ~4 MB, and a merge
(one sorted union, ~10 ms at a million) runs once per that many stores."""


_NONE = np.empty(0, dtype=np.uint64)


def _h(key: str) -> int:
    return hash(key) & 0xFFFF_FFFF_FFFF_FFFF


class KeyFilter:
    def __init__(self) -> None:
        self._sorted = np.empty(0, dtype=np.uint64)
        self._recent: set[int] = set()
        self._lock = threading.Lock()
        self.loaded = False
        self._since: set[int] | None = None
        """Keys added since a reload began (None when none is under way)."""
        self._epoch = 0
        self._writing = [0, 0]
        """Writes under way, by the epoch they began in: a reload flips the epoch and waits
        for the old one's count to reach zero."""
        self._writes_ended = threading.Condition(self._lock)
        self._reloading = threading.Lock()

    @contextmanager
    def adding(self, key: str) -> Iterator[None]:
        """Around the store's write of `key`: the key is in the filter before the write
        begins, so there is no moment the store holds a key this says it never held."""
        with self._lock:
            epoch = self._epoch
            self._writing[epoch] += 1
            self._recent.add(h := _h(key))
            if self._since is not None:
                self._since.add(h)
            if len(self._recent) >= _MERGE_AT:
                self._merge(_NONE)
        try:
            yield
        finally:
            with self._lock:
                self._writing[epoch] -= 1
                if not self._writing[epoch]:
                    self._writes_ended.notify_all()

    def load(self, keys: Iterable[str]) -> None:
        """Every key the store held when it was listed (keys added meanwhile are in the
        recent set, so none is missed)."""
        listed = np.fromiter((_h(k) for k in keys), dtype=np.uint64)
        with self._lock:
            self._merge(listed)
            self.loaded = True

    def reload(self, list_keys: Callable[[], Iterable[str]]) -> None:
        """Forget every key but those `list_keys()` lists and those added meanwhile. The
        listing must see every write that ended before it was called."""
        with self._reloading:
            with self._lock:
                ended = self._epoch
                self._epoch ^= 1
                self._since = set()
                self._writes_ended.wait_for(lambda: self._writing[ended] == 0)
            try:
                listed = np.fromiter((_h(k) for k in list_keys()), dtype=np.uint64)
            except BaseException:
                with self._lock:
                    self._since = None
                raise
            with self._lock:
                since, self._since = self._since, None
                kept = np.fromiter(since, dtype=np.uint64, count=len(since))
                # As in a merge, the new array is in place before the recent set empties;
                # a key in that set is in the listing, or was added since and is kept.
                self._sorted = distinct(np.concatenate((listed, kept)))
                self._recent = set()

    def _merge(self, listed: np.ndarray) -> None:
        recent = np.fromiter(self._recent, dtype=np.uint64, count=len(self._recent))
        # Readers look in the recent set, then in the array: the new array is in place
        # before the set empties, so every key is in one of the two they read.
        self._sorted = distinct(np.concatenate((self._sorted, listed, recent)))
        self._recent = set()

    def may_hold(self, key: str) -> bool:
        if not self.loaded:
            return True
        h = _h(key)
        if h in self._recent:
            return True
        keys = self._sorted
        i = int(keys.searchsorted(np.uint64(h)))
        return i < len(keys) and int(keys[i]) == h

    def __len__(self) -> int:
        """Keys held: the recent ones may be counted twice, until they are merged."""
        return len(self._sorted) + len(self._recent)
