"""Everything between a cache miss and the upstream: quota admission (queue or 429),
the fallback chain, retries with backoff, circuit breakers, settlement, spend persistence
and alerts. The pipeline asks for an answer; this module decides if, where and when.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import heapq
import itertools
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from cache_service.backends.journal import SpendJournal
from cache_service.backends.jsonfile import JsonFile
from cache_service.errors import Forbidden, RateLimited, ServiceError, UpstreamUnavailable
from cache_service.pricing import PriceTable
from cache_service.protocols import Clock, Upstream, UpstreamResponse, UpstreamStream
from cache_service.quota.alerts import AlertTracker
from cache_service.quota.estimate import estimate_request_tokens
from cache_service.quota.limits import Denial, Limits, Scope
from cache_service.quota.manager import QuotaManager, Reservation
from cache_service.resilience import (
    RETRYABLE_STATUS,
    CircuitBreaker,
    backoff_delay,
    parse_retry_after,
)
from cache_service.settings import ProjectSetting, Settings
from cache_service.telemetry import Metrics

log = logging.getLogger("cache_service.quota")

GLOBAL: Scope = ("global", "total")
T = TypeVar("T", UpstreamResponse, UpstreamStream)


@dataclass(slots=True)
class Slot:
    name: str
    client: Upstream
    models: list[str]
    breaker: CircuitBreaker

    def serves(self, model: str) -> bool:
        return any(fnmatch.fnmatchcase(model, pattern) for pattern in self.models)


@dataclass(slots=True)
class Ticket:
    """One admitted upstream call: settle it with the real usage once known."""

    reservation: Reservation
    upstream: str
    model: str
    project: str
    attempts: int = 1
    downgraded_from: str | None = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class _Failed(Generic[T]):
    """An upstream's last HTTP error answer, kept to relay if no fallback does better."""

    result: T
    ticket: Ticket


@dataclass(order=True, slots=True)
class _Waiter:
    rank: tuple[int, int]
    scopes: tuple[Scope, ...] = field(compare=False)
    tokens: int = field(compare=False)
    cost: float = field(compare=False)
    future: asyncio.Future[Reservation] = field(compare=False)


class QuotaGate:
    """Admission with an async queue in front of the pure QuotaManager.

    Waiters are served highest priority first, FIFO within a priority. A waiter refused on
    a scope blocks every later waiter needing that scope (so a busy low-priority stream
    cannot starve a high-priority one) but not waiters on other scopes.
    """

    def __init__(self, manager: QuotaManager, *, on_limit: str, max_wait_s: float) -> None:
        self.manager = manager
        self.on_limit = on_limit
        self.max_wait_s = max_wait_s
        self._queue: list[_Waiter] = []
        self._seq = itertools.count()
        self._changed = asyncio.Event()
        self._pump: asyncio.Task[None] | None = None
        self.waited = 0

    def notify(self) -> None:
        """Something was released or settled: queued requests may fit now."""
        self._changed.set()

    async def acquire(
        self, scopes: tuple[Scope, ...], tokens: int, cost: float, priority: int
    ) -> Reservation:
        if not self._queue:
            result = self.manager.reserve(scopes, tokens, cost)
            if isinstance(result, Reservation):
                return result
            denial: Denial | None = result
        else:
            # Others queued first: even if room exists now, it is theirs before ours.
            denial = self.manager.check(scopes, tokens, cost)
        if denial is not None and (
            self.on_limit == "reject"
            or not denial.retryable
            or denial.retry_after_s > self.max_wait_s
        ):
            raise _limit_error(denial)
        future: asyncio.Future[Reservation] = asyncio.get_running_loop().create_future()
        waiter = _Waiter((-priority, next(self._seq)), scopes, tokens, cost, future)
        heapq.heappush(self._queue, waiter)
        if self._pump is None or self._pump.done():
            self._pump = asyncio.create_task(self._run())
        self.notify()
        self.waited += 1
        try:
            return await asyncio.wait_for(asyncio.shield(future), self.max_wait_s)
        except TimeoutError:
            if future.done() and not future.cancelled():
                return future.result()  # admitted at the last moment
            future.cancel()
            last = self.manager.check(scopes, tokens, cost) or denial
            if last is None:  # room appeared but others still hold the queue
                last = Denial(*scopes[0], "rpm", 1.0, True, "too many requests are queued")
            raise _limit_error(last, waited=self.max_wait_s) from None
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.manager.release(future.result())
            future.cancel()
            raise

    async def _run(self) -> None:
        while self._queue:
            self._changed.clear()
            blocked: set[Scope] = set()
            next_try = math.inf
            kept: list[_Waiter] = []
            for waiter in sorted(self._queue):
                if waiter.future.done():
                    continue
                if blocked.intersection(waiter.scopes):
                    kept.append(waiter)
                    continue
                result = self.manager.reserve(waiter.scopes, waiter.tokens, waiter.cost)
                if isinstance(result, Reservation):
                    waiter.future.set_result(result)
                else:
                    blocked.add(result.scope)
                    next_try = min(next_try, result.retry_after_s)
                    kept.append(waiter)
            self._queue = kept
            heapq.heapify(self._queue)
            if not self._queue:
                return
            # Wake when the earliest limit clears, or sooner if a settlement frees room.
            with_timeout = min(max(next_try, 0.01), 1.0)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), with_timeout)


def _limit_error(denial: Denial, waited: float | None = None) -> RateLimited:
    headers = {}
    retry = denial.retry_after_header()
    if retry is not None:
        headers["retry-after"] = retry
    suffix = f" (waited {waited:g} s in the queue)" if waited else ""
    error = RateLimited(
        f"Rate limit reached: {denial.message}{suffix}.",
        param=None,
        code=f"{denial.scope_kind}_{denial.limit}_exceeded",
        headers=headers,
    )
    error.denial = denial
    return error


class Forwarder:
    def __init__(
        self,
        settings: Settings,
        slots: list[Slot],
        *,
        clock: Clock,
        prices: PriceTable,
        count_tokens: Callable[[str], int],
        ledger: JsonFile | None = None,
        journal: SpendJournal | None = None,
        on_alert: Callable[[dict[str, Any]], Coroutine[Any, Any, None]] | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if not slots:
            raise ValueError("at least one upstream is required")
        self.settings = settings
        self.slots = slots
        self.clock = clock
        self.prices = prices
        self.count_tokens = count_tokens
        self.ledger = ledger
        self.journal = journal
        self.on_alert = on_alert
        self.sleep = sleep
        self.manager = QuotaManager(clock)
        self.gate = QuotaGate(
            self.manager, on_limit=settings.on_limit, max_wait_s=settings.max_queue_wait_s
        )
        self.alerts = AlertTracker(settings.alerts.thresholds)
        self.projects = {p.name: p for p in settings.projects}
        self.counters: dict[str, int] = {"retries": 0, "fallbacks": 0, "rejections": 0}
        self._dirty = False
        self._seen_projects: set[str] = set()
        self._unpriced: set[str] = set()
        self.metrics: Metrics | None = None
        self._configure()
        if ledger is not None:
            self._recover(ledger)

    def _recover(self, ledger: JsonFile) -> None:
        """Spend as of the last snapshot plus what the journal recorded after it. The result
        is written as a new snapshot at once, before any new journal segment is opened, so a
        crash at any point here leaves either the old pair or the new one."""
        saved = ledger.load()
        covered = int(saved.get("journal_seq", 0))
        events, last = self.journal.recover(after=covered) if self.journal else ([], covered)
        if saved or events:
            self.manager.restore_spend(saved.get("spend"), events)
            self.alerts.import_fired(saved.get("alerts", []))
        if self.journal is None:
            return
        if events:
            log.info("spend recovered from journal", extra={"events": len(events)})
        if last > covered:
            ledger.save(self._snapshot(last))
        self.journal.start(last + 1)
        self.manager.on_spend = self.journal.append

    def _configure(self) -> None:
        st = self.settings
        self.manager.configure(
            *GLOBAL,
            Limits(
                daily_budget_usd=st.total_daily_budget_usd,
                monthly_budget_usd=st.total_monthly_budget_usd,
            ),
        )
        for u in st.upstreams:
            self.manager.configure(
                "upstream", u.name, Limits(rpm=u.rpm, tpm=u.tpm, rpd=u.rpd, tpd=u.tpd)
            )
        for p in st.projects:
            self.manager.configure("project", p.name, _limits(p))

    def project(self, name: str) -> tuple[str, ProjectSetting | None]:
        """The quota project a request counts against, and its setting.

        A project not listed gets the "default" project's limits in a scope of its own, so a
        new name can neither escape limits nor eat another project's allocation. Names come
        from a request header, so only `max_projects` of them get scopes; past that, unknown
        names share the "default" scope instead of growing state without bound.
        """
        setting = self.projects.get(name)
        if setting is None and self.settings.unlisted_projects == "reject":
            raise Forbidden(
                f"project {name!r} is not configured in this sidecar (X-Project-Id)",
                param="X-Project-Id",
                code="unknown_project",
            )
        if setting is not None or name in self._seen_projects:
            return name, setting or self.projects.get("default")
        if len(self._seen_projects) >= self.settings.max_projects:
            return "default", self.projects.get("default")
        self._seen_projects.add(name)
        default = self.projects.get("default")
        if default is not None:
            self.manager.configure("project", name, _limits(default))
        return name, default

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

    def set_limits(self, kind: str, name: str, limits: Limits) -> None:
        self.manager.configure(kind, name, limits)
        self.gate.notify()

    # ------------------------------------------------------------------ estimates

    async def estimate(self, body: dict[str, Any]) -> tuple[int, int]:
        """Prompt tokens (real tokenizer) and the completion the request may produce."""
        text, framing = self._prompt_text(body)
        # A short prompt is counted in ~50 µs, cheaper than a thread hop; a huge one (up to
        # max_body_bytes) would stall the event loop for everyone, so it goes to a thread.
        if len(text) > 20_000:
            prompt = await asyncio.to_thread(self.count_tokens, text)
        else:
            prompt = self.count_tokens(text)
        max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
        completion = estimate_request_tokens(
            0,
            max_tokens if isinstance(max_tokens, int) else None,
            self.settings.default_completion_tokens,
        )
        return prompt + framing, completion

    @staticmethod
    def _prompt_text(body: dict[str, Any]) -> tuple[str, int]:
        # Message texts only, plus ~4 tokens of framing per message as chat formats add;
        # structured parts (tools, images) are counted from their JSON.
        parts: list[str] = []
        framing = 0
        for m in body.get("messages") or []:
            framing += 4
            content = m.get("content") if isinstance(m, dict) else m
            parts.append(content if isinstance(content, str) else json.dumps(content))
        for key in ("system", "tools"):
            if body.get(key):
                value = body[key]
                parts.append(value if isinstance(value, str) else json.dumps(value))
        return "\n".join(parts), framing

    # ------------------------------------------------------------------ forwarding

    async def send(
        self, path: str, body: dict[str, Any], headers: dict[str, str], project: str
    ) -> tuple[UpstreamResponse, Ticket]:
        async def call(slot: Slot, b: dict[str, Any]) -> UpstreamResponse:
            return await slot.client.send(path, b, headers)

        return await self._forward(body, project, call, lambda r: r.status, lambda r: r.headers)

    async def stream(
        self, path: str, body: dict[str, Any], headers: dict[str, str], project: str
    ) -> tuple[UpstreamStream, Ticket]:
        async def call(slot: Slot, b: dict[str, Any]) -> UpstreamStream:
            up = await slot.client.stream(path, b, headers)
            if up.status in RETRYABLE_STATUS:
                # Read the error body now, so a retry or fallback can still happen before
                # anything was sent to the client.
                data = b"".join([c async for c in up.chunks])
                return UpstreamStream(up.status, up.headers, _once(data))
            return up

        return await self._forward(body, project, call, lambda r: r.status, lambda r: r.headers)

    async def passthrough(
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
        idempotent."""
        project, setting = self.project(project)
        # A relayed call is judged by nobody: it must not take a half-open breaker's trial.
        slot = next((s for s in self.slots if s.breaker.state == "closed"), self.slots[0])
        scopes = (("project", project), ("upstream", slot.name), GLOBAL)
        reservation = await self.gate.acquire(scopes, 0, 0.0, setting.priority if setting else 1)
        try:
            up = await slot.client.raw(method, path, content, headers, params)
        except BaseException:
            self.manager.release(reservation)
            self.gate.notify()
            raise
        self.manager.settle(reservation, 0, 0.0)
        return up

    async def _forward(
        self,
        body: dict[str, Any],
        project: str,
        call: Callable[[Slot, dict[str, Any]], Awaitable[T]],
        status_of: Callable[[T], int],
        headers_of: Callable[[T], dict[str, str]],
    ) -> tuple[T, Ticket]:
        project, setting = self.project(project)
        body, downgraded_from = self._maybe_downgrade(body, setting, project)
        model = str(body.get("model"))
        chain = [s for s in self.slots if s.serves(model)]
        if not chain:
            raise UpstreamUnavailable(f"no configured upstream serves model {model!r}")
        prompt, completion = await self.estimate(body)
        tokens = prompt + completion
        price = self.prices.get(model)
        if price is None:
            self._warn_unpriced(model)
        cost = price.cost(prompt, completion) if price else 0.0
        priority = setting.priority if setting else 1
        last_error: ServiceError | None = None
        last_result: T | None = None
        last_ticket: Ticket | None = None
        for position, slot in enumerate(chain):
            if not slot.breaker.allow():
                continue
            if position > 0:
                self.counters["fallbacks"] += 1
                if self.metrics is not None:
                    self.metrics.fallback(chain[position - 1].name, slot.name)
                log.warning("falling back", extra={"upstream": slot.name, "model": model})
            try:
                outcome = await self._try_slot(
                    slot,
                    body,
                    project,
                    model,
                    tokens,
                    cost,
                    priority,
                    downgraded_from,
                    call,
                    status_of,
                    headers_of,
                )
            except BaseException:
                # Refused by quota, cancelled...: the upstream was not judged, so a
                # half-open breaker's trial call is still to be made.
                slot.breaker.abandon()
                raise
            if isinstance(outcome, tuple):
                return outcome
            if isinstance(outcome, ServiceError):
                last_error, last_result = outcome, None
            else:
                last_error, last_result, last_ticket = None, outcome.result, outcome.ticket
        if last_result is not None and last_ticket is not None:
            # Every upstream failed with an HTTP error: relay the last one as it came
            # (its status, Retry-After and body), never as a 500 of ours.
            last_ticket.headers = self.ratelimit_headers(project)
            return last_result, last_ticket
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
        project: str,
        model: str,
        tokens: int,
        cost: float,
        priority: int,
        downgraded_from: str | None,
        call: Callable[[Slot, dict[str, Any]], Awaitable[T]],
        status_of: Callable[[T], int],
        headers_of: Callable[[T], dict[str, str]],
    ) -> tuple[T, Ticket] | ServiceError | _Failed[T]:
        """One upstream, under quota, with retries: the answer, or how it failed last."""
        scopes = (("project", project), ("upstream", slot.name), GLOBAL)
        asked = time.perf_counter()
        try:
            reservation = await self.gate.acquire(scopes, tokens, cost, priority)
        except RateLimited as e:
            # A refusal is a proxied answer too: the caller's SDK reads these to pace itself.
            e.headers = {**self.ratelimit_headers(project), **e.headers}
            self.counters["rejections"] += 1
            d = e.denial
            if self.metrics is not None and d is not None:
                self.metrics.quota_rejection(d.scope_kind, d.scope_name, d.limit)
            raise
        waited = time.perf_counter() - asked
        if waited > 0.001 and self.metrics is not None:
            self.metrics.queue_wait(project, waited)
        ticket = Ticket(reservation, slot.name, model, project, 0, downgraded_from)
        failed: ServiceError | _Failed[T] = UpstreamUnavailable("no attempt made")
        for attempt in range(self.settings.max_retries + 1):
            ticket.attempts = attempt + 1
            retry_after: float | None = None
            started = time.perf_counter()
            try:
                result = await call(slot, body)
            except ServiceError as e:
                failed = e
                self._observe(slot, None, started)
            else:
                status = status_of(result)
                self._observe(slot, status, started)
                if status not in RETRYABLE_STATUS:
                    if status < 500:
                        slot.breaker.success()
                    else:
                        slot.breaker.failure()
                    ticket.headers = self.ratelimit_headers(project)
                    return result, ticket
                failed = _Failed(result, ticket)
                retry_after = parse_retry_after(headers_of(result))
            if attempt == self.settings.max_retries:
                break
            delay = backoff_delay(
                attempt,
                base_s=self.settings.backoff_base_s,
                max_s=self.settings.backoff_max_s,
                retry_after_s=retry_after,
                retry_after_cap_s=self.settings.retry_after_cap_s,
            )
            self.counters["retries"] += 1
            if self.metrics is not None:
                reason = str(status_of(failed.result)) if isinstance(failed, _Failed) else "error"
                self.metrics.retry(slot.name, reason)
            log.info(
                "retrying upstream",
                extra={"upstream": slot.name, "attempt": attempt + 1, "delay_s": round(delay, 3)},
            )
            await self.sleep(delay)
        slot.breaker.failure()
        # Nothing was answered: the failed calls cost nothing, so free the quota.
        self.release(ticket)
        return failed

    def _observe(self, slot: Slot, status: int | None, started: float) -> None:
        if self.metrics is not None:
            self.metrics.upstream_call(slot.name, status, time.perf_counter() - started)

    def _maybe_downgrade(
        self, body: dict[str, Any], setting: ProjectSetting | None, project: str
    ) -> tuple[dict[str, Any], str | None]:
        """Past the configured share of a budget, misses go to the cheaper model."""
        if setting is None or setting.downgrade is None:
            return body, None
        snap = self.manager.scope_snapshot(("project", project))
        for window in ("daily_budget", "monthly_budget"):
            w = snap.get(window) or {}
            limit, used = w.get("limit"), w.get("used")
            if limit and used is not None and used >= setting.downgrade.at * limit:
                original = str(body.get("model"))
                if original == setting.downgrade.model:
                    return body, None
                return {**body, "model": setting.downgrade.model}, original
        return body, None

    # ------------------------------------------------------------------ settlement

    def settle(self, ticket: Ticket, prompt_tokens: int, completion_tokens: int) -> float:
        """Charge the real usage; returns its cost. An answer without usage is charged at
        the estimate, since the upstream billed something we cannot see."""
        reservation = ticket.reservation
        if prompt_tokens or completion_tokens:
            cost = self.prices.cost(ticket.model, prompt_tokens, completion_tokens)
            tokens = prompt_tokens + completion_tokens
        else:
            cost, tokens = reservation.cost_usd, reservation.tokens
        self.manager.settle(reservation, tokens, cost)
        self.gate.notify()
        self._after_change()
        return cost

    def release(self, ticket: Ticket) -> None:
        self.manager.release(ticket.reservation)
        self.gate.notify()
        # Nothing spent, but the journal took a hold and its release: a snapshot lets it
        # drop them, or an upstream that only ever fails would grow the journal for good.
        self._dirty = True

    def _after_change(self) -> None:
        for alert in self.manager.check_alerts(self.alerts):
            payload = {
                "event": "quota_alert",
                "scope_kind": alert.scope_kind,
                "scope_name": alert.scope_name,
                "limit": alert.limit,
                "window": alert.window,
                "threshold": alert.threshold,
                "used": alert.used,
                "limit_value": alert.limit_value,
                "message": alert.message,
            }
            log.warning(alert.message, extra={"alert": payload})  # "message" is reserved
            if self.on_alert is not None:
                asyncio.get_running_loop().create_task(self.on_alert(payload))
        self._dirty = True

    async def persist_forever(self, interval_s: float = 1.0) -> None:
        """Snapshot spend at most once a second, written off the event loop: an fsync per
        request would cost more than the request. The journal holds what happened since."""
        while True:
            await asyncio.sleep(interval_s)
            checkpoint = self._checkpoint()
            if checkpoint is None:
                continue
            try:
                await asyncio.to_thread(self._write_checkpoint, *checkpoint)
            except OSError:
                # The journal segments stay until a snapshot covering them is written, so
                # nothing is lost; try again next time instead of ending the task.
                log.exception("spend snapshot failed; retrying")
                self._dirty = True

    def close(self) -> None:
        checkpoint = self._checkpoint()
        if checkpoint is not None:
            self._write_checkpoint(*checkpoint)
        if self.journal is not None:
            self.journal.close()

    def _checkpoint(self) -> tuple[dict[str, Any], int] | None:
        """Spend now and the journal segment it covers, taken together on the event loop so
        no event falls between them."""
        if self.ledger is None or not self._dirty:
            return None
        self._dirty = False
        covered = self.journal.rotate() if self.journal is not None else 0
        return self._snapshot(covered), covered

    def _write_checkpoint(self, data: dict[str, Any], covered: int) -> None:
        assert self.ledger is not None
        self.ledger.save(data)
        if self.journal is not None:
            self.journal.remove_through(covered)

    def _snapshot(self, journal_seq: int) -> dict[str, Any]:
        """What the spend file holds: spend, fired alerts, and the last journal segment
        already counted in them."""
        return {
            "spend": self.manager.export_spend(),
            "alerts": self.alerts.export_fired(),
            "journal_seq": journal_seq,
        }

    # ------------------------------------------------------------------ reporting

    def ratelimit_headers(self, project: str) -> dict[str, str]:
        return self.manager.ratelimit_headers(("project", project))

    def snapshot(self) -> dict[str, Any]:
        snap = self.manager.snapshot()
        snap["upstreams"] = [
            {"name": s.name, "models": s.models, "breaker": s.breaker.state} for s in self.slots
        ]
        snap["counters"] = dict(self.counters, queued=self.gate.waited)
        return snap


def _limits(p: ProjectSetting) -> Limits:
    return Limits(
        rpm=p.rpm,
        tpm=p.tpm,
        daily_budget_usd=p.daily_budget_usd,
        monthly_budget_usd=p.monthly_budget_usd,
        rpd=p.rpd,
        tpd=p.tpd,
    )


async def _once(data: bytes) -> Any:
    yield data
