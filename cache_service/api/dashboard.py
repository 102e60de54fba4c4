"""GET /dashboard (the live page) and GET /v1/cache/recent (the outcome log's newest rows,
miss reasons and most-hit entries behind it). Both are fleet-wide operational views, guarded
like GET /v1/quota (`fleet_view`: admin-only with `admin_only_ops`); the rows are, like the
stats, a caller's own tenant's unless it presents the admin key."""

from __future__ import annotations

import asyncio
import base64
import hashlib
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse

from cache_service.api import state
from cache_service.api.auth import fleet_view
from cache_service.api.body import lower_headers
from cache_service.api.dashboard_page import PAGE
from cache_service.api.filters import Filters, visible_namespaces
from cache_service.api.openapi import error_responses
from cache_service.errors import BadRequest, Unauthorized
from cache_service.telemetry.events import OutcomeEvent

router = APIRouter(responses=error_responses(statuses=(400, 401, 403, 500)))

MAX_RECENT = 500


def _script_hash(page: str) -> str:
    """The CSP source admitting the page's one inline script and no other."""
    script = page.split("<script>", 1)[1].split("</script>", 1)[0]
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    return f"'sha256-{digest}'"


CSP = (
    f"default-src 'none'; script-src {_script_hash(PAGE)}; style-src 'unsafe-inline'; "
    "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)


@router.get("/dashboard", response_class=HTMLResponse, include_in_schema=False)
async def dashboard(request: Request) -> HTMLResponse:
    """One self-contained page (inline CSS and script, nothing fetched from elsewhere) that
    polls /v1/cache/stats, /v1/quota and /v1/cache/recent."""
    try:
        fleet_view(request, "the dashboard")
    except Unauthorized as e:
        # A browser then asks for the admin key itself (any user name, the key as the
        # password) and sends it with the page's own requests too.
        e.headers["www-authenticate"] = 'Basic realm="cache-service dashboard"'
        raise
    return HTMLResponse(
        PAGE,
        headers={
            "cache-control": "no-store",
            # The page loads nothing from outside and runs only its own inline script.
            "content-security-policy": CSP,
            "x-content-type-options": "nosniff",
        },
    )


@router.get("/v1/cache/recent")
async def recent(
    request: Request,
    limit: int = Query(50, ge=1, le=MAX_RECENT),
    since: str | None = None,
    until: str | None = None,
    namespace: str | None = None,
    model: str | None = None,
    project: str | None = None,
    top: int = Query(10, ge=0, le=100),
) -> JSONResponse:
    """The newest `limit` outcomes (newest first) matching the filters, the misses counted by
    why they missed, the `top` entries served most often, and the hit rate and dollars over
    the time the rows span (`series`, up to 60 slices). Prompt text only where the operator
    turned `log_prompts` on."""
    fleet_view(request, "the recent requests")
    telemetry = state.of(request)["telemetry"]
    log = telemetry.log
    if log is None:
        raise BadRequest("the recent requests are read from the outcome log, which is off")
    visible = state.of(request)["tenancy"].visible_to(lower_headers(request))
    known, _ = state.of(request)["stats"].labels()
    filters = Filters(since, until, namespace, model, project)
    flt = filters.outcome_filter(visible_namespaces(visible, known))

    def read() -> dict[str, Any]:
        return {
            "requests": [_row(e, telemetry.log_prompts) for e in log.recent(flt, limit)],
            "miss_reasons": log.miss_reasons(flt),
            "top_entries": log.top_entries(flt, top),
            "series": log.series(flt),
        }

    body = await asyncio.to_thread(read)
    return JSONResponse(
        {
            **body,
            "log_prompts": telemetry.log_prompts,
            "filters": filters.given(),
        }
    )


def _row(e: OutcomeEvent, log_prompts: bool) -> dict[str, Any]:
    row: dict[str, Any] = {
        "time": e.time,
        "request_id": e.request_id,
        "outcome": e.outcome.value,
        "namespace": e.namespace,
        "project": e.project,
        "model": e.model,
        "similarity": e.similarity,
        "best_rejected": e.best_rejected,
        "rejected_by": e.rejected_by,
        "entry_id": e.entry_id,
        "latency_ms": round(e.latency_ms, 3),
        "prompt_tokens": e.prompt_tokens,
        "completion_tokens": e.completion_tokens,
        "dollars_saved": e.dollars_saved,
        "dollars_spent": e.dollars_spent,
        "upstream_status": e.upstream_status,
    }
    if log_prompts:
        row["prompt"] = e.prompt
    return row
