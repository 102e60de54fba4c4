"""GET /metrics (Prometheus) and GET /v1/cache/report, from the telemetry in the app state."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from cache_service.api import state
from cache_service.api.auth import fleet_view
from cache_service.api.body import lower_headers
from cache_service.api.openapi import error_responses
from cache_service.cache.feedback import quality_view
from cache_service.errors import BadRequest
from cache_service.report.build import ReportError, build_report, parse_since
from cache_service.report.formats import FORMATS, render
from cache_service.telemetry.outcome_log import OutcomeFilter

# Only its own failures: these routes read no body and call no upstream.
router = APIRouter(responses=error_responses(statuses=(400, 500)))


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    fleet_view(request, "/metrics")
    telemetry = state.of(request)["telemetry"]
    await telemetry.refresh()  # on the loop: reads quota state, which lives there
    # Off the loop: the cache-size callback may ask the store, which is disk I/O.
    body, content_type = await asyncio.to_thread(telemetry.metrics.render)
    return Response(body, media_type=content_type)


TOP_ENTRIES = 10


@router.get("/v1/cache/report")
async def cache_report(
    request: Request, format: str = "json", since: str | None = None
) -> Response:
    """The outcome log since `since` (1h, 7d, ISO 8601; default: all of it) as html, md or
    json. Totals use the definitions of GET /v1/cache/stats; miss reasons and top entries
    those of GET /v1/cache/recent; quality is that of the stats. A caller's own tenant's
    requests; every tenant's, and the projects' budgets, with the admin key."""
    if format not in FORMATS:
        raise BadRequest(f"format must be one of {', '.join(FORMATS)}", param="format")
    try:
        start = parse_since(since, time.time())
    except ReportError as e:
        raise BadRequest(str(e), param="since") from e
    services = state.of(request)
    telemetry = services["telemetry"]
    visible = services["tenancy"].visible_to(lower_headers(request))
    # On the loop: the quota ledger behind it is only safe to read from the loop's thread.
    # Budgets belong to projects, which span tenants: the admin's view only.
    budgets = await telemetry.current_budgets() if visible is None else None
    unavailable: dict[str, str] = {}
    if visible is not None:
        unavailable["budgets"] = "budgets belong to projects, which span tenants: admin key only"
    elif budgets is None:
        unavailable["budgets"] = "no quota ledger, or its snapshot failed"
    front = services["front"]
    quality = quality_view(front.learner, services["proxy"].auditor.tally, visible)
    # With a verifier, cosine matching starts at its floor, not at similarity_threshold.
    if front.floor is not None:
        threshold, threshold_label = front.floor, "verifier floor"
    else:
        threshold = services["settings"].similarity_threshold
        threshold_label = "similarity threshold"
    log = telemetry.log
    if log is None:
        for name in ("miss_reasons", "top_entries"):
            unavailable[name] = "the outcome log is off (outcome_log: false)"

    def make() -> tuple[str, str]:
        # Reading the log and drawing plots both block (SQLite, matplotlib): one thread.
        events = telemetry.events(start)
        reasons: dict[str, int] | None = None
        top: list[dict[str, Any]] | None = None
        if visible is not None:
            events = [e for e in events if visible(e.namespace)]
        if log is not None:
            # The caller's namespaces as the events have them (None: the admin, all).
            mine = None if visible is None else tuple(sorted({e.namespace for e in events}))
            flt = OutcomeFilter(since=start, namespaces=mine)
            reasons, top = log.miss_reasons(flt), log.top_entries(flt, TOP_ENTRIES)
        report: dict[str, Any] = build_report(
            events,
            since=start,
            budgets=budgets,
            miss_reasons=reasons,
            top_entries=top,
            quality=quality,
            threshold=threshold,
            threshold_label=threshold_label,
            unavailable=unavailable,
        )
        return render(report, format)

    text, media_type = await asyncio.to_thread(make)
    return Response(text, media_type=media_type)
