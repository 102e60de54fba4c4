"""The way upstream for everything the cache could not answer: project and quota admission,
downgrade past a budget share, the fallback chain, retries with backoff and circuit breakers.

One call is: resolve the project → maybe downgrade → estimate tokens and cost → for each
upstream serving the model whose breaker allows it: admit under quota (queue or 429), call
with retries; the first answer that is not retryable wins, and carries the `Hold` that must
settle or release its reservation. If every upstream failed with an HTTP error, the last one
is relayed as it came (never a 500 of ours). A connection that cannot be made moves on to the
next upstream at once, and the whole of it runs under one `Deadline` (`request_deadline_s`):
no call outlives it, no retry or fallback starts past it.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from cache_service.errors import RateLimited, ServiceError, UpstreamUnavailable
from cache_service.flavors.base import CanonicalRequest, Flavor
from cache_service.pricing import NO_USAGE, Price, PriceTable, Usage
from cache_service.protocols import AuthScheme, Clock, Upstream, UpstreamResponse, UpstreamStream
from cache_service.quota.estimate import estimate_request_tokens
from cache_service.quota.gate import Hold, QuotaGate
from cache_service.quota.ledger import QuotaLedger
from cache_service.quota.limits import Limits
from cache_service.quota.projects import GLOBAL, Project, Projects
from cache_service.resilience import (
    RETRYABLE_STATUS,
    CircuitBreaker,
    backoff_delay,
    parse_retry_after,
)
from cache_service.settings import Settings
from cache_service.telemetry.metrics import Metrics
from cache_service.upstream.deadline import Deadline
from cache_service.upstream.paths import checked_relay_path

log = logging.getLogger("cache_service.quota")

T = TypeVar("T", UpstreamResponse, UpstreamStream)


@dataclass(slots=True)
class Slot:
    """One upstream of the chain: its client, the models it serves, its breaker."""

    name: str
    client: Upstream
    models: list[str]
    breaker: CircuitBreaker

    def serves(self, model: str) -> bool:
        return any(fnmatch.fnmatchcase(model, pattern) for pattern in self.models)


@dataclass(slots=True)
class CallInfo:
    """What the response headers and the recorder say about an upstream call."""

    upstream: str
    model: str
    """The model actually called (a downgrade changes it)."""
    attempts: int = 1
    downgraded_from: str | None = None
    ratelimit: dict[str, str] = field(default_factory=dict)
    """The caller's project's `x-ratelimit-*` after admission."""
    deadline: Deadline | None = None
    """The request's deadline, which a stream's reader keeps honouring after the call."""


@dataclass(slots=True)
class UpstreamCall(Generic[T]):
    """An upstream answer and the reservation it holds until settled or released."""

    result: T
    hold: Hold
    info: CallInfo


@dataclass(slots=True)
class _Admission:
    project: Project
    model: str
    downgraded_from: str | None
    tokens: int
    cost: float
    price: Price | None


_INLINE_COUNT_CHARS = 20_000
"""Prompts up to this long are counted on the event loop: ~50 µs, cheaper than a thread hop."""
_PRECOUNTED = 256
"""Counts made ahead and kept for admissions: one per request in flight is enough."""


class UpstreamChain:
    def __init__(
        self,
        settings: Settings,
        slots: list[Slot],
        *,
        ledger: QuotaLedger,
        projects: Projects,
        prices: PriceTable,
        count_tokens: Callable[[str], int],
        metrics: Metrics,
        clock: Clock,
    ) -> None:
        if not slots:
            raise ValueError("at least one upstream is required")
        self.settings = settings
        self.slots = slots
        self.ledger = ledger
        self.projects = projects
        self.prices = prices
        self.count_tokens = count_tokens
        self.metrics = metrics
        self.clock = clock
        self.gate = QuotaGate(
            ledger, on_limit=settings.on_limit, max_wait_s=settings.max_queue_wait_s
        )
        self.counters: dict[str, int] = {"retries": 0, "fallbacks": 0, "rejections": 0}
        self._unpriced: set[str] = set()
        # Prompt texts counted ahead (`precount`), until their admission takes the count. A
        # request answered from the cache never takes its own: the oldest go past the bound.
        self._precounted: OrderedDict[str, int] = OrderedDict()

    # ------------------------------------------------------------------ calls

    async def send(
        self, flavor: Flavor, body: dict[str, Any], headers: dict[str, str], project: str
    ) -> UpstreamCall[UpstreamResponse]:
        async def call(slot: Slot, b: dict[str, Any]) -> UpstreamResponse:
            return await slot.client.send(flavor.upstream_path, b, headers, flavor.auth)

        return await self._forward(
            flavor, body, project, call, lambda r: r.status, lambda r: r.headers
        )

    async def stream(
        self, flavor: Flavor, body: dict[str, Any], headers: dict[str, str], project: str
    ) -> UpstreamCall[UpstreamStream]:
        async def call(slot: Slot, b: dict[str, Any]) -> UpstreamStream:
            up = await slot.client.stream(flavor.upstream_path, b, headers, flavor.auth)
            if up.status in RETRYABLE_STATUS:
                # Read the error body now, so a retry or fallback can still happen before
                # anything was sent to the client.
                data = b"".join([c async for c in up.chunks])
                return UpstreamStream(up.status, up.headers, _once(data))
            return up

        return await self._forward(
            flavor, body, project, call, lambda r: r.status, lambda r: r.headers
        )

    async def relay(
        self,
        method: str,
        path: str,
        content: bytes,
        headers: dict[str, str],
        params: list[tuple[str, str]],
        project: str,
    ) -> UpstreamStream:
        """Relay an API call the cache does not handle to the first upstream, counted as one
        request against rpm (its tokens are unknown here). Not retried: it may not be
        idempotent. Authenticated the way the caller authenticated itself."""
        path = checked_relay_path(path)  # never a URL off the upstream's base (checked twice)
        p = await self.projects.resolve(project)
        # A relayed call is judged by nobody: it must not take a half-open breaker's trial.
        slot = next((s for s in self.slots if s.breaker.state == "closed"), self.slots[0])
        scopes = (("project", p.name), ("upstream", slot.name), GLOBAL)
        held = await self.gate.acquire(scopes, 0, 0.0, p.priority)
        auth: AuthScheme = "x-api-key" if "x-api-key" in headers else "bearer"
        # The answer's head comes within the request's deadline, like every other call. Its
        # body is bounded per read by the upstream's timeout, not overall: a relayed file
        # download may rightly take longer than any chat answer.
        deadline = Deadline(self.clock, self.settings.request_deadline_s)
        async with Hold(self.gate, held, None) as hold:
            try:
                async with asyncio.timeout(deadline.left()):
                    up = await slot.client.raw(method, path, content, headers, params, auth)
            except TimeoutError:
                raise deadline.error() from None
            await hold.settle(NO_USAGE)
        return up

    async def ratelimit_headers(self, project: str) -> dict[str, str]:
        return await self.ledger.ratelimit_headers(("project", project))

    async def set_limits(self, kind: str, name: str, limits: Limits) -> dict[str, Any]:
        """Change a scope's limits at run time; returns its use under them."""
        await self.ledger.configure(kind, name, limits, at_run_time=True)
        self.gate.notify()  # a raised limit may admit queued requests at once
        return (await self.ledger.scope_use((kind, name))).as_json()

    async def status(self) -> dict[str, Any]:
        """Every scope's use, each upstream's breaker, and the chain's counters
        (`GET /v1/quota`)."""
        snap = (await self.ledger.snapshot()).as_json()
        snap["upstreams"] = [
            {"name": s.name, "models": s.models, "breaker": s.breaker.state} for s in self.slots
        ]
        snap["counters"] = dict(self.counters, queued=self.gate.waited)
        return snap

    # ------------------------------------------------------------------ the chain

    async def _admission(
        self, flavor: Flavor, body: dict[str, Any], project: str
    ) -> tuple[_Admission, dict[str, Any]]:
        p = await self.projects.resolve(project)
        requested = str(body.get("model"))
        cheaper = await self.projects.downgrade(p, requested)
        if cheaper is not None:
            body = {**body, "model": cheaper}
        model = cheaper or requested
        prompt, completion = await self._estimate(flavor.canonical(body))
        price = self.prices.get(model)
        if price is None:
            self._warn_unpriced(model)
        cost = price.cost(Usage(prompt, completion)) if price else 0.0
        admission = _Admission(
            p, model, requested if cheaper else None, prompt + completion, cost, price
        )
        return admission, body

    def precount(self, request: CanonicalRequest) -> None:
        """Counts the request's prompt tokens now, for its admission should it go upstream.
        Called while its prompt is embedded, when this thread would otherwise wait: a count
        took ~0.2 ms of a miss at that point (the model's pass leaves the tokenizer's tables
        out of the CPU caches), and a miss then waited for it."""
        text, _ = request.count_text()
        if len(text) > _INLINE_COUNT_CHARS or text in self._precounted:
            return
        self._precounted[text] = self.count_tokens(text)
        if len(self._precounted) > _PRECOUNTED:
            self._precounted.popitem(last=False)

    async def _estimate(self, request: CanonicalRequest) -> tuple[int, int]:
        """Prompt tokens (real tokenizer) and the completion the request may produce."""
        text, framing = request.count_text()
        prompt = self._precounted.pop(text, None)
        if prompt is None and len(text) > _INLINE_COUNT_CHARS:
            # A huge prompt (up to max_body_bytes) would stall the event loop for everyone.
            prompt = await asyncio.to_thread(self.count_tokens, text)
        elif prompt is None:
            prompt = self.count_tokens(text)
        completion = estimate_request_tokens(
            0, request.completion_cap, self.settings.default_completion_tokens
        )
        return prompt + framing, completion

    async def _forward(
        self,
        flavor: Flavor,
        body: dict[str, Any],
        project: str,
        call: Callable[[Slot, dict[str, Any]], Awaitable[T]],
        status_of: Callable[[T], int],
        headers_of: Callable[[T], dict[str, str]],
    ) -> UpstreamCall[T]:
        admission, body = await self._admission(flavor, body, project)
        chain = [s for s in self.slots if s.serves(admission.model)]
        if not chain:
            raise UpstreamUnavailable(f"no configured upstream serves model {admission.model!r}")
        deadline = Deadline(self.clock, self.settings.request_deadline_s)
        last_error: ServiceError | None = None
        last_failed: UpstreamCall[T] | None = None
        for position, slot in enumerate(chain):
            if deadline.left() <= 0:
                # No fallback starts past the deadline: what failed so far is the answer.
                if last_error is None and last_failed is None:
                    last_error = deadline.error()
                break
            if not slot.breaker.allow():
                continue
            if position > 0:
                self.counters["fallbacks"] += 1
                self.metrics.fallback(chain[position - 1].name, slot.name)
                log.warning("falling back", extra={"upstream": slot.name, "model": admission.model})
            try:
                outcome = await self._try_slot(
                    slot, body, admission, deadline, call, status_of, headers_of
                )
            except BaseException:
                # Refused by quota, cancelled...: the upstream was not judged, so a
                # half-open breaker's trial call is still to be made.
                slot.breaker.abandon()
                raise
            if isinstance(outcome, ServiceError):
                last_error, last_failed = outcome, None
            elif status_of(outcome.result) in RETRYABLE_STATUS:
                last_error, last_failed = None, outcome
            else:
                return outcome
        if last_failed is not None:
            # Every upstream failed with an HTTP error: relay the last one as it came
            # (its status, Retry-After and body), never as a 500 of ours.
            last_failed.info.ratelimit = await self.ratelimit_headers(admission.project.name)
            return last_failed
        if last_error is not None:
            raise last_error
        raise UpstreamUnavailable(
            "every upstream for this model is cooling down after repeated failures",
            code="upstreams_unavailable",
        )

    async def _try_slot(
        self,
        slot: Slot,
        body: dict[str, Any],
        a: _Admission,
        deadline: Deadline,
        call: Callable[[Slot, dict[str, Any]], Awaitable[T]],
        status_of: Callable[[T], int],
        headers_of: Callable[[T], dict[str, str]],
    ) -> UpstreamCall[T] | ServiceError:
        """One upstream, under quota, with retries: the answer (its hold still open), or how
        it failed last (an HTTP error's hold already released: failed calls cost nothing)."""
        project = a.project.name
        scopes = (("project", project), ("upstream", slot.name), GLOBAL)
        asked = time.perf_counter()
        try:
            held = await self.gate.acquire(scopes, a.tokens, a.cost, a.project.priority)
        except RateLimited as e:
            # A refusal is a proxied answer too: the caller's SDK reads these to pace itself.
            e.headers = {**await self.ratelimit_headers(project), **e.headers}
            self.counters["rejections"] += 1
            d = e.denial
            if d is not None:
                self.metrics.quota_rejection(d.scope_kind, d.scope_name, d.limit)
            raise
        waited = time.perf_counter() - asked
        if waited > 0.001:
            self.metrics.queue_wait(project, waited)
        hold = Hold(self.gate, held, a.price)
        info = CallInfo(slot.name, a.model, 0, a.downgraded_from, deadline=deadline)
        try:
            failed: ServiceError | UpstreamCall[T] = UpstreamUnavailable("no attempt made")
            for attempt in range(self.settings.max_retries + 1):
                info.attempts = attempt + 1
                retry_after: float | None = None
                started = time.perf_counter()
                left = deadline.left()
                if left <= 0:
                    failed = deadline.error()
                    break
                try:
                    # A timeout scope, not `wait_for`: that wraps the call in a task of its own
                    # (Python 3.11), a task and a loop turn more on every miss.
                    async with asyncio.timeout(left):
                        result = await call(slot, body)
                except TimeoutError:
                    failed = deadline.error()
                    self._observe(slot, None, started)
                    break
                except ServiceError as e:
                    failed = e
                    self._observe(slot, None, started)
                    if isinstance(e, UpstreamUnavailable) and not e.retryable:
                        break  # refused or no such host: asking again cannot help
                else:
                    status = status_of(result)
                    self._observe(slot, status, started)
                    if status not in RETRYABLE_STATUS:
                        if status < 500:
                            slot.breaker.success()
                        else:
                            slot.breaker.failure()
                        info.ratelimit = await self.ratelimit_headers(project)
                        return UpstreamCall(result, hold, info)
                    failed = UpstreamCall(result, hold, info)
                    retry_after = parse_retry_after(headers_of(result), self.clock.now())
                if attempt == self.settings.max_retries:
                    break
                delay = backoff_delay(
                    attempt,
                    base_s=self.settings.backoff_base_s,
                    max_s=self.settings.backoff_max_s,
                    retry_after_s=retry_after,
                    retry_after_cap_s=self.settings.retry_after_cap_s,
                )
                if delay >= deadline.left():
                    break  # a retry that could only start after the deadline is not made
                self.counters["retries"] += 1
                reason = (
                    str(status_of(failed.result)) if isinstance(failed, UpstreamCall) else "error"
                )
                self.metrics.retry(slot.name, reason)
                log.info(
                    "retrying upstream",
                    extra={
                        "upstream": slot.name,
                        "attempt": attempt + 1,
                        "delay_s": round(delay, 3),
                    },
                )
                await self.clock.sleep(delay)
            slot.breaker.failure()
            # Nothing was answered: the failed calls cost nothing, so free the quota.
            await hold.release()
            return failed
        except BaseException:
            # Cancelled or broken mid-retry: the reservation goes back, shielded so a
            # cancellation cannot stop it.
            await asyncio.shield(hold.release())
            raise

    def _observe(self, slot: Slot, status: int | None, started: float) -> None:
        self.metrics.upstream_call(slot.name, status, time.perf_counter() - started)

    def _warn_unpriced(self, model: str) -> None:
        # Once per model, and for a bounded number of them: model names come from requests.
        if model in self._unpriced or len(self._unpriced) >= 1000:
            return
        self._unpriced.add(model)
        log.warning(
            "model has no price: its spend counts as $0 against budgets "
            "(add it to prices, or set default_price)",
            extra={"model": model},
        )


async def _once(data: bytes) -> Any:
    yield data
