"""The one orchestrator: scope → exact → embed → search/accept → upstream → store → record.

Everything blocking (SQLite, FAISS, the model) is handed to threads; this module only
decides and awaits. Each request leaves exactly one outcome in the stats.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from starlette.responses import Response, StreamingResponse

from cache_service import sse
from cache_service.cache.semantic import Lookup, SemanticCache
from cache_service.cache.batcher import EmbeddingBatcher
from cache_service.errors import (
    BadRequest,
    RateLimited,
    ServiceError,
    anthropic_error_body,
    error_body,
)
from cache_service.cache.feedback import AuditTally, FeedbackLearner, ServedHit
from cache_service.forwarder import Forwarder, Ticket
from cache_service.cache.policy import (
    CacheDirectives,
    DirectiveError,
    anthropic_store_refusal,
    lookup_allowed,
    parse_directives,
    store_refusal,
)
from cache_service.pricing import PriceTable
from cache_service.protocols import Clock, Entry, UpstreamResponse, UpstreamStream, Vector
from cache_service.cache.keys import RequestKeys, build_keys, project_of, tenant_of
from cache_service.settings import Settings
from cache_service.telemetry.events import OutcomeEvent, StageTimer, split_cost
from cache_service.telemetry.hub import Telemetry
from cache_service.telemetry.metrics import Metrics
from cache_service.telemetry.stats import LabelCaps, Outcome, Stats

log = logging.getLogger("cache_service.pipeline")

JSON = "application/json"


@dataclass(frozen=True, slots=True)
class Flavor:
    """What differs between the OpenAI and Anthropic wire formats."""

    api: str
    path: str
    refusal: Callable[..., str | None]
    usage_keys: tuple[str, str]
    assembler: Callable[[], sse.ChatStreamAssembler | sse.AnthropicStreamAssembler]
    replay: Callable[[dict[str, Any], bool], Iterator[bytes]]
    error_event: Callable[[ServiceError], bytes]


def _openai_error(e: ServiceError) -> bytes:
    return sse.encode(error_body(e.message, e.type, code=e.code))


def _anthropic_error(e: ServiceError) -> bytes:
    return sse.encode(anthropic_error_body(e.message, e.type, code=e.code), event="error")


OPENAI = Flavor(
    "openai",
    "chat/completions",
    store_refusal,
    ("prompt_tokens", "completion_tokens"),
    sse.ChatStreamAssembler,
    lambda body, usage: sse.replay(body, include_usage=usage),
    _openai_error,
)
ANTHROPIC = Flavor(
    "anthropic",
    "messages",
    anthropic_store_refusal,
    ("input_tokens", "output_tokens"),
    sse.AnthropicStreamAssembler,
    lambda body, _usage: sse.replay_anthropic(body),
    _anthropic_error,
)


def usage_of(body: Any, flavor: Flavor) -> tuple[int, int]:
    usage = body.get("usage") if isinstance(body, dict) else None
    if not isinstance(usage, dict):
        return 0, 0
    p, c = (usage.get(k) for k in flavor.usage_keys)
    return (p if isinstance(p, int) else 0, c if isinstance(c, int) else 0)


@dataclass(slots=True)
class Services:
    settings: Settings
    cache: SemanticCache
    batcher: EmbeddingBatcher
    forwarder: Forwarder
    stats: Stats
    prices: PriceTable
    clock: Clock
    learner: FeedbackLearner
    labels: LabelCaps
    telemetry: Telemetry = field(default_factory=lambda: Telemetry(Metrics()))
    audit: AuditTally = field(default_factory=AuditTally)
    background: set[asyncio.Task[None]] = field(default_factory=set)
    inflight: dict[str, asyncio.Future[UpstreamResponse]] = field(default_factory=dict)
    """Exact key → the upstream call in flight for it (single flight)."""
    stream_inflight: dict[str, sse.Fanout] = field(default_factory=dict)
    """Exact key → the upstream stream in flight for it."""


@dataclass(slots=True)
class Ctx:
    """What one request learned on its way through the pipeline."""

    flavor: Flavor
    body: dict[str, Any]
    headers: dict[str, str]
    keys: RequestKeys
    directives: CacheDirectives
    threshold: float | None
    request_id: str
    started: float
    project: str = "default"
    vector: Vector | None = None
    embed_timeout: bool = False
    lookup: Lookup | None = None
    stages: dict[str, float] = field(default_factory=dict)
    upstream_status: int | None = None


class Pipeline:
    def __init__(self, services: Services) -> None:
        self.s = services

    # ---------------------------------------------------------------- entry points

    def context(
        self,
        flavor: Flavor,
        body: dict[str, Any],
        headers: dict[str, str],
        request_id: str,
        keys: RequestKeys | None = None,
    ) -> Ctx:
        """Everything the pipeline needs from a request; `keys` when the caller (the
        cache-lookup API) derived them itself."""
        st = self.s.settings
        try:
            directives = parse_directives(
                headers.get("cache-control"),
                headers.get("x-cache-ttl"),
                default_ttl_s=st.default_ttl_s,
                max_ttl_s=st.max_ttl_s,
            )
        except DirectiveError as e:
            raise BadRequest(str(e), param="X-Cache-TTL") from e
        threshold = self.threshold(headers.get("x-cache-threshold"), param="X-Cache-Threshold")
        if keys is None:
            keys = build_keys(
                body,
                tenant_of(headers),
                system=body.get("system") if flavor is ANTHROPIC else None,
                api=flavor.api,
                max_semantic_chars=st.semantic_max_chars,
            )
        return Ctx(
            flavor,
            body,
            headers,
            keys,
            directives,
            threshold,
            request_id,
            time.perf_counter(),
            project_of(headers),
        )

    def threshold(self, raw: Any, *, param: str) -> float | None:
        """A per-request threshold may only be stricter than the operator's floor."""
        if raw is None or raw == "":
            return None
        try:
            value = float(raw)
        except (TypeError, ValueError) as e:
            raise BadRequest(f"{param} must be a number between 0 and 1", param=param) from e
        floor = self.s.settings.min_threshold
        if not floor <= value <= 1:
            raise BadRequest(
                f"{param} must be between the operator's floor {floor} and 1, got {value}",
                param=param,
            )
        return value

    async def handle(self, ctx: Ctx) -> Response:
        stream = bool(ctx.body.get("stream"))
        if ctx.directives.read and lookup_allowed(ctx.body):
            hit = await self.lookup(ctx)
            if hit is not None:
                return self._hit(ctx, hit, stream)
            outcome = Outcome.MISS
        else:
            outcome = Outcome.BYPASS
        if stream:
            return await self._miss_stream(ctx, outcome)
        return await self._miss(ctx, outcome)

    # ---------------------------------------------------------------- lookup

    async def lookup(self, ctx: Ctx) -> Lookup | None:
        cache = self.s.cache
        with StageTimer(ctx.stages, "exact"):
            entry = await asyncio.to_thread(cache.get_exact, ctx.keys.exact_key)
        if entry is not None:
            return Lookup(entry, 1.0, "exact", reason="ok")
        if not (ctx.keys.semantic_ok and cache.ready):
            return None
        try:
            with StageTimer(ctx.stages, "embed"):
                ctx.vector = await self.s.batcher.embed(
                    ctx.keys.prompt, self.s.settings.embed_timeout_ms / 1000
                )
        except TimeoutError:
            # Fail open: a slow embedder must cost a cache hit, never an answer.
            ctx.embed_timeout = True
            log.warning("embedding missed its deadline", extra={"request_id": ctx.request_id})
            return None
        # Feedback may have taught this namespace a stricter threshold than asked for.
        threshold = ctx.threshold
        learned = self.s.learner.threshold(ctx.keys.tenant)
        if learned > (threshold or cache.accept_config.threshold):
            threshold = learned
        with StageTimer(ctx.stages, "search"):
            found = await asyncio.to_thread(
                cache.search, ctx.keys.scope, ctx.vector, ctx.keys.prompt, threshold
            )
        # Report the guards apart from the index scan they ran inside.
        ctx.stages["verify"] = found.verify_ms
        ctx.stages["search"] -= found.verify_ms
        ctx.lookup = found
        return found if found.entry is not None else None

    def _hit(self, ctx: Ctx, hit: Lookup, stream: bool) -> Response:
        entry = hit.entry
        assert entry is not None
        now = self.s.clock.now()
        self.s.learner.served(
            ctx.request_id,
            ServedHit(entry.id, entry.namespace, hit.similarity or 1.0, hit.match or "exact"),
        )
        if hit.match == "semantic" and random.random() < self.s.settings.audit_sample_rate:
            task = asyncio.create_task(self._audit(ctx, entry, hit.similarity or 1.0))
            self.s.background.add(task)  # held until done, or the loop may drop it
            task.add_done_callback(self.s.background.discard)
        self.record(
            ctx,
            Outcome.EXACT_HIT if hit.match == "exact" else Outcome.SEMANTIC_HIT,
            entry.prompt_tokens,
            entry.completion_tokens,
        )
        headers = {
            "x-cache": "HIT",
            "x-cache-match": hit.match or "exact",
            "x-cache-similarity": f"{hit.similarity or 1.0:.4f}",
            "x-cache-entry": entry.id,
            "age": str(max(0, int(now - entry.created))),
        }
        if stream:
            include_usage = bool((ctx.body.get("stream_options") or {}).get("include_usage"))
            return StreamingResponse(
                _aiter(ctx.flavor.replay(entry.response, include_usage)),
                media_type="text/event-stream",
                headers=headers,
            )
        return Response(json.dumps(entry.response), media_type=JSON, headers=headers)

    # ---------------------------------------------------------------- misses

    async def _fetch(self, ctx: Ctx) -> tuple[UpstreamResponse, Ticket | None]:
        """Call upstream under quota, or join an identical call already in flight (single
        flight). Returns the answer and, when this request made the call, its ticket."""
        key = ctx.keys.exact_key
        shared = self.s.inflight.get(key) if ctx.directives.read else None
        if shared is not None:
            try:
                return await asyncio.shield(shared), None
            except asyncio.CancelledError:
                if not shared.cancelled():
                    raise  # this request itself was cancelled
                # the leader's client went away mid-call: make our own call
        future: asyncio.Future[UpstreamResponse] = asyncio.get_running_loop().create_future()
        lead = ctx.directives.read and key not in self.s.inflight
        if lead:
            self.s.inflight[key] = future
        try:
            resp, ticket = await self.s.forwarder.send(
                ctx.flavor.path, ctx.body, ctx.headers, ctx.project
            )
        except asyncio.CancelledError:
            future.cancel()
            raise
        except Exception as e:
            future.set_exception(e)
            future.exception()  # mark retrieved: with no followers nobody else reads it
            raise
        else:
            future.set_result(resp)
        finally:
            if lead:
                self.s.inflight.pop(key, None)
        return resp, ticket

    async def _miss(self, ctx: Ctx, outcome: Outcome) -> Response:
        try:
            resp, ticket = await self._fetch(ctx)
        except ServiceError as e:
            self._failed(ctx, e, outcome)
            raise
        try:
            parsed = resp.json()
        except ValueError:
            parsed = None
        ctx.upstream_status = resp.status
        # A shared answer was paid for (and stored) once, by the request that fetched it.
        p, c = (0, 0) if ticket is None else usage_of(parsed, ctx.flavor)
        extra = self._ticket_headers(ticket) if ticket else {"x-cache-coalesced": "true"}
        if ticket is not None:
            if resp.status < 400:
                self.s.forwarder.settle(ticket, p, c)
            else:
                self.s.forwarder.release(ticket)
        if ctx.directives.write and ticket is not None:
            # A downgraded answer came from another model than the scope names.
            refusal = (
                "downgraded model"
                if ticket.downgraded_from
                else ctx.flavor.refusal(
                    resp.status, parsed, cache_tool_calls=self.s.settings.cache_tool_calls
                )
            )
            stored = refusal is None and await self._store(ctx, parsed, p, c)
            extra["x-cache-stored"] = "true" if stored else "false"
            if refusal is not None:
                log.info("not stored", extra={"request_id": ctx.request_id, "why": refusal})
        self.record(ctx, outcome if resp.status < 400 else Outcome.ERROR, p, c)
        return self._relay(ctx, resp, "MISS" if outcome is Outcome.MISS else "BYPASS", extra)

    def _failed(self, ctx: Ctx, e: ServiceError, outcome: Outcome) -> None:
        """A miss that got no upstream answer (quota, 502, 504): counted as an error, and
        its error response still says what the cache did."""
        self.record(ctx, Outcome.ERROR, 0, 0)
        e.headers = {**e.headers, "x-cache": "MISS" if outcome is Outcome.MISS else "BYPASS"}

    def _relay(
        self, ctx: Ctx, resp: UpstreamResponse, state: str, extra: dict[str, str]
    ) -> Response:
        headers = {**resp.headers, **extra, "x-cache": state}
        self._add_lookup_headers(ctx, headers)
        return Response(resp.body, status_code=resp.status, media_type=JSON, headers=headers)

    def _ticket_headers(self, ticket: Ticket) -> dict[str, str]:
        headers = {
            **ticket.headers,
            "x-upstream": ticket.upstream,
            "x-upstream-attempts": str(ticket.attempts),
        }
        if ticket.downgraded_from:
            headers["x-model-downgraded"] = f"{ticket.downgraded_from} -> {ticket.model}"
        return headers

    def _add_lookup_headers(self, ctx: Ctx, headers: dict[str, str]) -> None:
        if ctx.lookup is not None and ctx.lookup.best_rejected is not None:
            headers["x-cache-best-similarity"] = f"{ctx.lookup.best_rejected:.4f}"
            headers["x-cache-rejected-by"] = ctx.lookup.reason

    async def _store(self, ctx: Ctx, response: dict[str, Any], p: int, c: int) -> bool:
        vector = ctx.vector
        if vector is None and ctx.keys.semantic_ok:
            try:
                # No lookup embedding (no-cache, or the lookup timed out): embed now. The
                # caller's answer waits on this store (so its next request finds it), hence
                # the lookup's own deadline rather than a long one: a backlogged embedder
                # costs the entry its semantic matches, not the caller seconds.
                deadline = self.s.settings.embed_timeout_ms / 1000
                vector = await self.s.batcher.embed(ctx.keys.prompt, deadline)
            except TimeoutError:
                vector = None  # stored for exact matches only
        entry = self.s.cache.new_entry(
            scope=ctx.keys.scope,
            exact_key=ctx.keys.exact_key,
            namespace=ctx.keys.tenant,
            model=ctx.keys.model,
            prompt=ctx.keys.prompt,
            embedding=vector if ctx.keys.semantic_ok else None,
            response=response,
            ttl_s=ctx.directives.ttl_s or self.s.settings.default_ttl_s,
            prompt_tokens=p,
            completion_tokens=c,
            meta={"api": ctx.flavor.api},
        )
        try:
            await asyncio.to_thread(self.s.cache.put, entry)
        except Exception:
            # The caller still gets the answer; a store failure costs a future hit only.
            log.exception("store failed", extra={"request_id": ctx.request_id})
            return False
        return True

    async def _miss_stream(self, ctx: Ctx, outcome: Outcome) -> Response:
        state = "MISS" if outcome is Outcome.MISS else "BYPASS"
        wanted_usage = bool((ctx.body.get("stream_options") or {}).get("include_usage"))
        key = ctx.keys.exact_key
        shared = self.s.stream_inflight.get(key) if ctx.directives.read else None
        if shared is not None and await asyncio.shield(shared.started):
            # Single flight for streams: follow the identical stream already in flight.
            # (Had the leader's call failed, this request makes its own.)
            self.record(ctx, outcome, 0, 0)
            headers = {"x-cache": state, "x-cache-coalesced": "true"}
            return StreamingResponse(
                shared.follow(wanted_usage), media_type="text/event-stream", headers=headers
            )
        fan = sse.Fanout()
        # Registered before the upstream call: identical requests arriving while it connects
        # wait for it instead of making calls of their own.
        lead = ctx.directives.read and key not in self.s.stream_inflight
        if lead:
            self.s.stream_inflight[key] = fan
        try:
            return await self._start_stream(ctx, outcome, state, wanted_usage, fan)
        finally:
            if not fan.started.done():
                fan.abandon()
            if lead and fan.done and self.s.stream_inflight.get(key) is fan:
                del self.s.stream_inflight[key]

    async def _start_stream(
        self, ctx: Ctx, outcome: Outcome, state: str, wanted_usage: bool, fan: sse.Fanout
    ) -> Response:
        body = dict(ctx.body)
        if not wanted_usage and ctx.flavor is OPENAI:
            # Ask for usage anyway (to store and account it); followers that did not ask
            # for it skip that chunk.
            body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        try:
            up, ticket = await self.s.forwarder.stream(
                ctx.flavor.path, body, ctx.headers, ctx.project
            )
        except ServiceError as e:
            self._failed(ctx, e, outcome)
            raise
        ctx.upstream_status = up.status
        if up.status >= 400:
            data = b"".join([c async for c in up.chunks])
            self.s.forwarder.release(ticket)
            self.record(ctx, Outcome.ERROR, 0, 0)
            resp = UpstreamResponse(up.status, up.headers, data)
            return self._relay(ctx, resp, state, {})
        fan.start()
        # The upstream stream is read to its end by a task of its own, not by the client's
        # response: a client that hangs up mid-answer neither breaks the stream for the
        # requests following it nor loses an answer that was already paid for.
        task = asyncio.create_task(self._pump(ctx, outcome, up, ticket, fan))
        self.s.background.add(task)
        task.add_done_callback(self.s.background.discard)
        headers = {
            **up.headers,
            **self._ticket_headers(ticket),
            "x-cache": state,
        }
        self._add_lookup_headers(ctx, headers)
        return StreamingResponse(
            fan.follow(wanted_usage), media_type="text/event-stream", headers=headers
        )

    async def _pump(
        self, ctx: Ctx, outcome: Outcome, up: UpstreamStream, ticket: Ticket, fan: sse.Fanout
    ) -> None:
        parser = sse.SSEParser()
        assembler = ctx.flavor.assembler()
        openai = ctx.flavor is OPENAI
        try:
            async for raw in up.chunks:
                for name, data in parser.feed_events(raw):
                    chunk = assembler.add(data)
                    # OpenAI's usage arrives in a chunk of its own that we may have asked
                    # for on the caller's behalf; Anthropic's rides on message events.
                    usage_only = (
                        openai
                        and chunk is not None
                        and not chunk.get("choices")
                        and bool(chunk.get("usage"))
                    )
                    event = None if name == "message" else name
                    fan.push(sse.encode(data, event=event), usage_only=usage_only)
        except ServiceError as e:
            # Headers are gone already; tell the clients in-band, in the API's own shape.
            fan.push(ctx.flavor.error_event(e))
        finally:
            try:
                await up.aclose()
                await self._settle_stream(ctx, outcome, ticket, assembler)
            finally:
                # Finished only after the store: a client whose stream has ended finds the
                # answer in the cache, and identical requests arriving meanwhile follow
                # this stream instead of calling upstream again.
                fan.finish()
                if self.s.stream_inflight.get(ctx.keys.exact_key) is fan:
                    del self.s.stream_inflight[ctx.keys.exact_key]

    async def _settle_stream(
        self,
        ctx: Ctx,
        outcome: Outcome,
        ticket: Ticket,
        assembler: sse.ChatStreamAssembler | sse.AnthropicStreamAssembler,
    ) -> None:
        body = (
            assembler.completion()
            if isinstance(assembler, sse.ChatStreamAssembler)
            else assembler.message()
        )
        p, c = usage_of(body, ctx.flavor) if assembler.complete else (0, 0)
        # An interrupted stream was still billed for what it produced; its usage is
        # partial or missing, so it is settled at the estimate.
        self.s.forwarder.settle(ticket, p, c)
        if assembler.complete and ctx.directives.write and not ticket.downgraded_from:
            refusal = ctx.flavor.refusal(
                200, body, cache_tool_calls=self.s.settings.cache_tool_calls
            )
            if refusal is None:
                await self._store(ctx, body, p, c)
        self.record(ctx, outcome if assembler.complete else Outcome.ERROR, p, c)

    async def _audit(self, ctx: Ctx, entry: Entry, similarity: float) -> None:
        """Ask upstream too (within quota) and compare: agreement estimates how often
        semantic hits are right in live traffic, which no offline benchmark can tell."""
        if ctx.flavor is not OPENAI:
            return
        body = {k: v for k, v in ctx.body.items() if k not in ("stream", "stream_options")}
        try:
            resp, ticket = await self.s.forwarder.send(
                ctx.flavor.path, body, ctx.headers, ctx.project
            )
        except (RateLimited, ServiceError):
            self._audited("skipped")
            return
        try:
            fresh = resp.json()
        except ValueError:
            fresh = None
        if resp.status >= 400 or not isinstance(fresh, dict):
            self.s.forwarder.release(ticket)
            self._audited("skipped")
            return
        self.s.forwarder.settle(ticket, *usage_of(fresh, ctx.flavor))
        a, b = _answer_text(entry.response), _answer_text(fresh)
        try:
            va = await self.s.batcher.embed(a, 10.0)
            vb = await self.s.batcher.embed(b, 10.0)
        except TimeoutError:
            self._audited("skipped")
            return
        agreed = float(va @ vb) >= self.s.settings.audit_agree_similarity
        self._audited("agreed" if agreed else "disagreed")
        log.info(
            "audit",
            extra={
                "request_id": ctx.request_id,
                "entry": entry.id,
                "agreed": agreed,
                "similarity": similarity,
            },
        )

    def _audited(self, verdict: str) -> None:
        tally = self.s.audit
        if verdict == "skipped":
            tally.skipped += 1
        else:
            tally.audited += 1
            tally.agreed += verdict == "agreed"
        self.s.telemetry.metrics.audit(verdict, tally.as_dict()["estimated_precision"])

    # ---------------------------------------------------------------- accounting

    def record(
        self, ctx: Ctx, outcome: Outcome, prompt_tokens: int, completion_tokens: int
    ) -> None:
        dollars = self.s.prices.cost(ctx.keys.model, prompt_tokens, completion_tokens)
        caps = self.s.labels
        namespace, model = caps.namespace(ctx.keys.tenant), caps.model(ctx.keys.model)
        self.s.stats.record(
            namespace,
            model,
            outcome,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            dollars=dollars,
            embed_timeout=ctx.embed_timeout,
        )
        saved, spent = split_cost(outcome, dollars)
        lk = ctx.lookup
        latency_ms = (time.perf_counter() - ctx.started) * 1000
        self.s.telemetry.record(
            OutcomeEvent(
                time=self.s.clock.now(),
                request_id=ctx.request_id,
                namespace=namespace,
                project=caps.project(ctx.project),
                model=model,
                outcome=outcome,
                similarity=1.0
                if outcome is Outcome.EXACT_HIT
                else (lk.similarity if lk and outcome is Outcome.SEMANTIC_HIT else None),
                best_rejected=lk.best_rejected if lk else None,
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                dollars_saved=saved,
                dollars_spent=spent,
                latency_ms=latency_ms,
                stages=ctx.stages,
                upstream_status=ctx.upstream_status,
                embed_timeout=ctx.embed_timeout,
                prompt=ctx.keys.prompt if self.s.settings.log_prompts else None,
            )
        )
        log.info(
            "request",
            extra={
                "request_id": ctx.request_id,
                "namespace": ctx.keys.tenant,
                "model": ctx.keys.model,
                "outcome": outcome.value,
                "similarity": ctx.lookup.similarity if ctx.lookup else None,
                "ms": round(latency_ms, 2),
                "stages_ms": {k: round(v, 3) for k, v in ctx.stages.items()},
            },
        )

    def entry_view(self, entry: Entry) -> dict[str, Any]:
        now = self.s.clock.now()
        return {
            "id": entry.id,
            "namespace": entry.namespace,
            "model": entry.model,
            "prompt": entry.prompt,
            "created": entry.created,
            "expires": entry.expires,
            "age": max(0.0, now - entry.created),
            "usage": {
                "prompt_tokens": entry.prompt_tokens,
                "completion_tokens": entry.completion_tokens,
            },
        }


def _answer_text(completion: dict[str, Any]) -> str:
    try:
        return str(completion["choices"][0]["message"].get("content") or "")
    except (KeyError, IndexError, TypeError, AttributeError):
        return ""


async def _aiter(chunks: Any) -> AsyncIterator[bytes]:
    for c in chunks:
        yield c
