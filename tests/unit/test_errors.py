from __future__ import annotations

import pytest

from cache_service.errors import error_body_for


def test_openai_shape_everywhere_but_the_messages_api() -> None:
    body = error_body_for("/v1/chat/completions", "bad", "invalid_request_error", param="model")
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
    body = error_body_for("/v1/messages", "no", type_, code=code)
    assert body == {"type": "error", "error": {"type": anthropic_type, "message": "no"}}
