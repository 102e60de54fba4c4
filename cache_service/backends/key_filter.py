"""The exact keys a local store holds, in memory: a lookup of a key it never held skips SQLite.

Every new prompt starts with an exact lookup that finds nothing: each miss, and each semantic
lookup of a wording not seen before. At a million entries that read is a descent of a b-tree
whose pages are mostly not in SQLite's cache (and another connection's write empties that
cache in WAL mode): 0.08-0.14 ms in a process of its own, 0.3-0.4 ms as a stage of a miss in
the sidecar, on the event loop (`CacheFront` reads a local store inline). Here the answer
"never held" costs a set lookup and a binary search.

Each key is kept as its 64-bit `hash()` (strings cache theirs; the keys are SHA-256 hex
digests, so the bits are uniform): sorted in a numpy array, 8 bytes an entry, plus a set of
the ones added since the last merge. Keys are never removed: one deleted or expired only
costs the read it would have cost anyway, so the filter can answer "maybe" wrongly but never
"no" (a false "maybe" is one chance in ~2^64 / n). Until it is loaded at start (one query
listing the keys, ~3 s at a million, after the index is ready) it answers "maybe".
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

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

    def add(self, key: str) -> None:
        """Called before the key is written, so there is no moment the store holds a key
        this says it never held."""
        with self._lock:
            self._recent.add(_h(key))
            if len(self._recent) >= _MERGE_AT:
                self._merge(_NONE)

    def load(self, keys: Iterable[str]) -> None:
        """Every key the store held when it was listed (keys added meanwhile are in the
        recent set, so none is missed)."""
        listed = np.fromiter((_h(k) for k in keys), dtype=np.uint64)
        with self._lock:
            self._merge(listed)
            self.loaded = True

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
        return len(self._sorted) + len(self._recent)
