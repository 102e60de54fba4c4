"""The operator's upstream key replaces the caller's, in the scheme each API expects."""

from __future__ import annotations

import httpx
import pytest

from cache_service.backends.upstream import HttpUpstream


@pytest.mark.parametrize(
    ("path", "caller", "expected"),
    [
        (
            "chat/completions",
            {"authorization": "Bearer sk-caller"},
            ("authorization", "Bearer sk-op"),
        ),
        ("messages", {"x-api-key": "sk-ant-caller"}, ("x-api-key", "sk-op")),
        ("messages", {}, ("x-api-key", "sk-op")),
        ("chat/completions", {}, ("authorization", "Bearer sk-op")),
    ],
)
async def test_operator_key_replaces_the_callers(
    path: str, caller: dict[str, str], expected: tuple[str, str]
) -> None:
    seen: list[httpx.Headers] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers)
        return httpx.Response(200, json={"ok": True})

    up = HttpUpstream(
        "http://up/v1", api_key="sk-op", transport=httpx.MockTransport(handler), timeout_s=5
    )
    try:
        await up.send(path, {"model": "m"}, {**caller, "anthropic-version": "2023-06-01"})
    finally:
        await up.aclose()
    (headers,) = seen
    name, value = expected
    assert headers[name] == value
    other = "x-api-key" if name == "authorization" else "authorization"
    assert other not in headers  # the caller's own key never reaches upstream
    assert "caller" not in str(headers.raw)
    assert headers["anthropic-version"] == "2023-06-01"
