"""Write-ahead journal of budget spend between snapshots.

The spend snapshot (a JSON file, fsynced and renamed) is written at most once a second; every
hold and settlement in between is appended here first, one JSON line per event in one
``write`` call. A process that is killed loses nothing the kernel accepted, and a torn last
line (power loss) is skipped on replay. Segments are numbered: a snapshot records the last
segment it covers, so replay after a crash reads only what the snapshot has not counted.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from cache_service.backends.numbered_files import numbered
from cache_service.quota.manager import SpendEvent

log = logging.getLogger(__name__)

_PREFIX = "spend-journal."
_SUFFIX = ".jsonl"


@functools.lru_cache(maxsize=4096)
def _scopes_json(scopes: tuple[tuple[str, str], ...]) -> str:
    # Names come from request headers, so they need JSON escaping; the same few scope
    # tuples recur on every request, so it is done once each.
    return json.dumps(scopes, separators=(",", ":"))


def _encode(e: SpendEvent) -> bytes:
    # Formatted by hand: json.dumps of the whole record was most of the cost of journalling.
    line = f'{{"op":"{e.op}","id":{e.id},"scopes":{_scopes_json(e.scopes)},'
    return f'{line}"usd":{e.usd!r},"tok":{e.tokens},"t":{e.wall!r}}}\n'.encode()


def _decode(line: bytes) -> SpendEvent:
    r = json.loads(line)
    if r["op"] not in ("hold", "settle", "release"):
        raise ValueError(f"unknown op {r['op']!r}")
    scopes = tuple((str(kind), str(name)) for kind, name in r["scopes"])
    # "tok" arrived with per-day token limits: lines journalled before it read as 0 tokens.
    tokens = int(r.get("tok", 0))
    return SpendEvent(r["op"], int(r["id"]), scopes, float(r["usd"]), float(r["t"]), tokens)


class SpendJournal:
    def __init__(self, directory: Path | str) -> None:
        self.directory = Path(directory)
        self._seq = 0
        self._fd: int | None = None
        self._failed = False

    def _path(self, seq: int) -> Path:
        return self.directory / f"{_PREFIX}{seq:012d}{_SUFFIX}"

    def _segments(self) -> list[tuple[int, Path]]:
        return numbered(self.directory, _PREFIX, _SUFFIX)

    def recover(self, after: int) -> tuple[list[SpendEvent], int]:
        """Events in segments numbered above ``after`` (what a snapshot covering ``after``
        has not counted), and the highest segment number seen."""
        events: list[SpendEvent] = []
        last = after
        for seq, path in self._segments():
            last = max(last, seq)
            if seq <= after:
                continue
            events.extend(self._read(path))
        return events, last

    @staticmethod
    def _read(path: Path) -> Iterator[SpendEvent]:
        with open(path, "rb") as f:
            for n, line in enumerate(f, 1):
                try:
                    yield _decode(line)
                except (ValueError, KeyError, TypeError):
                    log.warning("skipped a torn spend journal line", extra={"line": n})

    def start(self, seq: int) -> None:
        """Drop segments below ``seq`` (covered by a snapshot) and append to segment ``seq``."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self.remove_through(seq - 1)
        self._open(seq)

    def _open(self, seq: int) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND
        self._fd, self._seq = os.open(self._path(seq), flags, 0o644), seq

    def append(self, event: SpendEvent) -> None:
        if self._fd is None:
            return
        try:
            os.write(self._fd, _encode(event))
        except OSError:
            # Spend is still counted in memory and in the next snapshot; only a crash before
            # then would lose it. Said once, not per request.
            if not self._failed:
                log.exception("spend journal write failed", extra={"seq": self._seq})
            self._failed = True
        else:
            self._failed = False

    def rotate(self) -> int:
        """Start a new segment; returns the number of the one closed, which a snapshot taken
        now covers."""
        closed = self._seq
        self.close()
        self._open(closed + 1)
        return closed

    def remove_through(self, seq: int) -> None:
        for n, path in self._segments():
            if n <= seq:
                path.unlink(missing_ok=True)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
