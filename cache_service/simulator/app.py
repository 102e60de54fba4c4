"""The simulator application: its routes, the `/_sim/*` control API and the error handler."""

from __future__ import annotations

from dataclasses import asdict, fields, replace

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from cache_service.simulator.anthropic import anthropic_messages
from cache_service.simulator.embeddings import create_embeddings
from cache_service.simulator.errors import (
    BadRequest,
    bad_request,
    error_response,
    is_seconds,
    parse_json,
    require_object,
)
from cache_service.simulator.openai_chat import chat_completions
from cache_service.simulator.responses import create_response
from cache_service.simulator.state import (
    SimConfig,
    SimState,
    apply_fault,
    parse_fault,
    sim_of,
)

_CREATED_MODELS = 1_700_000_000
_CONFIG_NUMBERS = frozenset({"latency_ms", "stream_chunk_delay_ms", "retry_after_s"})

_MODELS: tuple[tuple[str, str], ...] = (
    ("gpt-4o-mini", "openai"),
    ("gpt-4o", "openai"),
    ("gpt-4.1", "openai"),
    ("gpt-4.1-mini", "openai"),
    ("gpt-4.1-nano", "openai"),
    ("text-embedding-3-small", "openai"),
    ("claude-3-5-haiku-latest", "anthropic"),
    ("claude-3-5-sonnet-latest", "anthropic"),
)


async def _models(request: Request) -> Response:
    """The model list; it takes the next queued fault too, so relayed calls can be faulted."""
    sim = sim_of(request)
    sim.record(request, completion=False)
    error = await apply_fault(sim.take_fault(request), "openai", False, sim.config)
    if error is not None:
        return error
    data = [
        {"id": model, "object": "model", "created": _CREATED_MODELS, "owned_by": owner}
        for model, owner in _MODELS
    ]
    return JSONResponse({"object": "list", "data": data})


async def _healthz() -> Response:
    return JSONResponse({"status": "ok"})


# ---------------------------------------------------------------------------------------------
# The control API


async def _sim_faults(request: Request) -> Response:
    sim = sim_of(request)
    try:
        body = require_object(parse_json(await request.body()))
        specs = body.get("faults")
        if not isinstance(specs, list):
            raise BadRequest("'faults' must be an array.", "faults")
        defaults: dict[str, float] = {}
        for key, kind in (
            ("retry_after", "429"),
            ("slow_s", "slow"),
            ("timeout_s", "timeout"),
            ("hang_s", "hang"),
            ("drip_s", "drip"),
        ):
            value = body.get(key)
            if value is None:
                continue
            if not is_seconds(value):
                raise BadRequest(f"'{key}' must be a non-negative number of seconds.", key)
            defaults[kind] = float(value)
        # Parse all before queueing any, so a typo leaves the queue as it was.
        parsed = [parse_fault(spec, defaults) for spec in specs]
    except BadRequest as exc:
        return bad_request("openai", exc)
    sim.faults.extend(parsed)
    return JSONResponse({"queued_faults": len(sim.faults)})


async def _sim_stats(request: Request) -> Response:
    return JSONResponse(sim_of(request).stats())


async def _sim_reset(request: Request) -> Response:
    sim = sim_of(request)
    sim.reset()
    return JSONResponse(sim.stats())


async def _sim_config(request: Request) -> Response:
    sim = sim_of(request)
    try:
        body = require_object(parse_json(await request.body()))
        known = {f.name for f in fields(SimConfig)}
        unknown = sorted(set(body) - known)
        if unknown:
            raise BadRequest(f"Unknown config keys: {unknown}; known: {sorted(known)}.")
        for key, value in body.items():
            if key in _CONFIG_NUMBERS and not is_seconds(value):
                raise BadRequest(f"'{key}' must be a non-negative number.", key)
            if key == "seed" and not isinstance(value, str):
                raise BadRequest("'seed' must be a string.", key)
    except BadRequest as exc:
        return bad_request("openai", exc)
    sim.config = replace(sim.config, **body)
    return JSONResponse({"config": asdict(sim.config)})


async def _http_error(request: Request, exc: Exception) -> Response:
    # Unknown routes and wrong methods answer in the OpenAI error shape, like the real API.
    if not isinstance(exc, StarletteHTTPException):  # pragma: no cover - registered for it
        raise exc
    message = f"{exc.detail}: {request.method} {request.url.path}"
    # Keep Starlette's headers: a 405 must still say which methods are allowed.
    return error_response(
        "openai", exc.status_code, message, "invalid_request_error", headers=exc.headers
    )


# ---------------------------------------------------------------------------------------------
# Public entry points


def create_simulated_app(config: SimConfig | None = None) -> FastAPI:
    """Build a fresh simulator; every instance has its own counters, queue and config."""
    initial = replace(config) if config is not None else SimConfig()
    app = FastAPI(title="Simulated LLM upstream", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.sim = SimState(initial=initial, config=replace(initial))
    app.add_api_route("/v1/chat/completions", chat_completions, methods=["POST"])
    app.add_api_route("/v1/responses", create_response, methods=["POST"])
    app.add_api_route("/v1/messages", anthropic_messages, methods=["POST"])
    app.add_api_route("/v1/embeddings", create_embeddings, methods=["POST"])
    app.add_api_route("/v1/models", _models, methods=["GET"])
    app.add_api_route("/healthz", _healthz, methods=["GET"])
    app.add_api_route("/_sim/faults", _sim_faults, methods=["POST"])
    app.add_api_route("/_sim/stats", _sim_stats, methods=["GET"])
    app.add_api_route("/_sim/reset", _sim_reset, methods=["POST"])
    app.add_api_route("/_sim/config", _sim_config, methods=["POST"])
    app.add_exception_handler(StarletteHTTPException, _http_error)
    return app


def run_simulated(host: str, port: int, config: SimConfig) -> None:
    """Serve a simulator until interrupted (blocking)."""
    uvicorn.run(create_simulated_app(config), host=host, port=port, log_level="warning")
