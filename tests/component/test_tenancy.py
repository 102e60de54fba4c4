"""Tenants kept apart on every endpoint: two callers with different credentials naming the
same namespace never see, serve, change or learn from each other's entries and figures;
only the admin key reaches across tenants, and only an operator setting shares a namespace."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from cache_service.settings import Settings
from tests.conftest import Harness, harness
from tests.fakes import FakeClock, HashingEmbedder

Q = "How do I reset my password?"
PARAPHRASE = "how do I reset my password"
A = {"Authorization": "Bearer sk-a", "X-Cache-Namespace": "shared-name"}
B = {"Authorization": "Bearer sk-b", "X-Cache-Namespace": "shared-name"}
ADMIN = {"X-Admin-Key": "adm"}


@pytest.fixture
async def h(
    settings_factory: Callable[..., Settings], embedder: HashingEmbedder, clock: FakeClock
) -> AsyncIterator[Harness]:
    async with harness(settings_factory(admin_key="adm"), embedder, clock) as h:
        yield h


async def chat(h: Harness, who: dict[str, str], text: str = Q) -> httpx.Response:
    return await h.chat(text, headers=who)


async def post(h: Harness, path: str, who: dict[str, str], body: dict[str, Any]) -> httpx.Response:
    return await h.client.post(path, json=body, headers=who)


async def test_proxied_answers_are_never_served_across_credentials(h: Harness) -> None:
    assert (await chat(h, A)).headers["x-cache"] == "MISS"
    assert (await chat(h, A, PARAPHRASE)).headers["x-cache"] == "HIT"
    assert (await chat(h, B)).headers["x-cache"] == "MISS"  # exact
    assert (await chat(h, B, "how can I reset my password")).headers["x-cache"] == "MISS"
    responses = {"model": "gpt-4o-mini", "input": "Which plan has priority support?"}
    await post(h, "/v1/responses", A, responses)
    assert (await post(h, "/v1/responses", B, responses)).headers["x-cache"] == "MISS"
    messages = {
        "model": "claude-3-5-haiku",
        "max_tokens": 50,
        "messages": [{"role": "user", "content": Q}],
    }
    await post(h, "/v1/messages", A, messages)
    assert (await post(h, "/v1/messages", B, messages)).headers["x-cache"] == "MISS"


async def test_the_lookup_api_reads_and_writes_only_the_callers_tenant(h: Harness) -> None:
    stored = await post(
        h, "/v1/cache/store", A, {"model": "m", "prompt": Q, "response": {"secret": "A's"}}
    )
    assert stored.status_code == 201
    for namespace in (None, "shared-name"):
        body = {"model": "m", "prompt": Q, **({"namespace": namespace} if namespace else {})}
        seen = await post(h, "/v1/cache/lookup", {"Authorization": "Bearer sk-b"}, body)
        assert seen.json()["hit"] is False
        assert "A's" not in seen.text and Q not in seen.text
    assert (await post(h, "/v1/cache/lookup", A, {"model": "m", "prompt": Q})).json()["hit"]
    # B's store does not overwrite or answer for A.
    await post(h, "/v1/cache/store", B, {"model": "m", "prompt": Q, "response": "B's"})
    mine = (await post(h, "/v1/cache/lookup", A, {"model": "m", "prompt": Q})).json()
    assert mine["response"] == {"secret": "A's"}


async def test_invalidation_stays_inside_the_callers_tenant(h: Harness) -> None:
    await chat(h, A)
    await chat(h, B)
    a_id = (await chat(h, A)).headers["x-cache-entry"]
    # Another tenant's entry is "not found" and stays.
    assert (await h.client.delete(f"/v1/cache/entries/{a_id}", headers=B)).status_code == 404
    assert (await chat(h, A)).headers["x-cache"] == "HIT"
    # By namespace or by model: only the caller's own entries go.
    r = await h.client.delete("/v1/cache", params={"namespace": "shared-name"}, headers=B)
    assert r.json()["deleted"] == 1
    assert (await chat(h, A)).headers["x-cache"] == "HIT"
    await chat(h, B)
    r = await h.client.delete("/v1/cache", params={"model": "gpt-4o-mini"}, headers=B)
    assert r.json()["deleted"] == 1
    assert (await chat(h, A)).headers["x-cache"] == "HIT"
    # The admin key reaches every tenant: a bare namespace names it in all of them.
    await chat(h, B)
    r = await h.client.delete("/v1/cache", params={"namespace": "shared-name"}, headers=ADMIN)
    assert r.json()["deleted"] == 2
    assert (await chat(h, A)).headers["x-cache"] == "MISS"


async def test_feedback_on_another_tenants_hit_is_not_found(h: Harness) -> None:
    await chat(h, A)
    hit = await chat(h, A, PARAPHRASE)
    assert hit.headers["x-cache-match"] == "semantic"
    rid, entry = hit.headers["x-request-id"], hit.headers["x-cache-entry"]
    for body in ({"request_id": rid, "correct": False}, {"entry_id": entry, "correct": False}):
        assert (await post(h, "/v1/cache/feedback", B, body)).status_code == 404
    # Nothing was invalidated and no threshold moved for A.
    assert (await chat(h, A, PARAPHRASE)).headers["x-cache"] == "HIT"
    stats = (await h.client.get("/v1/cache/stats", headers=ADMIN)).json()
    assert stats["quality"]["learned_thresholds"] == {}
    # A itself may.
    assert (await post(h, "/v1/cache/feedback", A, {"request_id": rid, "correct": False})).json()[
        "invalidated"
    ]


async def test_stats_and_reports_show_a_caller_its_own_figures(h: Harness) -> None:
    await chat(h, A)
    await chat(h, A)
    await chat(h, B)
    mine = (await h.client.get("/v1/cache/stats", headers=B)).json()
    assert mine["total"]["requests"] == 1
    assert all(ns.endswith("/shared-name") for ns in mine["by_namespace"])
    assert len(mine["by_namespace"]) == 1
    report = (await h.client.get("/v1/cache/report", headers=B)).json()
    assert report["totals"]["requests"] == 1
    everyone = (await h.client.get("/v1/cache/stats", headers=ADMIN)).json()
    assert everyone["total"]["requests"] == 3 and len(everyone["by_namespace"]) == 2
    assert (await h.client.get("/v1/cache/report", headers=ADMIN)).json()["totals"]["requests"] == 3


async def test_an_operator_may_share_a_namespace_across_credentials(
    settings_factory: Callable[..., Settings], embedder: HashingEmbedder, clock: FakeClock
) -> None:
    settings = settings_factory(shared_namespaces=["shared-name"])
    async with harness(settings, embedder, clock) as h:
        await chat(h, A)
        assert (await chat(h, B)).headers["x-cache"] == "HIT"
        other = {"Authorization": "Bearer sk-b", "X-Cache-Namespace": "private"}
        assert (await chat(h, other)).headers["x-cache"] == "MISS"


async def test_a_trusted_identity_header_names_the_tenant(
    settings_factory: Callable[..., Settings], embedder: HashingEmbedder, clock: FakeClock
) -> None:
    settings = settings_factory(identity_header="X-Tenant-Id")
    async with harness(settings, embedder, clock) as h:
        await chat(h, {"X-Tenant-Id": "acme", "Authorization": "Bearer sk-1"})
        # Same tenant, another key (the gateway rotates keys): shared.
        again = await chat(h, {"X-Tenant-Id": "acme", "Authorization": "Bearer sk-2"})
        assert again.headers["x-cache"] == "HIT"
        other = await chat(h, {"X-Tenant-Id": "globex", "Authorization": "Bearer sk-1"})
        assert other.headers["x-cache"] == "MISS"
        bad = await chat(h, {"X-Tenant-Id": "acme/../globex"})
        assert bad.status_code == 400


async def test_cross_tenant_operations_need_a_configured_admin_key(
    settings_factory: Callable[..., Settings], embedder: HashingEmbedder, clock: FakeClock
) -> None:
    async with harness(settings_factory(), embedder, clock) as h:  # no admin key configured
        await chat(h, A)
        await chat(h, B)
        # Without a key nobody is admin: each caller still acts on its own tenant only.
        for who in (ADMIN, {"Authorization": "Bearer anything"}):
            r = await h.client.delete("/v1/cache", params={"namespace": "shared-name"}, headers=who)
            assert r.json()["deleted"] == 0
        assert (await chat(h, A)).headers["x-cache"] == "HIT"
        limits = await h.client.put(
            "/v1/admin/limits", json={"kind": "project", "name": "default", "rpm": 1}, headers=ADMIN
        )
        assert limits.status_code == 403


async def test_fleet_wide_views_can_be_made_admin_only(
    settings_factory: Callable[..., Settings], embedder: HashingEmbedder, clock: FakeClock
) -> None:
    # /metrics and /v1/quota show every tenant's namespaces and every project's spend: open
    # by default (the port is private), the admin key's alone with `admin_only_ops`.
    settings = settings_factory(admin_key="adm", admin_only_ops=True)
    async with harness(settings, embedder, clock) as h:
        await chat(h, A)
        for path in ("/metrics", "/v1/quota"):
            for who in (A, {}, {"X-Admin-Key": "wrong"}):
                r = await h.client.get(path, headers=who)
                assert r.status_code == 401, (path, who)
                assert r.headers.get("x-request-id") and "admin key" in r.text
            assert (await h.client.get(path, headers=ADMIN)).status_code == 200
    async with harness(settings_factory(), embedder, clock) as h:
        assert (await h.client.get("/metrics")).status_code == 200
    async with harness(settings_factory(admin_only_ops=True), embedder, clock) as h:
        r = await h.client.get("/v1/quota", headers=ADMIN)  # no key configured: refused
        assert r.status_code == 403
