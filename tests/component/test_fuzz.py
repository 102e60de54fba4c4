"""Property-based fuzz of every operation in /openapi.json (schemathesis generates the
requests from the declared bodies and parameters), against the in-process app with the
harness's fakes: no answer is a 5xx except the designed 502/503/504, and those carry an error
body and X-Request-Id.

Bounded for CI: FUZZ_EXAMPLES examples per operation (default 30), derandomized so a run is
reproducible; `FUZZ_EXAMPLES=500 make test PYTEST_ARGS=tests/component/test_fuzz.py` digs
deeper on demand.
"""

from __future__ import annotations

import asyncio
import json
import os
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from cache_service.app import create_app
from cache_service.settings import load_settings
from tests.conftest import harness, served
from tests.fakes import FakeClock, HashingEmbedder

if TYPE_CHECKING:
    from schemathesis.specs.openapi.schemas import OpenApiCase

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "30"))
DESIGNED = {502, 503, 504}
# Known bad-input 5xx, fixed separately (api/body.py, api/schemas.py, api/middleware.py and the
# upstream client belong to other changes): these operations are xfail, not strict, until then;
# every other operation is held to the property.
KNOWN: dict[str, str] = {}
"""Operations with a known undesigned 5xx (xfail, naming it), by "METHOD path" or path. The
two the fuzz first found (an empty feedback request_id; a control character in a relayed
path) are fixed, so every operation is held to the rule."""


def _schema() -> Any:
    app = create_app(load_settings(None, upstream_url="http://sim/v1", data_dir=Path("unused")))
    return schemathesis.openapi.from_dict(app.openapi())


SCHEMA = _schema()
OPERATIONS = [result.ok() for result in SCHEMA.get_all_operations()]


def problem(response: httpx.Response) -> str | None:
    """What is wrong with an answer, or None."""
    status = response.status_code
    if status < 500:
        return None
    if status not in DESIGNED:
        return f"status {status}: {response.text[:300]}"
    if "x-request-id" not in response.headers:
        return f"status {status} without X-Request-Id"
    try:
        body = response.json()
    except json.JSONDecodeError:
        return f"status {status} without a JSON error body: {response.text[:200]!r}"
    if not isinstance(body, dict) or not isinstance(body.get("error"), dict):
        return f"status {status} without an error object: {body!r:.200}"
    return None


async def send(client: httpx.AsyncClient, case: OpenApiCase) -> httpx.Response:
    kw = case.as_transport_kwargs(base_url="http://sidecar")
    for unused in ("cookies", "files"):
        kw.pop(unused, None)
    if "json" in kw:
        kw["content"] = json.dumps(kw.pop("json")).encode()
    data = kw.pop("data", None)
    if isinstance(data, str):
        kw["content"] = data.encode()
    elif isinstance(data, bytes):
        kw["content"] = data
    elif data is not None:
        kw["data"] = data  # a form
    return await client.request(**kw)


def where(exc: BaseException) -> str:
    """The exception and the deepest line of ours it passed through."""
    ours = [f for f in traceback.extract_tb(exc.__traceback__) if "cache_service" in f.filename]
    at = f" at {Path(ours[-1].filename).name}:{ours[-1].lineno} `{ours[-1].line}`" if ours else ""
    return f"unhandled {type(exc).__name__}: {str(exc)[:200]}{at}"


async def outcome(client: httpx.AsyncClient, case: OpenApiCase) -> str | None:
    """What went wrong with one generated request, or None. The app's own 500 handler
    re-raises through the test transport, so an unhandled error arrives as the exception."""
    try:
        response = await send(client, case)
    except Exception as exc:
        return where(exc)
    return problem(response)


def _param(op: Any) -> Any:
    name = f"{op.method.upper()} {op.path}"
    known = KNOWN.get(name) or KNOWN.get(op.path)
    marks = [pytest.mark.xfail(reason=known, strict=False)] if known else []
    return pytest.param(op, id=name, marks=marks)


@pytest.mark.parametrize(
    "operation",
    [_param(op) for op in OPERATIONS],
)
def test_no_undesigned_5xx(operation: Any, tmp_path: Path) -> None:
    cfg = load_settings(
        None,
        data_dir=tmp_path / "data",
        upstream_url="http://sim/v1",
        backoff_base_s=0.001,
        backoff_max_s=0.001,
        max_queue_wait_s=0,
        admin_key="fuzz-admin",
    )
    with asyncio.Runner() as runner:
        cm = harness(cfg, HashingEmbedder(), FakeClock())
        h = runner.run(cm.__aenter__())
        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=served(h.app, h.state)), base_url="http://sidecar"
        )
        try:

            @settings(
                max_examples=EXAMPLES,
                deadline=None,
                derandomize=True,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            @given(case=operation.as_strategy())
            def check(case: OpenApiCase) -> None:
                found = runner.run(outcome(client, case))
                assert found is None, (
                    f"{case.method} {case.formatted_path} {case.body!r:.300}: {found}"
                )

            check()
        finally:
            runner.run(client.aclose())
            runner.run(cm.__aexit__(None, None, None))
