"""Write-ahead journal of entries answered but not yet in the store.

A miss answers as soon as its entry is here, with one ``write`` of its record; the store and
the index take it moments later in a thread (`cache/write_behind.py`). What the kernel
accepted survives a killed process (no fsync: the store's own SQLite commits do not fsync
either, so a power loss costs the same recent entries either way); at start every segment
left is replayed into the store before the index is built from it.

Segments are numbered: the writer swaps the one being appended to for a new one (`swap`)
before it stores what the old one holds, and deletes it (`discard`) once stored, so a segment
on disk is always one whose entries may not all be in the store. Each record is framed with its
length and CRC-32: a torn last record (a crash mid-``write``) is skipped on replay, and so is
anything after it in that segment, which no answer was given for.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import pickle
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cache_service.backends.numbered_files import numbered

log = logging.getLogger(__name__)

_PREFIX = "entries."
_SUFFIX = ".journal"
_FRAME = struct.Struct("<II")  # payload length, CRC-32 of the payload


def encode(record: dict[str, Any]) -> bytes:
    """One framed record. Records are plain types (`backends/records.py`), so pickle here is
    a format, not code: the same one diskcache stores them in."""
    payload = pickle.dumps(record, protocol=pickle.HIGHEST_PROTOCOL)
    return _FRAME.pack(len(payload), zlib.crc32(payload)) + payload


def decode(data: bytes) -> Iterator[dict[str, Any]]:
    """The records of one segment, in order, up to the first torn or corrupt frame."""
    at = 0
    while at + _FRAME.size <= len(data):
        size, crc = _FRAME.unpack_from(data, at)
        payload = data[at + _FRAME.size : at + _FRAME.size + size]
        if len(payload) < size or zlib.crc32(payload) != crc:
            break
        try:
            record = pickle.loads(payload)
        except Exception:
            break
        if not isinstance(record, dict):
            break
        yield record
        at += _FRAME.size + size
    if at < len(data):
        log.warning("skipped a torn entry journal record", extra={"bytes": len(data) - at})


@dataclass(slots=True)
class Segment:
    path: Path
    fd: int
    written: bool = False


class EntryJournal:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        left = numbered(directory, _PREFIX, _SUFFIX)
        first = left[-1][0] + 1 if left else 0
        # Numbers are taken by the event loop (the first append) and the writer (`create`):
        # `next` on a count is one atomic step.
        self._numbers = itertools.count(first)
        self._current: Segment | None = None
        self._abandoned: list[Path] = []

    def segments(self) -> list[Path]:
        """The segments on disk, oldest first."""
        return [p for _, p in numbered(self.directory, _PREFIX, _SUFFIX)]

    def create(self) -> Segment:
        """A new, empty segment for `swap`. Creating the file is most of a rotation's cost
        (~35 us here, against ~3 us to append a record), so the writer does it before it
        takes the lock the event loop appends under."""
        path = self.directory / f"{_PREFIX}{next(self._numbers):012d}{_SUFFIX}"
        return Segment(path, os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644))

    def append(self, frame: bytes) -> None:
        """One ``write`` of one framed record (O_APPEND); raises OSError if it failed."""
        if self._current is None:
            self._current = self.create()  # the first record of this process
        current = self._current
        current.written = True
        try:
            written = os.write(current.fd, frame)
            if written != len(frame):
                raise OSError(f"short write to the entry journal ({written} of {len(frame)} B)")
        except OSError:
            # A full disk part way through: the frame's CRC marks it torn, and a replay stops
            # there, so nothing more goes after it. The records before it are still queued
            # for the store; the segment goes with the next swap's.
            self._current = None
            self._abandoned.append(current.path)
            with contextlib.suppress(OSError):
                os.close(current.fd)
            raise

    def swap(self, new: Segment | None) -> list[Path]:
        """Append to `new` from now on (None: to a segment the next record creates); returns
        the segments closed, whose records the caller stores and then discards."""
        old, self._current = self._current, new
        closed, self._abandoned = self._abandoned, []
        if old is not None:
            os.close(old.fd)
            closed.append(old.path)
        return closed

    @staticmethod
    def read(path: Path) -> Iterator[dict[str, Any]]:
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return
        yield from decode(data)

    @staticmethod
    def discard(path: Path) -> None:
        try:
            path.unlink(missing_ok=True)
        except OSError:
            # Left for the next start to replay: its entries are stored already and are
            # stored again (one invalidated meanwhile would come back: hence the log).
            log.exception("entry journal segment not removed", extra={"segment": path.name})

    def close(self) -> None:
        """Close the segment being appended to; one that holds nothing is removed."""
        current, self._current = self._current, None
        if current is not None:
            os.close(current.fd)
            if not current.written:
                current.path.unlink(missing_ok=True)
