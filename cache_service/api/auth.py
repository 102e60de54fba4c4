"""The control plane's one door: `require_admin` for operations that span tenants.

With no admin key configured they are refused (403), not open: an unset key must never mean
"anyone may". The key check itself is the tenancy's (constant-time, never logged).
"""

from __future__ import annotations

from starlette.requests import Request

from cache_service.api import state
from cache_service.api.body import lower_headers
from cache_service.errors import Forbidden, Unauthorized


def require_admin(request: Request, what: str) -> None:
    """Raise unless the request carries the admin key; `what` names the refused operation."""
    if not state.of(request)["settings"].admin_key:
        raise Forbidden(f"{what} is disabled: set admin_key to enable it")
    if not state.of(request)["tenancy"].is_admin(lower_headers(request)):
        raise Unauthorized(
            f"{what} needs the admin key (Authorization: Bearer <admin_key> or X-Admin-Key)"
        )


def fleet_view(request: Request, what: str) -> None:
    """Fleet-wide operational views (metrics, quota state) are open unless the operator
    asked for them to be admin-only (`admin_only_ops`): open by default because scrapers
    and health dashboards sit on the private network beside the sidecar."""
    if state.of(request)["settings"].admin_only_ops:
        require_admin(request, what)
