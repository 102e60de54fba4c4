"""A simulator's runtime state: its config, counters and fault queue, how a fault is parsed and
what it does to a request, and the common start of every completion endpoint."""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from fastapi import Request
from fastapi.responses import Response

from cache_service.simulator.delivery import ResetResponse, deliver
from cache_service.simulator.errors import (
    Api,
    BadRequest,
    bad_request,
    error_response,
    is_seconds,
    parse_json,
    require_object,
)


@dataclass
class SimConfig:
    latency_ms: float = 0
    """Base latency before answering (before the first byte of a stream)."""
    stream_chunk_delay_ms: float = 0
    retry_after_s: float = 1
    """Retry-After for a 429 fault that does not name its own."""
    seed: str = ""
    """Mixed into every answer's hash, so two simulators can disagree on purpose."""


_DEFAULT_SLOW_S = 5.0
_DEFAULT_TIMEOUT_S = 60.0
_DEFAULT_HANG_S = 3600.0
_FAULT_KINDS = frozenset(
    {"ok", "401", "429", "500", "503", "slow", "timeout", "drop"}
    | {"reset", "hang", "drip", "garbage", "gzip"}
)
_TIMED_FAULTS = frozenset({"429", "slow", "timeout", "hang", "drip"})
GARBAGE_BODY = b'{"nope": 1}'
"""A `garbage` fault's 200: JSON, but no answer of any API."""


@dataclass(frozen=True, slots=True)
class Fault:
    kind: str
    seconds: float | None = None
    """Retry-After for 429, the sleep for slow/timeout/hang, the pause between a drip's
    bytes; None means the configured default."""


@dataclass
class SimState:
    initial: SimConfig
    config: SimConfig
    faults: deque[Fault] = field(default_factory=deque)
    requests: int = 0
    by_path: dict[str, int] = field(default_factory=dict)
    faults_served: int = 0
    streams: int = 0
    last_authorization: str | None = None
    last_request: Any = None

    def reset(self) -> None:
        self.config = replace(self.initial)
        self.faults.clear()
        self.requests = 0
        self.by_path = {}
        self.faults_served = 0
        self.streams = 0
        self.last_authorization = None
        self.last_request = None

    def record(self, request: Request, *, completion: bool) -> None:
        path = request.url.path
        self.by_path[path] = self.by_path.get(path, 0) + 1
        self.last_authorization = request.headers.get("authorization")
        if completion:
            self.requests += 1

    def take_fault(self, request: Request) -> Fault | None:
        header = request.headers.get("x-sim-fault")
        if header is not None:
            fault: Fault | None = parse_fault(header, {})
        else:
            fault = self.faults.popleft() if self.faults else None
        if fault is not None and fault.kind != "ok":
            self.faults_served += 1
        return fault

    def stats(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "by_path": dict(self.by_path),
            "faults_served": self.faults_served,
            "queued_faults": len(self.faults),
            "streams": self.streams,
            "last_authorization": self.last_authorization,
            "last_request": self.last_request,
            "config": asdict(self.config),
        }

    async def pause(self) -> SimConfig:
        """Sleep the configured base latency; returns the config the answer is built with."""
        config = self.config
        if config.latency_ms > 0:
            await asyncio.sleep(config.latency_ms / 1000)
        return config


# ---------------------------------------------------------------------------------------------
# Faults


def parse_fault(spec: Any, defaults: Mapping[str, float]) -> Fault:
    if isinstance(spec, bool) or not isinstance(spec, str | int):
        raise BadRequest(f"A fault must be a string, got {spec!r}.", "faults")
    kind, sep, arg = str(spec).strip().lower().partition(":")
    if kind not in _FAULT_KINDS:
        raise BadRequest(
            f"Unknown fault {spec!r}; expected one of {sorted(_FAULT_KINDS)}.", "faults"
        )
    if not sep:
        return Fault(kind, defaults.get(kind))
    if kind not in _TIMED_FAULTS:
        raise BadRequest(f"Fault {kind!r} takes no ':<seconds>' argument.", "faults")
    try:
        seconds = float(arg)
    except ValueError:
        seconds = -1.0
    if not is_seconds(seconds):
        raise BadRequest(f"Bad seconds in fault {spec!r}.", "faults")
    return Fault(kind, seconds)


async def apply_fault(
    fault: Fault | None, api: Api, stream: bool, config: SimConfig
) -> Response | None:
    """Return the error that replaces the answer, or None to answer (perhaps after a sleep;
    `drip` and `gzip` change how the answer is delivered, in `delivery.deliver`)."""
    if fault is None or fault.kind in ("ok", "drip", "gzip") or (fault.kind == "drop" and stream):
        return None
    if fault.kind == "reset":
        return ResetResponse()
    if fault.kind == "hang":
        # Accepted, and never answered: the client gives up first (or the line dies).
        await asyncio.sleep(fault.seconds if fault.seconds is not None else _DEFAULT_HANG_S)
        return ResetResponse()
    if fault.kind == "garbage":
        return Response(GARBAGE_BODY, status_code=200, media_type="application/json")
    if fault.kind == "429":
        seconds = fault.seconds if fault.seconds is not None else config.retry_after_s
        # Retry-After only allows whole seconds; the ms header (which the openai SDK prefers)
        # carries the exact value.
        headers = {
            "retry-after": str(math.ceil(seconds)),
            "retry-after-ms": str(int(seconds * 1000)),
        }
        return error_response(
            api,
            429,
            "Rate limit reached (simulated). Please try again later.",
            "rate_limit_error",
            code="rate_limit_exceeded",
            headers=headers,
        )
    if fault.kind == "401":
        return error_response(
            api,
            401,
            "Incorrect API key provided (simulated).",
            "authentication_error" if api == "anthropic" else "invalid_request_error",
            code="invalid_api_key",
        )
    if fault.kind in ("500", "503", "drop"):
        status = 503 if fault.kind == "503" else 500
        kind = "api_error" if api == "anthropic" else "server_error"
        if api == "anthropic" and status == 503:
            kind = "overloaded_error"
        return error_response(
            api,
            status,
            f"The server had an error while processing your request (simulated {fault.kind}).",
            kind,
        )
    if fault.kind == "slow":
        await asyncio.sleep(fault.seconds if fault.seconds is not None else _DEFAULT_SLOW_S)
    elif fault.kind == "timeout":
        await asyncio.sleep(fault.seconds if fault.seconds is not None else _DEFAULT_TIMEOUT_S)
    return None


# ---------------------------------------------------------------------------------------------
# The start of a completion request


def sim_of(request: Request) -> SimState:
    state = request.app.state.sim
    if not isinstance(state, SimState):  # pragma: no cover - only if someone replaced it
        raise TypeError("app.state.sim is not a simulator state")
    return state


@dataclass(frozen=True, slots=True)
class Admitted:
    """A completion request that got past its fault: the body still to be validated."""

    sim: SimState
    body: Any
    parse_error: BadRequest | None
    fault: Fault | None

    @property
    def drop(self) -> bool:
        return self.fault is not None and self.fault.kind == "drop"

    def deliver(self, response: Response) -> Response:
        """The answer as this request's fault (if any) delivers it."""
        if self.fault is None:
            return response
        return deliver(self.fault.kind, self.fault.seconds, response)

    def json_object(self) -> dict[str, Any]:
        """The body as an object, or the 400 its parse (or its type) deserves."""
        if self.parse_error is not None:
            raise self.parse_error
        return require_object(self.body)


async def admit(request: Request, api: Api) -> Admitted | Response:
    """What every completion endpoint does first: count the request, read its body (a parse
    error is kept for later, so a fault still wins over it), then take the next fault and apply
    it. Returns the fault's error, or the request to answer."""
    sim = sim_of(request)
    sim.record(request, completion=True)
    try:
        body: Any = parse_json(await request.body())
        parse_error = None
    except BadRequest as exc:
        body, parse_error = None, exc
    sim.last_request = body
    try:
        fault = sim.take_fault(request)
    except BadRequest as exc:
        return bad_request(api, exc)
    wants_stream = isinstance(body, dict) and body.get("stream") is True
    faulted = await apply_fault(fault, api, wants_stream, sim.config)
    if faulted is not None:
        return faulted
    return Admitted(sim, body, parse_error, fault)
