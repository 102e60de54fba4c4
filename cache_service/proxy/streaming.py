"""Streamed misses: relay the upstream's events as they come, to every identical request
(single flight for streams), and store and settle the answer once the stream has ended.

The upstream stream is read to its end by a task of its own, not by the client's response:
a client that hangs up mid-answer neither breaks the stream for the requests following it
nor loses an answer that was already paid for. The task settles the quota hold whatever
way the stream ends, and the fan-out is finished only after the store, so a client whose
stream has ended finds the answer in the cache.
"""

from __future__ import annotations

import asyncio
import logging

from starlette.responses import Response, StreamingResponse

from cache_service.cache.front import CacheFront
from cache_service.errors import ServiceError
from cache_service.flavors.base import StreamAssembler
from cache_service.protocols import UpstreamResponse, UpstreamStream
from cache_service.proxy.context import RequestContext
from cache_service.proxy.fanout import Fanout
from cache_service.proxy.headers import COALESCED, call_headers, lookup_headers
from cache_service.proxy.recorder import Recorder
from cache_service.proxy.singleflight import StreamFlights
from cache_service.sse import SSEParser, encode
from cache_service.telemetry.stats import Outcome
from cache_service.upstream.chain import UpstreamCall, UpstreamChain

log = logging.getLogger("cache_service.pipeline")

SSE = "text/event-stream"


class StreamRelay:
    def __init__(
        self,
        front: CacheFront,
        chain: UpstreamChain,
        recorder: Recorder,
        *,
        cache_tool_calls: bool,
    ) -> None:
        self.front = front
        self.chain = chain
        self.recorder = recorder
        self.cache_tool_calls = cache_tool_calls
        self.flights = StreamFlights()
        self.pumps: set[asyncio.Task[None]] = set()
        """Streams still being read; held so the loop does not drop them, and ended at
        shutdown."""

    async def miss(self, ctx: RequestContext, outcome: Outcome) -> Response:
        assert ctx.request is not None
        state = "MISS" if outcome is Outcome.MISS else "BYPASS"
        wanted_usage = ctx.request.stream_usage
        key = ctx.keys.exact_key
        shared = self.flights.joinable(key) if ctx.directives.read else None
        if shared is not None and await asyncio.shield(shared.started):
            # Follow the identical stream already in flight. (Had the leader's call
            # failed, this request makes its own.)
            self.recorder.record(ctx, outcome)
            headers = {"x-cache": state, **COALESCED}
            return StreamingResponse(shared.follow(wanted_usage), media_type=SSE, headers=headers)
        fan = Fanout()
        lead = ctx.directives.read and self.flights.lead(key, fan)
        try:
            return await self._start(ctx, outcome, state, fan)
        finally:
            if not fan.started.done():
                fan.abandon()
            if lead and fan.done:
                self.flights.end(key, fan)

    async def _start(
        self, ctx: RequestContext, outcome: Outcome, state: str, fan: Fanout
    ) -> Response:
        assert ctx.request is not None
        body = ctx.flavor.stream_body(ctx.body)
        try:
            call = await self.chain.stream(ctx.flavor, body, ctx.headers, ctx.project)
        except ServiceError as e:
            self.recorder.record(ctx, Outcome.ERROR)
            e.headers = {**e.headers, "x-cache": state}
            raise
        up = call.result
        ctx.upstream_status = up.status
        if up.status >= 400:
            async with call.hold:
                data = b"".join([c async for c in up.chunks])
                await call.hold.release()
            self.recorder.record(ctx, Outcome.ERROR)
            resp = UpstreamResponse(up.status, up.headers, data)
            headers = {**resp.headers, **lookup_headers(ctx.found), "x-cache": state}
            return Response(
                resp.body, status_code=resp.status, media_type="application/json", headers=headers
            )
        fan.start()
        task = asyncio.create_task(self._pump(ctx, outcome, call, fan))
        self.pumps.add(task)
        task.add_done_callback(self.pumps.discard)
        headers = {
            **up.headers,
            **call_headers(call.info),
            **lookup_headers(ctx.found),
            "x-cache": state,
        }
        return StreamingResponse(
            fan.follow(ctx.request.stream_usage), media_type=SSE, headers=headers
        )

    async def _pump(
        self, ctx: RequestContext, outcome: Outcome, call: UpstreamCall[UpstreamStream], fan: Fanout
    ) -> None:
        parser = SSEParser()
        flavor = ctx.flavor
        assembler = flavor.assembler()
        up = call.result
        try:
            async with call.hold:
                try:
                    async for raw in up.chunks:
                        for name, data in parser.feed_events(raw):
                            event = assembler.add(data)
                            fan.push(
                                encode(data, event=None if name == "message" else name),
                                usage_only=flavor.usage_only(event),
                            )
                except ServiceError as e:
                    # Headers are gone already: tell the clients in-band, in the format's shape.
                    fan.push(flavor.error_event(e.message, e.type, param=e.param, code=e.code))
                finally:
                    await up.aclose()
                await self._settle(ctx, outcome, call, assembler)
        finally:
            fan.finish()
            self.flights.end(ctx.keys.exact_key, fan)

    async def _settle(
        self,
        ctx: RequestContext,
        outcome: Outcome,
        call: UpstreamCall[UpstreamStream],
        assembler: StreamAssembler,
    ) -> None:
        body = assembler.result()
        p, c = ctx.flavor.usage(body) if assembler.complete else (0, 0)
        # An interrupted stream was still billed for what it produced; its usage is
        # partial or missing, so it is settled at the estimate.
        dollars = await call.hold.settle(p, c)
        if assembler.complete and ctx.directives.write and not call.info.downgraded_from:
            refusal = ctx.flavor.refusal(200, body, cache_tool_calls=self.cache_tool_calls)
            if refusal is None:
                await self.front.store(
                    ctx.keys,
                    body,
                    api=ctx.flavor.name,
                    ttl_s=ctx.directives.ttl_s,
                    usage=(p, c),
                    vector=ctx.found.vector,
                )
        self.recorder.record(
            ctx, outcome if assembler.complete else Outcome.ERROR, p, c, dollars=dollars
        )
