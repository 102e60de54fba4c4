"""Write-ahead journal of entries answered but not yet in the store.

A miss answers as soon as its entry is here, with one ``write`` of its record; the store and
the index take it moments later in a thread (`cache/write_behind.py`). What the kernel
accepted survives a killed process (no fsync: the store's own SQLite commits do not fsync
either, so a power loss costs the same recent entries either way); at start every segment
left is replayed into the store before the index is built from it.

Segments are numbered: the writer closes the one being appended to (`rotate`) before it
stores what that segment holds, and deletes it (`discard`) once stored, so a segment on disk
is always one whose entries may not all be in the store. Each record is framed with its
length and CRC-32: a torn last record (a crash mid-``write``) is skipped on replay, and so is
anything after it in that segment, which no answer was given for.
"""

from __future__ import annotations

import logging
import os
import pickle
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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


class EntryJournal:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        left = self.segments()
        self._seq = int(left[-1].name[len(_PREFIX) : -len(_SUFFIX)]) + 1 if left else 0
        self._fd: int | None = None
        self._path: Path | None = None

    def segments(self) -> list[Path]:
        """The segments on disk, oldest first."""
        found = []
        for p in self.directory.glob(f"{_PREFIX}*{_SUFFIX}"):
            try:
                found.append((int(p.name[len(_PREFIX) : -len(_SUFFIX)]), p))
            except ValueError:
                continue
        return [p for _, p in sorted(found)]

    def append(self, frame: bytes) -> None:
        """One ``write`` of one framed record (O_APPEND); raises OSError if it failed."""
        if self._fd is None:
            # Opened on the first record after a rotation, not at the rotation: a writer
            # that rotates with nothing to store must not leave empty files behind.
            self._path = self.directory / f"{_PREFIX}{self._seq:012d}{_SUFFIX}"
            self._seq += 1
            self._fd = os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        written = os.write(self._fd, frame)
        if written != len(frame):  # a full disk part way: the frame's CRC marks it torn
            raise OSError(f"short write to the entry journal ({written} of {len(frame)} bytes)")

    def rotate(self) -> Path | None:
        """Close the segment being appended to and return it (None: nothing was appended
        since the last rotation); the next record starts a new one."""
        path, fd = self._path, self._fd
        self._path = self._fd = None
        if fd is not None:
            os.close(fd)
        return path

    @staticmethod
    def read(path: Path) -> Iterator[dict[str, Any]]:
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return
        yield from decode(data)

    @staticmethod
    def discard(path: Path) -> None:
        path.unlink(missing_ok=True)

    def close(self) -> None:
        self.rotate()
