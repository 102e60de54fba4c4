"""One small interface per I/O boundary.

Everything that touches a disk, a model, the network or the wall clock sits behind one of
these, so the pure logic (scope, policy, quota) and the request path can be tested with fakes at
exactly these seams and nowhere else.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from cache_service.pricing import Usage

Vector = npt.NDArray[np.float32]
Halves = npt.NDArray[np.float16]
Vectors = Vector | Halves
"""Rows of vectors to add: float16 where they were kept so (an index snapshot's flat
scopes); an index converts them to what it keeps."""


@runtime_checkable
class Clock(Protocol):
    def now(self) -> float:
        """Wall-clock seconds since the epoch (TTLs, budgets' calendar windows)."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never goes backwards (buckets, deadlines)."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait (retry backoff): a fake clock moves instead, so tests never wait."""
        ...


class SystemClock:
    def now(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class Embedder(Protocol):
    @property
    def dim(self) -> int: ...

    def embed(self, texts: Sequence[str]) -> Vector:
        """Return an (n, dim) float32 array of L2-normalised embeddings. Blocking, CPU-bound."""
        ...


class PairScorer(Protocol):
    """A model reading two prompts jointly (a cross-encoder)."""

    @property
    def manifest(self) -> dict[str, Any]:
        """The model directory's manifest.json (threshold, calibration, floor...)."""
        ...

    def score(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        """P(one answer serves both) per (stored prompt, new prompt) pair, in order.
        Blocking, CPU-bound."""
        ...


@dataclass(frozen=True, slots=True)
class SearchHit:
    entry_id: str
    similarity: float


class VectorIndex(Protocol):
    """Vectors partitioned by scope; a scope's vectors never answer another scope's search."""

    def add(self, scope: str, entry_id: str, vector: Vector) -> None: ...

    def add_many(self, scope: str, entry_ids: Sequence[str], vectors: Vectors) -> None:
        """As add() for each id and row of the (n, dim) array in turn, in one bulk call.
        Raises ValueError, adding nothing, unless vectors has one row per id."""
        ...

    def search(self, scope: str, vector: Vector, k: int) -> list[SearchHit]: ...

    def remove(self, scope: str, entry_ids: Iterable[str]) -> None: ...

    def clear(self) -> None: ...

    def __len__(self) -> int: ...


MAX_TOKENS = 2**31 - 1
"""The most tokens one request or answer may count: far above any model's window, and low
enough that the pricing's floats never overflow."""


def answer_json(response: object) -> str:
    """An answer as a hit serves it: the JSON text of an object, standard JSON only (no NaN
    or infinity, which clients' parsers refuse); "" for an answer that cannot be served."""
    if not isinstance(response, dict):
        return ""
    try:
        return json.dumps(response, allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        return ""


@dataclass(slots=True)
class Entry:
    """One stored answer and everything needed to serve, verify, expire and re-index it."""

    id: str
    scope: str
    exact_key: str
    namespace: str
    model: str
    prompt: str
    embedding: Vector | None
    body: str
    """The answer exactly as a hit serves it (`answer_json`, made once when it is stored):
    a hit answers with this text instead of re-serialising, and a candidate read never
    decodes an answer it may not serve. "" marks an answer that cannot be served."""
    created: float
    expires: float | None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    meta: dict[str, Any] = field(default_factory=dict)
    cached_tokens: int = 0
    """Of `prompt_tokens`, those a repeat call would find in the provider's prompt cache
    (`Usage.repeat`): a hit's saving counts them at the cached-input price."""
    _response: dict[str, Any] | None = field(default=None, repr=False, compare=False)

    @property
    def response(self) -> dict[str, Any]:
        """The answer, decoded from `body` at first use (streamed replays, audits and the
        lookup API need it; a plain hit does not)."""
        if self._response is None:
            decoded = json.loads(self.body) if self.body else {}
            self._response = decoded if isinstance(decoded, dict) else {}
        return self._response

    def expired(self, now: float) -> bool:
        return self.expires is not None and now >= self.expires

    def saved_usage(self) -> Usage:
        """The usage a hit on this entry spares the upstream."""
        return Usage(self.prompt_tokens, self.completion_tokens, self.cached_tokens)


class EntryStore(Protocol):
    def put(self, entry: Entry) -> str | None:
        """Persist the entry and its exact key atomically enough that a crash never leaves
        an exact key pointing at a missing entry being served (readers re-check). Returns
        the id of the entry it replaced under the same exact key, if any."""
        ...

    def get(self, entry_id: str) -> Entry | None: ...

    def get_by_exact_key(self, exact_key: str) -> Entry | None: ...

    def delete(self, entry_id: str) -> Entry | None: ...

    def iter_entries(self) -> Iterable[Entry]: ...

    def cull(self) -> int:
        """Drop what the backend itself knows has expired."""
        ...

    def __contains__(self, entry_id: str) -> bool: ...

    def __len__(self) -> int: ...

    def volume(self) -> int:
        """Bytes on disk."""
        ...

    def close(self) -> None: ...


@dataclass(slots=True)
class UpstreamResponse:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        import json

        return json.loads(self.body)


@dataclass(slots=True)
class UpstreamStream:
    """An open streamed answer: status and headers known, body still arriving."""

    status: int
    headers: dict[str, str]
    chunks: AsyncIterator[bytes]

    async def aclose(self) -> None:
        aclose = getattr(self.chunks, "aclose", None)
        if aclose is not None:
            await aclose()


AuthScheme = Literal["bearer", "x-api-key"]
"""How an operator's key is sent upstream: `Authorization: Bearer` or Anthropic's header.
The caller's wire format decides, never the path."""


class Upstream(Protocol):
    async def send(
        self, path: str, body: dict[str, Any], headers: dict[str, str], auth: AuthScheme
    ) -> UpstreamResponse: ...

    async def stream(
        self, path: str, body: dict[str, Any], headers: dict[str, str], auth: AuthScheme
    ) -> UpstreamStream: ...

    async def raw(
        self,
        method: str,
        path: str,
        content: bytes,
        headers: dict[str, str],
        params: list[tuple[str, str]],
        auth: AuthScheme,
    ) -> UpstreamStream:
        """An API call the cache does not handle (embeddings, models, files...), relayed."""
        ...

    async def aclose(self) -> None: ...
