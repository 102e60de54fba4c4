"""Entry ids and the small integers they are filed under, kept in numpy arrays.

A key is an id within a numbered space (a scope): the same id may be filed in two spaces,
under two rows.

At a million entries the Python objects of an id map cost more than the vectors: a 32-hex
id as a `str` is ~80 B, its int label ~30 B and each dict slot it sits in ~60 B, and the
index's two maps and the sweep's tracking held ~300 B an entry that way (measured). Here a
row costs its id's bytes (`S<width>`; an entry id's 32 hex digits are kept as the 16 bytes
they spell), an 8-byte hash, a used and a packed flag, its space, its columns, and ~10-17 B
of open-addressing slots: ~48 B for an entry id.

Rows are dense and reused once freed, so they serve directly as FAISS labels. Lookups
hash with Python's own `hash(str)` (cached on the string; random per process, which is
fine: nothing here is persisted) and probe linearly; removals leave tombstones, swept by
a rehash. Bulk operations run in numpy rounds, one probe step for all keys at a time, so
a snapshot's million ids go in without a Python loop per id.

Not thread-safe: its owners hold their own locks around it. Arrays grow by doubling and
never shrink (like a dict), so a table keeps the size of its largest fill.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

Rows = npt.NDArray[np.int64]

_EMPTY = -1
_TOMB = -2
_MIN_SLOTS = 16
_M64 = 2**64 - 1


def _offset(space: int) -> int:
    """What a space adds to its keys' hashes (mod 2**64), so that one id in many spaces
    does not pile up in one run of slots."""
    return (space * 0x9E3779B97F4A7C15) & _M64


def _hash(key: str, space: int) -> int:
    mixed = (hash(key) + _offset(space)) & _M64
    return mixed - 2**64 if mixed >= 2**63 else mixed


def _hashes(keys: Sequence[str], space: int) -> npt.NDArray[np.int64]:
    raw = np.fromiter(map(hash, keys), dtype=np.int64, count=len(keys))
    return (raw.view(np.uint64) + np.uint64(_offset(space))).view(np.int64)


def distinct(values: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """The sorted distinct values (np.unique without return_index hashes, ~10 times slower
    at a million int64 under numpy 2.4)."""
    ordered = np.sort(values)
    keep = np.ones(len(ordered), dtype=bool)
    keep[1:] = ordered[1:] != ordered[:-1]
    return ordered[keep]


_PACKED = 16
"""Bytes of a packed id: 32 lowercase hex digits, the form of the cache's entry ids
(`uuid4().hex`), are kept as the 16 bytes they spell, half of their text; a flag column
tells a packed id from another id of the same bytes."""


def _unhex(text: str) -> bytes | None:
    """The bytes lowercase hex `text` spells, else None. fromhex also takes upper case and
    spaces, which its hex() would not give back; it and the comparison are C passes, ~3
    times faster than a regular expression over a million ids' text."""
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        return None
    return raw if raw.hex() == text else None


def _kept(key: str) -> tuple[bytes, bool]:
    """The bytes one key is kept as, and whether they are packed."""
    raw = _unhex(key) if len(key) == 2 * _PACKED else None
    return (key.encode(), False) if raw is None else (raw, True)


Encoded = tuple[npt.NDArray[Any], npt.NDArray[np.bool_]]


def _encoded(keys: Sequence[str], *, check: bool = True) -> Encoded:
    """The bytes each key is kept as, and which of them are packed (`_PACKED`)."""
    joined = "".join(keys)
    # The usual case, entry ids alone, in a few C passes.
    if (
        len(joined) == 2 * _PACKED * len(keys)
        and (raw := _unhex(joined)) is not None
        and set(map(len, keys)) <= {2 * _PACKED}
    ):
        return np.frombuffer(raw, dtype=f"S{_PACKED}"), np.ones(len(keys), dtype=bool)
    kept = list(map(_kept, keys))
    # numpy's fixed-width bytes drop trailing NULs: such a key would come back changed, so
    # it is refused for filing (a lookup of one finds nothing: its hash is another key's).
    # A packed id's dropped NULs are put back when it is read: it is always 16 bytes.
    # Checked in C first (a Python test per key is ~0.1 s at a million).
    if check and (not all(keys) or "\x00" in joined):
        for key in keys:
            if not key or key.endswith("\x00"):
                raise ValueError(f"unsupported id {key!r}: empty or ending in NUL")
    flags = np.fromiter((packed for _, packed in kept), dtype=bool, count=len(keys))
    return np.array([raw for raw, _ in kept], dtype=np.bytes_), flags


def _decoded(value: bytes, packed: bool) -> str:
    return value.ljust(_PACKED, b"\0").hex() if packed else value.decode()


_FLAG = "packed"


class IdTable:
    """`columns`: name -> (dtype, value of a free row), beside the built-in "space" (int32,
    -1 when free) and "packed" (bool: whether the row's id is packed, `_PACKED`). A removed
    row's columns go back to that value, so a vectorised filter over `column(name)` never
    matches a free row. Spaces are numbers >= 0."""

    def __init__(self, columns: Mapping[str, tuple[npt.DTypeLike, Any]] | None = None) -> None:
        named = {"space": (np.int32, -1), _FLAG: (np.bool_, False), **(columns or {})}
        self._fills = {name: fill for name, (_, fill) in named.items()}
        self._cols: dict[str, npt.NDArray[Any]] = {
            name: np.full(0, fill, dtype=dtype) for name, (dtype, fill) in named.items()
        }
        self._ids: npt.NDArray[Any] = np.zeros(0, dtype="S1")
        self._hash = np.zeros(0, dtype=np.int64)
        self._used = np.zeros(0, dtype=bool)
        self._high = 0  # rows at or past this have never been used
        self._live = 0
        # Freed rows, to hand out again.
        self._free = np.zeros(0, dtype=np.int64)
        self._nfree = 0
        # Open addressing: a slot holds a row, _EMPTY or _TOMB; rows < 2**31.
        self._slots = np.full(_MIN_SLOTS, _EMPTY, dtype=np.int32)
        self._tombs = 0

    def __len__(self) -> int:
        return self._live

    # --------------------------------------------------------------------------- reads

    def row(self, key: str, space: int) -> int:
        """The row of `key` in `space`, or -1."""
        h = _hash(key, space)
        mask = len(self._slots) - 1
        slot = h & mask
        spaces = self._cols["space"]
        encoded: bytes | None = None
        packed = False
        while True:
            r = int(self._slots[slot])
            if r == _EMPTY:
                return -1
            if r >= 0 and self._hash[r] == h and spaces[r] == space:
                if encoded is None:
                    encoded, packed = _kept(key)
                    # As numpy keeps it: a packed id's trailing NULs dropped.
                    encoded = encoded.rstrip(b"\0") if packed else encoded
                if self._ids[r] == encoded and self._cols[_FLAG][r] == packed:
                    return r
            slot = (slot + 1) & mask

    def rows(self, keys: Sequence[str], space: int) -> Rows:
        """The row of each key in `space`, -1 where absent."""
        n = len(keys)
        if n == 1:
            return np.array([self.row(keys[0], space)], dtype=np.int64)
        if not n or not self._live:
            return np.full(n, -1, dtype=np.int64)
        return self._probe(_hashes(keys, space), _encoded(keys, check=False), space)

    def _probe(self, h: npt.NDArray[np.int64], encoded: Encoded, space: int) -> Rows:
        """rows(), for keys already hashed and encoded."""
        values, packed = encoded
        n = len(h)
        out = np.full(n, -1, dtype=np.int64)
        if not n or not self._live:
            return out
        spaces, flags = self._cols["space"], self._cols[_FLAG]
        mask = len(self._slots) - 1
        slot = h & mask
        todo = np.arange(n)
        while len(todo):
            r = self._slots[slot[todo]].astype(np.int64)
            found = r >= 0
            found[found] = (self._hash[r[found]] == h[todo[found]]) & (spaces[r[found]] == space)
            found[found] = (self._ids[r[found]] == values[todo[found]]) & (
                flags[r[found]] == packed[todo[found]]
            )
            out[todo[found]] = r[found]
            todo = todo[~(found | (r == _EMPTY))]
            slot[todo] = (slot[todo] + 1) & mask
        return out

    def key(self, row: int) -> str:
        return _decoded(bytes(self._ids[row]), bool(self._cols[_FLAG][row]))

    def keys(self, rows: Rows | Sequence[int]) -> list[str]:
        at = np.asarray(rows, dtype=np.int64)
        ids, packed = self._ids[at], self._cols[_FLAG][at]
        if len(at) and packed.all():
            # The usual case, in one pass: the 16 bytes of each, NULs and all, in hex.
            text = ids.view(np.uint8).reshape(len(at), -1)[:, :_PACKED].tobytes().hex()
            return [text[i : i + 2 * _PACKED] for i in range(0, len(text), 2 * _PACKED)]
        return [_decoded(b, p) for b, p in zip(ids.tolist(), packed.tolist(), strict=True)]

    def live(self) -> Rows:
        """Every row in use, ascending."""
        return np.flatnonzero(self._used[: self._high]).astype(np.int64)

    def in_space(self, space: int) -> Rows:
        """Every row of one space, ascending: a pass over the column (~1 ms a million)."""
        return np.flatnonzero(self.column("space") == space).astype(np.int64)

    def column(self, name: str) -> npt.NDArray[Any]:
        """A view of one column over every row ever used (write through it to set values)."""
        return self._cols[name][: self._high]

    # -------------------------------------------------------------------------- writes

    def add(self, keys: Sequence[str], space: int) -> Rows:
        """File keys new to `space` and unique under rows of their own (freed rows first);
        returns them, in order. ValueError if a key repeats or is already there."""
        if not len(keys):
            return np.empty(0, dtype=np.int64)
        h, encoded = self._new(keys, space)
        rows = self._take(len(keys))
        self._file(h, encoded, rows, space)
        return rows

    def file(self, keys: Sequence[str], space: int) -> tuple[Rows, npt.NDArray[np.bool_]]:
        """The row of each key in `space`, filing those not there yet (one lookup for all):
        the rows, and which positions were filed now. Of a key repeated among the new ones,
        the first is filed and the rest share its row."""
        if space < 0:
            raise ValueError("spaces are numbers >= 0")
        # Hashed and encoded once, for the lookup and the filing alike (encoding refuses
        # some ids, which can never have been filed).
        h, encoded = _hashes(keys, space), _encoded(keys)
        if len(keys) == 1:  # a store's single add: row() is ~10 times faster
            rows = np.array([self.row(keys[0], space)], dtype=np.int64)
        else:
            rows = self._probe(h, encoded, space)
        filed = np.zeros(len(keys), dtype=bool)
        absent = np.flatnonzero(rows < 0)
        if not len(absent):
            return rows, filed
        fresh_h = h[absent]
        # Equal keys hash equal (the set, slower, only settles equal hashes).
        if len(distinct(fresh_h)) < len(absent):
            fresh = [keys[i] for i in absent.tolist()]
            if len(set(fresh)) < len(fresh):
                # Rare: the first occurrences are filed, the rest mapped to them.
                first = dict(zip(reversed(fresh), reversed(absent.tolist()), strict=True))
                at = np.array(sorted(first.values()), dtype=np.int64)
                rows[at] = self.add([keys[i] for i in at.tolist()], space)
                filed[at] = True
                for i in absent.tolist():
                    rows[i] = rows[first[keys[i]]]
                return rows, filed
        # Known absent and unique: filed without add()'s checks, which would look them up
        # a second time.
        taken = self._take(len(absent))
        values, packed = encoded
        self._file(fresh_h, (values[absent], packed[absent]), taken, space)
        rows[absent] = taken
        filed[absent] = True
        return rows, filed

    def remove(self, rows: Rows | Sequence[int]) -> None:
        """Free rows in use (each once); their slots become tombstones."""
        at = distinct(np.asarray(rows, dtype=np.int64))
        if not len(at):
            return
        if not self._used[at].all():
            raise ValueError("rows not in use")
        mask = len(self._slots) - 1
        if len(at) == 1:  # plain ints, as in _place
            row = int(at[0])
            one = int(self._hash[row]) & mask
            while self._slots[one] != row:
                one = (one + 1) & mask
            self._slots[one] = _TOMB
        else:
            slot = self._hash[at] & mask
            todo = np.arange(len(at))
            while len(todo):
                hit = self._slots[slot[todo]] == at[todo]
                self._slots[slot[todo[hit]]] = _TOMB
                todo = todo[~hit]
                slot[todo] = (slot[todo] + 1) & mask
        self._tombs += len(at)
        self._live -= len(at)
        self._used[at] = False
        self._ids[at] = b""
        for name, col in self._cols.items():
            col[at] = self._fills[name]
        self._push_free(at)

    # ------------------------------------------------------------------------ internals

    def _take(self, n: int) -> Rows:
        """n free rows, marked used: freed ones first (the stack's top), then fresh ones."""
        reuse = min(n, self._nfree)
        rows = self._free[self._nfree - reuse : self._nfree][::-1].copy()
        self._nfree -= reuse
        if reuse < n:
            fresh = np.arange(self._high, self._high + n - reuse, dtype=np.int64)
            self._grow(self._high + len(fresh))
            self._high += len(fresh)
            rows = np.concatenate((rows, fresh))
        self._used[rows] = True
        return rows

    def _new(self, keys: Sequence[str], space: int) -> tuple[npt.NDArray[np.int64], Encoded]:
        """The hashes and bytes of keys to file, or ValueError unless each is new to the
        space and unique."""
        if space < 0:
            raise ValueError("spaces are numbers >= 0")
        encoded = _encoded(keys)
        h = _hashes(keys, space)
        if len(keys) == 1:
            known = self.row(keys[0], space) >= 0
        else:
            # Equal keys hash equal; equal hashes of different keys are rare enough to
            # settle with a set.
            repeats = len(distinct(h)) != len(keys) and len(set(keys)) != len(keys)
            known = repeats or bool((self._probe(h, encoded, space) >= 0).any())
        if known:
            raise ValueError("ids repeat, or are already filed")
        return h, encoded

    def _file(self, h: npt.NDArray[np.int64], encoded: Encoded, rows: Rows, space: int) -> None:
        """Write new keys at rows already marked used, and into the slots."""
        n = len(rows)
        if not n:
            return
        values, packed = encoded
        if values.dtype.itemsize > self._ids.dtype.itemsize:
            self._ids = self._ids.astype(values.dtype)
        self._ids[rows] = values
        self._cols[_FLAG][rows] = packed
        self._hash[rows] = h
        self._cols["space"][rows] = space
        self._live += n
        if 2 * (self._live + self._tombs) > len(self._slots):
            self._rehash()  # files every live row, these included
        else:
            self._place(h, rows)

    def _place(self, h: npt.NDArray[np.int64], rows: Rows) -> None:
        """Slots for rows whose keys are known to be absent (tombstones are reused)."""
        mask = len(self._slots) - 1
        if len(rows) == 1:  # a store's single add: plain ints, ~10 times faster
            one = int(h[0]) & mask
            while self._slots[one] >= 0:
                one = (one + 1) & mask
            self._tombs -= int(self._slots[one] == _TOMB)
            self._slots[one] = rows[0]
            return
        slot = h & mask
        todo = np.arange(len(rows))
        while len(todo):
            at = slot[todo]
            open_ = self._slots[at] < 0
            cand = todo[open_]
            if len(cand):
                taken, first = np.unique(at[open_], return_index=True)
                won = cand[first]
                self._tombs -= int((self._slots[taken] == _TOMB).sum())
                self._slots[taken] = rows[won]
                placed = np.zeros(len(rows), dtype=bool)
                placed[won] = True
                todo = todo[~placed[todo]]
            slot[todo] = (slot[todo] + 1) & mask

    def _rehash(self) -> None:
        # Load stays at or under a half: at 1/3 after a rehash, probes stay short.
        size = _MIN_SLOTS
        while size < 3 * self._live:
            size *= 2
        self._slots = np.full(size, _EMPTY, dtype=np.int32)
        self._tombs = 0
        live = self.live()
        # Into an empty table, linear probing has a closed form: with the rows sorted by
        # home slot h, row i lands at i + max over j <= i of (h[j] - j). One sort instead
        # of _place's rounds (~0.2 s less at a million).
        home = self._hash[live] & (size - 1)
        order = np.argsort(home, kind="stable")
        step = np.arange(len(order))
        at = np.maximum.accumulate(home[order] - step) + step
        past = at >= size
        self._slots[at[~past]] = live[order[~past]]
        if past.any():
            # Run off the end: they wrap round to the first empty slots, in order, which
            # is where probing from their home slots past the end finds them.
            self._slots[np.flatnonzero(self._slots == _EMPTY)[: int(past.sum())]] = live[
                order[past]
            ]

    def _grow(self, rows: int) -> None:
        if rows <= len(self._used):
            return
        size = max(16, len(self._used))
        while size < rows:
            size *= 2
        extra = size - len(self._used)
        self._ids = np.concatenate([self._ids, np.zeros(extra, dtype=self._ids.dtype)])
        self._hash = np.concatenate([self._hash, np.zeros(extra, dtype=np.int64)])
        self._used = np.concatenate([self._used, np.zeros(extra, dtype=bool)])
        for name, col in self._cols.items():
            self._cols[name] = np.concatenate(
                [col, np.full(extra, self._fills[name], dtype=col.dtype)]
            )

    def _push_free(self, rows: Rows) -> None:
        end = self._nfree + len(rows)
        if end > len(self._free):
            size = max(16, len(self._free))
            while size < end:
                size *= 2
            grown = np.zeros(size, dtype=np.int64)
            grown[: self._nfree] = self._free[: self._nfree]
            self._free = grown
        # Pushed high to low, so rows come back lowest first: the table stays compact.
        self._free[self._nfree : end] = rows[::-1]
        self._nfree = end
