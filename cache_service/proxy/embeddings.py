"""`POST /v1/embeddings`, cached exactly.

The same input to the same embedding model gives the same vectors, so an identical request
(re-indexing a corpus, a RAG pipeline embedding the same chunks again) is the safest saving
a cache can make: no similarity is involved, only the exact key. Everything that changes
the answer is in it: the tenant, the model, the input (byte for byte), `encoding_format`
and `dimensions`; `user` is not (it labels the caller for the provider, the vectors do not
depend on it).

A miss goes upstream as any relayed call does (one request against the project's rpm,
under its deadline) and a 200 whose body is an embeddings list is stored, exact-only and
at most `MAX_STORED_BYTES`: a larger answer is relayed as it streams, not held in memory.
A body that is not an embeddings request (not JSON, no model or input) is relayed untouched
and never cached: the upstream says what is wrong with it, as before. Hits and misses are
recorded like any other request (stats, outcome log, metrics), tokens from the stored
`usage`.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from starlette.responses import Response, StreamingResponse

from cache_service.cache.front import CacheFront
from cache_service.cache.keys import RequestKeys, keys_of
from cache_service.cache.semantic import Lookup
from cache_service.errors import UpstreamUnavailable
from cache_service.flavors import DEFAULT
from cache_service.pricing import Usage
from cache_service.protocols import Clock, UpstreamStream
from cache_service.proxy.context import RequestContext, directives_of
from cache_service.proxy.headers import hit_headers
from cache_service.proxy.recorder import Recorder
from cache_service.settings import Settings
from cache_service.telemetry.stats import Outcome
from cache_service.upstream.chain import UpstreamChain

PATH = "embeddings"
MAX_STORED_BYTES = 8 * 1024 * 1024
"""Larger answers (thousands of inputs at a time) are relayed without being stored."""


def embedding_keys(body: Any, tenant: str, settings: Settings) -> RequestKeys | None:
    """The exact key of an embeddings request, or None when the body is not one."""
    if not isinstance(body, dict) or not isinstance(body.get("model"), str):
        return None
    if "input" not in body or body["input"] in (None, "", []):
        return None
    answer_shaping = {k: body[k] for k in ("encoding_format", "dimensions") if k in body}
    canonical = json.dumps(body["input"], ensure_ascii=False, separators=(",", ":"))
    return keys_of(
        tenant=tenant,
        api="embeddings",
        model=body["model"],
        system=None,
        messages=[{"role": "user", "content": canonical}],
        params=answer_shaping,
        max_semantic_chars=0,  # exact only: vectors of a "similar" input are wrong vectors
    )


class EmbeddingCache:
    def __init__(
        self,
        front: CacheFront,
        chain: UpstreamChain,
        recorder: Recorder,
        settings: Settings,
        clock: Clock,
    ) -> None:
        self.front = front
        self.chain = chain
        self.recorder = recorder
        self.settings = settings
        self.clock = clock

    async def handle(
        self,
        keys: RequestKeys,
        content: bytes,
        headers: dict[str, str],
        params: list[tuple[str, str]],
        project: str,
        request_id: str,
    ) -> Response:
        ctx = RequestContext(
            flavor=DEFAULT,
            body={},
            request=None,
            headers=headers,
            keys=keys,
            directives=directives_of(headers, self.settings),
            threshold=None,
            request_id=request_id,
            project=project,
        )
        if ctx.directives.read:
            hit = await self.front.exact(keys)
            if hit is not None and hit.entry is not None:
                return self._hit(ctx, hit)
        up = await self.chain.relay("POST", PATH, content, headers, params, project)
        state = ctx.directives.miss_state(ctx.directives.read)
        head = {**up.headers, "x-cache": state}
        media = head.pop("content-type", None)
        ctx.upstream_status = up.status
        if up.status != 200 or not ctx.directives.write:
            self.recorder.record(ctx, Outcome.MISS if up.status < 400 else Outcome.ERROR)
            return StreamingResponse(up.chunks, up.status, head, media_type=media)
        try:
            body, rest = await _read_up_to(up, MAX_STORED_BYTES)
        except Exception as e:  # the connection broke mid-answer: nothing usable to relay
            await up.aclose()
            self.recorder.record(ctx, Outcome.ERROR)
            raise UpstreamUnavailable(
                "the upstream's embeddings answer broke off", headers={"x-cache": state}
            ) from e
        if rest is not None:  # too large to keep: relayed as it comes
            self.recorder.record(ctx, Outcome.MISS)
            head["x-cache-stored"] = "false"
            return StreamingResponse(_chain(body, rest), 200, head, media_type=media)
        answer = _embeddings_answer(body)
        tokens = _prompt_tokens(answer)
        stored = False
        if answer is not None:
            entry = await self.front.store(
                keys,
                answer,
                api="embeddings",
                ttl_s=ctx.directives.ttl_s,
                usage=Usage(tokens),
                embed=False,
            )
            stored = entry is not None
        head["x-cache-stored"] = "true" if stored else "false"
        self.recorder.record(ctx, Outcome.MISS, Usage(tokens))
        return Response(body, 200, head, media_type=media)

    def _hit(self, ctx: RequestContext, hit: Lookup) -> Response:
        entry = hit.entry
        assert entry is not None
        self.recorder.record(ctx, Outcome.EXACT_HIT, entry.saved_usage())
        return Response(
            entry.body,
            media_type="application/json",
            headers=hit_headers(hit, self.clock.now()),
        )


def _embeddings_answer(body: bytes) -> dict[str, Any] | None:
    """The answer, if it is an embeddings list (anything else is relayed, never stored)."""
    try:
        parsed = json.loads(body)
    except ValueError:
        return None
    if isinstance(parsed, dict) and isinstance(parsed.get("data"), list) and parsed["data"]:
        return parsed
    return None


def _prompt_tokens(answer: dict[str, Any] | None) -> int:
    usage = answer.get("usage") if answer else None
    tokens = usage.get("prompt_tokens") if isinstance(usage, dict) else None
    return tokens if type(tokens) is int and tokens >= 0 else 0


async def _read_up_to(up: UpstreamStream, limit: int) -> tuple[bytes, AsyncIterator[bytes] | None]:
    """The whole body if it fits in `limit`; else what was read and the rest still to come."""
    chunks: list[bytes] = []
    size = 0
    iterator = up.chunks.__aiter__()
    async for chunk in iterator:
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            return b"".join(chunks), iterator
    return b"".join(chunks), None


async def _chain(first: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    yield first
    async for chunk in rest:
        yield chunk
