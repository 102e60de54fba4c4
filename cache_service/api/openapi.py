"""The routes' contract in /openapi.json: the request bodies they read and the errors they
answer with.

Routes read raw bodies (`api/body.py`: size limit and deadline first, then parse, then
validate), so FastAPI sees no body parameter and would declare none. `json_body(Model)` states
the body the route validates against, for `openapi_extra`; `error_responses(flavor)` states
the error statuses in the route's wire format, for `responses=`. Nested models become
components (`#/components/schemas/...`), added by `install(app)`.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from cache_service.flavors import ANTHROPIC, DEFAULT
from cache_service.flavors.base import Flavor

_REF = "#/components/schemas/{model}"
# Filled at import time by the routes' decorators; merged into the document by install().
_components: dict[str, Any] = {}


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class OpenAIError(BaseModel):
    """OpenAI's error shape: the sidecar's own endpoints and OpenAI's routes answer in it."""

    error: OpenAIErrorDetail


class AnthropicErrorDetail(BaseModel):
    type: str
    message: str


class AnthropicError(BaseModel):
    """Anthropic's error shape, on /v1/messages."""

    type: Literal["error"]
    error: AnthropicErrorDetail


_STATUSES = {
    400: "The body is not JSON, not an object, or fails the schema (the message names what)",
    401: "A key is missing or wrong",
    403: "Not allowed (an unlisted project under `reject`, the admin API disabled)",
    404: "No such entry or path",
    405: "Method not allowed",
    408: "The body did not arrive within body_timeout_s",
    413: "The body exceeds max_body_bytes",
    429: "A quota limit (rpm, tpm, rpd, tpd, budget) is reached",
    500: "An unexpected error in the sidecar",
    502: "No upstream could answer (connection failures, open breakers, upstream errors)",
    503: "The sidecar is at max_concurrency, or the shared Redis is unreachable (fleet)",
    504: "The upstream did not answer in time",
}


WITH_BODY = tuple(_STATUSES)
"""The error statuses of a route that reads a body."""
WITHOUT_BODY = tuple(s for s in _STATUSES if s not in (408, 413))
"""The error statuses of a route that reads none."""


def _register(model: type[BaseModel]) -> dict[str, Any]:
    """The model's schema with every nested model moved into components; a $ref to it."""
    schema = model.model_json_schema(ref_template=_REF)
    _components.update(schema.pop("$defs", {}))
    _components[model.__name__] = schema
    return {"$ref": _REF.format(model=model.__name__)}


def json_body(model: type[BaseModel] | None, description: str = "") -> dict[str, Any]:
    """`openapi_extra` declaring a required JSON body that the route validates against
    `model`; None: any body, passed on as it is (the relay)."""
    if model is None:
        content: dict[str, Any] = {"*/*": {"schema": {}}}
    else:
        content = {"application/json": {"schema": _register(model)}}
    body: dict[str, Any] = {"required": model is not None, "content": content}
    if description:
        body["description"] = description
    return {"requestBody": body}


def error_responses(
    flavor: Flavor = DEFAULT, statuses: tuple[int, ...] = WITH_BODY
) -> dict[int | str, dict[str, Any]]:
    """`responses=` for the error statuses a route may answer, in its wire format."""
    model = AnthropicError if flavor.name == ANTHROPIC.name else OpenAIError
    ref = _register(model)
    return {
        status: {
            "description": _STATUSES[status],
            "content": {"application/json": {"schema": ref}},
        }
        for status in statuses
    }


def install(app: FastAPI) -> None:
    """Build /openapi.json with the registered components, without FastAPI's 422: a query
    parameter that fails validation is answered 400 in the route's shape (`middleware.py`)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            doc = get_openapi(
                title=app.title,
                version=app.version,
                summary=app.summary,
                routes=app.routes,
            )
            for path in doc.get("paths", {}).values():
                for operation in path.values():
                    operation.get("responses", {}).pop("422", None)
            schemas = doc.setdefault("components", {}).setdefault("schemas", {})
            for unused in ("HTTPValidationError", "ValidationError"):
                schemas.pop(unused, None)
            schemas.update(_components)
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
