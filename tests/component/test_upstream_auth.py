"""The operator's upstream key replaces the caller's, in the scheme each API expects: the
route's wire format decides (never the path), and a relayed call keeps its caller's scheme."""

from __future__ import annotations

import httpx
import pytest

from cache_service.backends.upstream import HttpUpstream
from cache_service.flavors import ANTHROPIC, OPENAI_CHAT
from cache_service.flavors.base import Flavor


@pytest.mark.parametrize(
    ("flavor", "caller", "expected"),
    [
        (
            OPENAI_CHAT,
            {"authorization": "Bearer sk-caller"},
            ("authorization", "Bearer sk-op"),
        ),
        (ANTHROPIC, {"x-api-key": "sk-ant-caller"}, ("x-api-key", "sk-op")),
        (ANTHROPIC, {}, ("x-api-key", "sk-op")),
        (OPENAI_CHAT, {}, ("authorization", "Bearer sk-op")),
    ],
)
async def test_operator_key_replaces_the_callers(
    flavor: Flavor, caller: dict[str, str], expected: tuple[str, str]
) -> None:
    seen: list[httpx.Headers] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers)
        return httpx.Response(200, json={"ok": True})

    up = HttpUpstream(
        "http://up/v1", api_key="sk-op", transport=httpx.MockTransport(handler), timeout_s=5
    )
    try:
        headers = {**caller, "anthropic-version": "2023-06-01"}
        await up.send(flavor.upstream_path, {"model": "m"}, headers, flavor.auth)
    finally:
        await up.aclose()
    (headers,) = seen
    name, value = expected
    assert headers[name] == value
    other = "x-api-key" if name == "authorization" else "authorization"
    assert other not in headers  # the caller's own key never reaches upstream
    assert "caller" not in str(headers.raw)
    assert headers["anthropic-version"] == "2023-06-01"
