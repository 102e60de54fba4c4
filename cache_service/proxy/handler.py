"""The request path of a proxied call: look it up; serve a hit; or fetch the answer upstream
(single flight, under quota), store it if it may be stored, and relay it.

Read with `flavors/base.py` (what a request is), `cache/front.py` (the lookup),
`upstream/chain.py` (where a miss goes) and `quota/ledger.py` (what a miss may spend).
Streamed misses continue in `streaming.py`. Every request leaves exactly one outcome with
the recorder, whichever way it leaves. A 2xx that is not an answer of the route's format is
a 502 `upstream_invalid_response`, never stored.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Iterable

from redis.exceptions import RedisError
from starlette.background import BackgroundTask
from starlette.responses import Response, StreamingResponse

from cache_service.cache.feedback import FeedbackLearner, ServedHit
from cache_service.cache.front import CacheFront
from cache_service.cache.policy import lookup_allowed
from cache_service.cache.semantic import Lookup
from cache_service.cache.served_feed import ServedFeed
from cache_service.errors import ServiceError, invalid_answer
from cache_service.pricing import NO_USAGE, Usage
from cache_service.protocols import Clock, UpstreamResponse
from cache_service.proxy.audit import Auditor
from cache_service.proxy.context import RequestContext
from cache_service.proxy.fleet_flight import FleetFlights, FlightLease
from cache_service.proxy.headers import COALESCED, call_headers, hit_headers, lookup_headers
from cache_service.proxy.recorder import Recorder
from cache_service.proxy.singleflight import Flights
from cache_service.proxy.streaming import StreamRelay
from cache_service.telemetry.stats import Outcome
from cache_service.upstream.chain import UpstreamCall, UpstreamChain

log = logging.getLogger("cache_service.pipeline")

JSON = "application/json"


class ProxyHandler:
    def __init__(
        self,
        front: CacheFront,
        chain: UpstreamChain,
        recorder: Recorder,
        learner: FeedbackLearner,
        auditor: Auditor,
        clock: Clock,
        *,
        cache_tool_calls: bool,
        fleet: FleetFlights | None = None,
        fleet_wait_s: float = 60.0,
        fleet_served: ServedFeed | None = None,
    ) -> None:
        """`fleet`: single flight across replicas (None: this process alone); a follower
        waits for another replica's answer at most `fleet_wait_s`. `fleet_served`: hits
        told to the fleet, so a verdict naming the request may reach any replica."""
        self.front = front
        self.chain = chain
        self.recorder = recorder
        self.learner = learner
        self.auditor = auditor
        self.clock = clock
        self.cache_tool_calls = cache_tool_calls
        self.flights: Flights[UpstreamCall[UpstreamResponse]] = Flights()
        self.fleet = fleet
        self.fleet_wait_s = fleet_wait_s
        self.fleet_served = fleet_served
        self.streams = StreamRelay(front, chain, recorder, cache_tool_calls=cache_tool_calls)

    async def handle(self, ctx: RequestContext) -> Response:
        assert ctx.request is not None
        if ctx.directives.read and lookup_allowed(ctx.request):
            ctx.found = await self.front.lookup(
                ctx.keys,
                ctx.threshold,
                ctx.stages,
                meanwhile=functools.partial(self.chain.precount, ctx.request),
            )
            hit = ctx.found.hit
            max_age = ctx.directives.max_age_s
            too_old = (
                hit is not None
                and hit.entry is not None
                and max_age is not None
                and self.clock.now() - hit.entry.created > max_age
            )
            if too_old:
                hit = ctx.found.hit = None  # too old for this caller: fetched afresh
                ctx.found.too_old = True
            if hit is not None:
                return self._hit(ctx, hit)
            outcome = Outcome.MISS
        else:
            outcome = Outcome.BYPASS
        if ctx.stream:
            return await self.streams.miss(ctx, outcome)
        return await self._miss(ctx, outcome)

    def _hit(self, ctx: RequestContext, hit: Lookup) -> Response:
        entry = hit.entry
        assert entry is not None and ctx.request is not None
        similarity = hit.similarity or 1.0
        served = ServedHit(entry.id, entry.namespace, similarity, hit.match or "exact")
        self.learner.served(ctx.request_id, served)
        if self.fleet_served is not None:
            self.fleet_served.remember(ctx.request_id, served)
        if hit.match == "semantic":
            self.auditor.maybe_audit(ctx, entry, similarity)
        outcome = Outcome.EXACT_HIT if hit.match == "exact" else Outcome.SEMANTIC_HIT
        headers = hit_headers(hit, self.clock.now())
        if ctx.stream:
            # Recorded before: a stream's background task is skipped if its caller leaves.
            self.recorder.record(ctx, outcome, entry.saved_usage())
            events = ctx.flavor.replay(entry.response, ctx.request.stream_usage)
            return StreamingResponse(
                _aiter(events), media_type="text/event-stream", headers=headers
            )
        recorded = self.recorder.after_sent(ctx, outcome, entry.saved_usage())
        return Response(entry.body, media_type=JSON, headers=headers, background=recorded)

    async def _miss(self, ctx: RequestContext, outcome: Outcome) -> Response:
        lease: FlightLease | None = None
        # A miss another request of this process is already fetching joins it locally.
        if (
            self.fleet is not None
            and ctx.directives.read
            and not self.flights.busy(ctx.keys.exact_key)
        ):
            hit, lease = await self._fleet_turn(ctx, self.fleet)
            if hit is not None:
                return self._hit(ctx, hit)
        try:
            return await self._fetch(ctx, outcome)
        finally:
            if lease is not None:
                await lease.release()

    async def _fleet_turn(
        self, ctx: RequestContext, fleet: FleetFlights
    ) -> tuple[Lookup | None, FlightLease | None]:
        """Lead this key's call across the fleet (a lease to release once the answer is
        stored), or wait for the replica leading it and serve what it stored. Neither: go
        alone. Redis failing only costs the coalescing."""
        key = ctx.keys.exact_key
        try:
            lease = await fleet.acquire(key)
            if lease is None:
                await fleet.wait(key, self.fleet_wait_s)
                hit = await self.front.exact(ctx.keys)
                if hit is not None:
                    return hit, None
                # The leader stored nothing (an error, a refusal) or died: lead now, unless
                # another follower got there first (then go alone rather than wait twice).
                lease = await fleet.acquire(key)
                return None, lease
            # Stored by another replica between this request's lookup and the lock.
            hit = await self.front.exact(ctx.keys)
            if hit is not None:
                await lease.release()
                return hit, None
            return None, lease
        except RedisError:
            return None, None

    async def _fetch(self, ctx: RequestContext, outcome: Outcome) -> Response:
        state = ctx.directives.miss_state(outcome is Outcome.MISS)
        try:
            call, led = await self.flights.run(
                ctx.keys.exact_key,
                ctx.directives.read,
                lambda: self.chain.send(ctx.flavor, ctx.body, ctx.headers, ctx.project),
            )
        except ServiceError as e:
            self.recorder.record(ctx, Outcome.ERROR)
            e.headers = {**e.headers, "x-cache": state}
            raise
        resp = call.result
        ctx.upstream_status = resp.status
        try:
            parsed = resp.json()
        except ValueError:
            parsed = None
        invalid = 200 <= resp.status < 300 and not ctx.flavor.valid(parsed)
        if not led:
            # A shared answer was paid for (and stored) once, by the request that fetched it.
            if invalid:
                self.recorder.record(ctx, Outcome.ERROR)
                raise invalid_answer(state)
            recorded = self.recorder.after_sent(
                ctx, outcome if resp.status < 400 else Outcome.ERROR
            )
            return self._relay(ctx, resp, state, dict(COALESCED), recorded)
        async with call.hold:
            if invalid:
                # The upstream did answer, so it may have billed: settled at the estimate,
                # the side of a budget that cannot overspend unnoticed. Nothing is stored.
                dollars = await call.hold.settle(NO_USAGE)
                self.recorder.record(ctx, Outcome.ERROR, dollars=dollars)
                raise invalid_answer(state)
            usage = ctx.flavor.usage(parsed)
            extra = call_headers(call.info)
            if resp.status >= 400:
                await call.hold.release()
                if ctx.directives.write:
                    extra["x-cache-stored"] = "false"  # an error is never cached
                recorded = self.recorder.after_sent(ctx, Outcome.ERROR, usage)
                return self._relay(ctx, resp, state, extra, recorded)
            dollars = await call.hold.settle(usage)
            if ctx.directives.write:
                stored = await self._store(ctx, call.info.downgraded_from, parsed, usage)
                extra["x-cache-stored"] = "true" if stored else "false"
            recorded = self.recorder.after_sent(ctx, outcome, usage, dollars=dollars)
            return self._relay(ctx, resp, state, extra, recorded)

    async def _store(
        self,
        ctx: RequestContext,
        downgraded_from: str | None,
        body: object,
        usage: Usage,
    ) -> bool:
        # A downgraded answer came from another model than the scope names.
        refusal = (
            "downgraded model"
            if downgraded_from
            else ctx.flavor.refusal(200, body, cache_tool_calls=self.cache_tool_calls)
        )
        if refusal is not None or not isinstance(body, dict):
            log.info("not stored", extra={"request_id": ctx.request_id, "why": refusal})
            return False
        # Written before the answer leaves: `x-cache-stored: true` is a promise that a crash
        # right after the answer keeps (tests/e2e/test_crash.py). Writing after the answer
        # saved ~0.5-1 ms of a miss's p50 here and broke that promise under SIGKILL.
        entry = await self.front.store(
            ctx.keys,
            body,
            api=ctx.flavor.name,
            ttl_s=ctx.directives.ttl_s,
            usage=usage,
            vector=ctx.found.vector,
            embed=not ctx.found.embed_timeout,
        )
        return entry is not None

    def _relay(
        self,
        ctx: RequestContext,
        resp: UpstreamResponse,
        state: str,
        extra: dict[str, str],
        recorded: BackgroundTask,
    ) -> Response:
        headers = {**resp.headers, **extra, **lookup_headers(ctx.found), "x-cache": state}
        return Response(resp.body, resp.status, headers, media_type=JSON, background=recorded)


async def _aiter(chunks: Iterable[bytes]) -> AsyncIterator[bytes]:
    for c in chunks:
        yield c
