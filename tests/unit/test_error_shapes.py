from __future__ import annotations

import pytest

from cache_service.flavors import for_route


@pytest.mark.parametrize(
    "route", ["/v1/chat/completions", "/v1/responses", "/v1/{path:path}", None]
)
def test_openai_shape_everywhere_but_the_messages_api(route: str | None) -> None:
    body = for_route(route).error_body("bad", "invalid_request_error", param="model")
    assert body == {
        "error": {"message": "bad", "type": "invalid_request_error", "param": "model", "code": None}
    }


@pytest.mark.parametrize(
    ("type_", "code", "anthropic_type"),
    [
        ("invalid_request_error", None, "invalid_request_error"),
        ("invalid_request_error", "request_too_large", "request_too_large"),
        ("rate_limit_error", "project_rpm_exceeded", "rate_limit_error"),
        ("upstream_error", "upstream_timeout", "api_error"),
        ("server_error", None, "api_error"),
    ],
)
def test_anthropic_shape_on_the_messages_api(
    type_: str, code: str | None, anthropic_type: str
) -> None:
    body = for_route("/v1/messages").error_body("no", type_, code=code)
    assert body == {"type": "error", "error": {"type": anthropic_type, "message": "no"}}
