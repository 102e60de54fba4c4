"""Every entry the cache holds, by scope, with its expiry: what the sweep and index snapshots
need without reading the store.

Kept in an `IdTable` (a scope is a numbered space, the expiry a float64 column, NaN for
none) rather than a dict per scope: with the index's two id maps, those dicts held ~300 B an
entry at a million (id strings, ints, floats, slots); this table and the index's hold ~104
(54 + 46 MiB measured at 1,004,700 entries).

Not thread-safe: SemanticCache holds its lock around it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence

import numpy as np

from cache_service.id_table import IdTable, distinct

Expiry = float | None


def _expiries(values: Iterable[Expiry]) -> np.ndarray:
    return np.array([np.nan if e is None else e for e in values], dtype=np.float64)


def _expiry(value: float) -> Expiry:
    return None if math.isnan(value) else value  # np.isnan of a float: ~20 times slower


class Tracked:
    def __init__(self) -> None:
        self._table = IdTable({"expires": (np.float64, np.nan)})
        # Scope name <-> space number, and each space's size: a scope's number goes with
        # its last entry, so scopes that come and go do not pile up.
        self._numbers: dict[str, int] = {}
        self._names: dict[int, str] = {}
        self._sizes: dict[int, int] = {}
        self._numbered = 0

    def __len__(self) -> int:
        return len(self._table)

    def add(self, scope: str, entry_ids: Sequence[str], expires: Sequence[Expiry]) -> None:
        """Track entries of one scope; an id tracked already takes the new expiry (the last,
        should an id repeat)."""
        if len(entry_ids) != len(expires):
            raise ValueError(f"{len(entry_ids)} ids, {len(expires)} expiries")
        if not entry_ids:
            return
        no = self._numbers.get(scope)
        if no is None:
            self._numbered += 1
            no = self._numbers[scope] = self._numbered
            self._names[no] = scope
            self._sizes[no] = 0
        rows, filed = self._table.file(entry_ids, no)
        self._sizes[no] += int(filed.sum())
        if len(distinct(rows)) < len(rows):  # rare: an id repeats, and the last expiry wins
            latest = dict(zip(rows.tolist(), expires, strict=True))
            rows = np.fromiter(latest, dtype=np.int64, count=len(latest))
            expires = list(latest.values())
        self._table.column("expires")[rows] = _expiries(expires)

    def remove(self, scope: str, entry_ids: Sequence[str]) -> None:
        """Stop tracking those of `entry_ids` the scope has."""
        no = self._numbers.get(scope)
        if no is None or not entry_ids:
            return
        rows = self._table.rows(entry_ids, no)
        rows = distinct(rows[rows >= 0])
        if not len(rows):
            return
        self._table.remove(rows)
        self._sizes[no] -= len(rows)
        if not self._sizes[no]:
            del self._numbers[scope], self._names[no], self._sizes[no]

    def expired(self, now: float) -> list[tuple[str, str]]:
        """(id, scope) of every entry expired at `now`."""
        expires = self._table.column("expires")
        rows = np.flatnonzero(expires <= now)  # NaN, no expiry (or a free row): never
        return self._pairs(rows)

    def pairs(self) -> list[tuple[str, str]]:
        """(id, scope) of every entry."""
        return self._pairs(self._table.live())

    def copy(self) -> dict[str, tuple[str, Expiry]]:
        """entry id -> (scope, expires) for every entry (one of them, for an id tracked in
        two scopes)."""
        return {
            entry_id: (scope, expires)
            for scope, entry_id, expires in self._rows(self._table.live())
        }

    def by_scope(self) -> dict[str, dict[str, Expiry]]:
        """scope -> entry id -> expires for every entry."""
        out: dict[str, dict[str, Expiry]] = {}
        for scope, entry_id, expires in self._rows(self._table.live()):
            out.setdefault(scope, {})[entry_id] = expires
        return out

    def _rows(self, rows: np.ndarray) -> Iterator[tuple[str, str, Expiry]]:
        expires = self._table.column("expires")[rows].tolist()
        for (entry_id, scope), e in zip(self._pairs(rows), expires, strict=True):
            yield scope, entry_id, _expiry(e)

    def _pairs(self, rows: np.ndarray) -> list[tuple[str, str]]:
        names = self._names
        spaces = self._table.column("space")[rows].tolist()
        return [
            (entry_id, names[no])
            for entry_id, no in zip(self._table.keys(rows), spaces, strict=True)
        ]
