"""The admin API: change a scope's limits at run time, behind the operator's key."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from cache_service.api import state
from cache_service.api.auth import require_admin
from cache_service.api.body import read_json, validate
from cache_service.api.openapi import error_responses, json_body
from cache_service.quota.limits import Limits

router = APIRouter(responses=error_responses())


class LimitsUpdate(BaseModel):
    model_config = {"extra": "forbid"}

    kind: Literal["project", "upstream", "global"]
    name: str = Field(min_length=1)
    rpm: int | None = Field(None, ge=0)
    tpm: int | None = Field(None, ge=0)
    rpd: int | None = Field(None, ge=0)
    tpd: int | None = Field(None, ge=0)
    daily_budget_usd: float | None = Field(None, ge=0)
    monthly_budget_usd: float | None = Field(None, ge=0)


@router.put("/v1/admin/limits", openapi_extra=json_body(LimitsUpdate))
async def set_limits(request: Request) -> JSONResponse:
    """Change a scope's limits at run time (usage so far is kept). Fields left out become
    unlimited, so a PUT states the whole limit set."""
    require_admin(request, "the admin API")
    settings = state.of(request)["settings"]
    data = await read_json(request, settings.max_body_bytes, timeout_s=settings.body_timeout_s)
    update = validate(LimitsUpdate, data)
    limits = Limits(**update.model_dump(exclude={"kind", "name"}))
    use = await state.of(request)["chain"].set_limits(update.kind, update.name, limits)
    return JSONResponse(use)
