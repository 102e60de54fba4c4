"""Streamed misses: relay the upstream's events as they come, to every identical request
(single flight for streams), and store and settle the answer once the stream has ended.

The upstream stream is read to its end by a task of its own, not by the client's response:
a client that hangs up mid-answer neither breaks the stream for the requests following it
nor loses an answer that was already paid for. The task settles the quota hold whatever
way the stream ends, and the fan-out is finished only after the store, so a client whose
stream has ended finds the answer in the cache.

A stream is never left hanging: one silent for `stream_idle_timeout_s`, one still running at
the request's deadline, or one that ends before its answer is complete is ended with an error
event in the format's shape, settled at the estimate (upstream billed what it produced) and
not stored. A 2xx that is not an event stream at all is a 502 before any header is sent.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from starlette.responses import Response, StreamingResponse

from cache_service.cache.front import CacheFront
from cache_service.errors import (
    ServiceError,
    UpstreamTimeout,
    UpstreamUnavailable,
    invalid_answer,
)
from cache_service.flavors.base import StreamAssembler
from cache_service.pricing import NO_USAGE
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
        state = ctx.directives.miss_state(outcome is Outcome.MISS)
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
            # Where the error came from, as on a plain request's (found by the soak: a
            # streamed request's relayed 500 did not say which upstream sent it).
            headers = {
                **resp.headers,
                **call_headers(call.info),
                **lookup_headers(ctx.found),
                "x-cache": state,
            }
            return Response(
                resp.body, status_code=resp.status, media_type="application/json", headers=headers
            )
        kind = up.headers.get("content-type", SSE).split(";")[0].strip().lower()
        if kind != SSE:
            # A 2xx that is no event stream (`{"nope": 1}`, a proxy's page): headers are not
            # sent yet, so it is a plain 502. It may have been billed: settled at the estimate.
            async with call.hold:
                await up.aclose()
                dollars = await call.hold.settle(NO_USAGE)
            self.recorder.record(ctx, Outcome.ERROR, dollars=dollars)
            raise invalid_answer(state)
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
                error: ServiceError | None = None
                try:
                    async for raw in self._chunks(up, call):
                        for name, data in parser.feed_events(raw):
                            event = assembler.add(data)
                            fan.push(
                                encode(data, event=None if name == "message" else name),
                                usage_only=flavor.usage_only(event),
                            )
                except ServiceError as e:
                    error = e
                finally:
                    await up.aclose()
                if error is None and not assembler.complete:
                    error = UpstreamUnavailable(
                        "upstream stream ended before the answer was complete",
                        code="upstream_incomplete_stream",
                    )
                if error is not None:
                    # Headers are gone already: tell the clients in-band, in the format's shape.
                    fan.push(
                        flavor.error_event(
                            error.message, error.type, param=error.param, code=error.code
                        )
                    )
                await self._settle(ctx, outcome, call, assembler)
        finally:
            fan.finish()
            self.flights.end(ctx.keys.exact_key, fan)

    async def _chunks(
        self, up: UpstreamStream, call: UpstreamCall[UpstreamStream]
    ) -> AsyncIterator[bytes]:
        """The stream's chunks, each waited for at most `stream_idle_timeout_s` and never
        past the request's deadline."""
        idle = self.chain.settings.stream_idle_timeout_s
        deadline = call.info.deadline
        chunks = aiter(up.chunks)
        while True:
            wait = idle if deadline is None else min(idle, deadline.left())
            if deadline is not None and wait <= 0:
                raise deadline.error()
            try:
                async with asyncio.timeout(wait):
                    raw = await anext(chunks)
            except StopAsyncIteration:
                return
            except TimeoutError:
                if deadline is not None and deadline.left() <= 0:
                    raise deadline.error() from None
                raise UpstreamTimeout(
                    f"upstream stream sent nothing for {idle:g} s", code="upstream_stream_stalled"
                ) from None
            yield raw

    async def _settle(
        self,
        ctx: RequestContext,
        outcome: Outcome,
        call: UpstreamCall[UpstreamStream],
        assembler: StreamAssembler,
    ) -> None:
        body = assembler.result()
        usage = ctx.flavor.usage(body) if assembler.complete else NO_USAGE
        # An interrupted stream was still billed for what it produced; its usage is
        # partial or missing, so it is settled at the estimate.
        dollars = await call.hold.settle(usage)
        if assembler.complete and ctx.directives.write and not call.info.downgraded_from:
            refusal = ctx.flavor.refusal(200, body, cache_tool_calls=self.cache_tool_calls)
            if refusal is None:
                await self.front.store(
                    ctx.keys,
                    body,
                    api=ctx.flavor.name,
                    ttl_s=ctx.directives.ttl_s,
                    usage=usage,
                    vector=ctx.found.vector,
                    embed=not ctx.found.embed_timeout,
                )
        self.recorder.record(
            ctx, outcome if assembler.complete else Outcome.ERROR, usage, dollars=dollars
        )
