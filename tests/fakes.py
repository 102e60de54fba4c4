"""Fakes for the protocol seams only: a clock to move and a cheap embedder."""

from __future__ import annotations

import asyncio
import hashlib
import re
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cache_service.protocols import Vector


class FakeClock:
    """Wall and monotonic time that move only when a test says so."""

    def __init__(self, wall: float = 1_795_000_000.0, mono: float = 1000.0) -> None:
        self.wall = wall
        self.mono = mono
        self.slept: list[float] = []

    def now(self) -> float:
        return self.wall

    def monotonic(self) -> float:
        return self.mono

    def advance(self, seconds: float) -> None:
        self.wall += seconds
        self.mono += seconds

    async def sleep(self, seconds: float) -> None:
        """A wait (retry backoff) moves the clock instead of taking real time."""
        self.slept.append(seconds)
        self.advance(seconds)
        await asyncio.sleep(0)


class HashingEmbedder:
    """Bag of lower-cased words hashed into 384 signed dimensions: texts with the same
    words embed identically, texts sharing most words score high, unrelated texts near 0.
    Stands in for MiniLM where a test is about plumbing, not about meaning."""

    dim = 384

    def __init__(self) -> None:
        self.calls = 0

    def embed(self, texts: Sequence[str]) -> Vector:
        self.calls += 1
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in re.findall(r"\w+", text.lower()):
                h = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest(), "big")
                out[row, h % self.dim] += 1.0 if (h >> 32) & 1 else -1.0
            norm = np.linalg.norm(out[row])
            if norm:
                out[row] /= norm
        return out


class FakePairScorer:
    """A verifier model whose score for a pair is whatever `judge(stored, new)` says;
    records every batch it was asked to score."""

    def __init__(
        self,
        judge: Callable[[str, str], float] = lambda stored, new: 1.0,
        *,
        threshold: float = 0.5,
        floor: float = 0.5,
    ) -> None:
        self.judge = judge
        self.batches: list[list[tuple[str, str]]] = []
        self._manifest: dict[str, Any] = {
            "name": "fake",
            "threshold": threshold,
            "floor": floor,
            "calibration": [],
        }

    @property
    def manifest(self) -> dict[str, Any]:
        return self._manifest

    @property
    def pairs(self) -> list[tuple[str, str]]:
        return [pair for batch in self.batches for pair in batch]

    def score(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        self.batches.append(list(pairs))
        return [self.judge(stored, new) for stored, new in pairs]


def recording_upstream(seen: list[Any], api_key: str | None = None) -> Any:
    """A real `HttpUpstream` over a mock transport that records every request in `seen` and
    answers a streamed JSON list, as a real upstream's relayed body arrives."""
    import httpx

    from cache_service.backends.upstream import HttpUpstream

    class Body(httpx.AsyncByteStream):
        async def __aiter__(self) -> Any:
            yield b'{"object": "list", "data": []}'

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, headers={"content-type": "application/json"}, stream=Body())

    return HttpUpstream(
        "http://up/v1", api_key=api_key, transport=httpx.MockTransport(handler), timeout_s=5
    )


def write_old_outcome_log(path: Path) -> None:
    """An outcome log as written before `rejected_by` and `entry_id` were recorded, with one
    miss in it: what a log from an older version looks like to today's readers."""
    conn = sqlite3.connect(path)
    conn.executescript(
        """CREATE TABLE outcomes (id INTEGER PRIMARY KEY, time REAL NOT NULL,
        request_id TEXT NOT NULL, namespace TEXT NOT NULL, project TEXT NOT NULL,
        model TEXT NOT NULL, outcome TEXT NOT NULL, similarity REAL, best_rejected REAL,
        prompt_tokens INTEGER NOT NULL, completion_tokens INTEGER NOT NULL,
        dollars_saved REAL NOT NULL, dollars_spent REAL NOT NULL, latency_ms REAL NOT NULL,
        stages TEXT NOT NULL, upstream_status INTEGER, embed_timeout INTEGER NOT NULL,
        prompt TEXT);
        INSERT INTO outcomes VALUES (1, 5.0, 'r1', 'ns', 'default', 'm', 'miss', NULL, NULL,
        3, 4, 0, 0.01, 2.0, '{}', 200, 0, NULL);"""
    )
    conn.commit()
    conn.close()
