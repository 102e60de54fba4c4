"""Who a caller is and which partition its requests belong to (cache_service/cache/
tenancy.py), called directly: the namespace partitions only within the caller's identity."""

from __future__ import annotations

import pytest

from cache_service.cache.tenancy import (
    Caller,
    Tenancy,
    credential_identity,
    namespace_of,
)
from cache_service.errors import BadRequest

T = Tenancy()


def tenant(headers: dict[str, str], tenancy: Tenancy = T) -> str:
    return tenancy.tenant(tenancy.caller(headers), namespace_of(headers))


# ------------------------------------------------------------------ identity and namespace


def test_namespace_beats_project_and_both_stay_inside_the_key() -> None:
    headers = {
        "x-cache-namespace": "team-a",
        "x-project-id": "proj-1",
        "authorization": "Bearer sk-secret",
    }
    assert namespace_of(headers) == "team-a"
    assert tenant(headers) == credential_identity(headers) + "/team-a"


def test_project_id_beats_key() -> None:
    headers = {"x-project-id": "proj-1", "authorization": "Bearer sk-secret"}
    assert namespace_of(headers) == "proj-1"
    assert tenant(headers).endswith("/proj-1")


def test_blank_namespace_falls_through_to_project() -> None:
    assert namespace_of({"x-cache-namespace": "   ", "x-project-id": "proj-1"}) == "proj-1"


def test_namespace_is_stripped() -> None:
    assert namespace_of({"x-cache-namespace": "  team-a "}) == "team-a"


def test_api_key_is_hashed_never_stored() -> None:
    secret = "sk-live-0123456789abcdef"
    identity = credential_identity({"authorization": f"Bearer {secret}"})
    assert identity.startswith("key-")
    assert secret not in identity
    assert "0123456789" not in identity
    # Deterministic: the same key is the same tenant on every request.
    assert credential_identity({"authorization": f"Bearer {secret}"}) == identity


def test_different_keys_are_different_tenants() -> None:
    a = tenant({"authorization": "Bearer sk-a"})
    b = tenant({"authorization": "Bearer sk-b"})
    assert a != b
    assert a.startswith("key-")
    assert b.startswith("key-")


def test_x_api_key_is_used_when_no_authorization() -> None:
    secret = "sk-ant-abcdef"
    identity = credential_identity({"x-api-key": secret})
    assert identity.startswith("key-")
    assert secret not in identity
    assert identity != credential_identity({"x-api-key": "sk-ant-other"})


def test_anonymous_without_any_identity() -> None:
    assert tenant({}) == "anonymous"
    assert tenant({"content-type": "application/json"}) == "anonymous"
    assert tenant({"x-cache-namespace": "alpha"}) == "anonymous/alpha"


# ------------------------------------------------------------------ isolation


def test_the_same_namespace_under_two_keys_is_two_tenants() -> None:
    a = tenant({"authorization": "Bearer sk-a", "x-cache-namespace": "shared-name"})
    b = tenant({"authorization": "Bearer sk-b", "x-cache-namespace": "shared-name"})
    assert a != b


@pytest.mark.parametrize(
    "forged",
    ["key-0123456789abcdef/alpha", "anonymous/alpha", "a b", "", "x" * 129, "ns\n"],
)
def test_a_namespace_cannot_name_another_partition(forged: str) -> None:
    # "/" would let a caller write another identity's label; the label format forbids it.
    with pytest.raises(BadRequest):
        T.tenant(Caller("anonymous"), forged)


def test_a_caller_owns_its_own_partitions_only() -> None:
    a, b = Caller("key-a"), Caller("key-b")
    assert T.owns(a, "key-a") and T.owns(a, "key-a/x")
    assert not T.owns(a, "key-b/x") and not T.owns(b, "key-a")
    assert not T.owns(a, "key-ab/x")  # a prefix of the identity is not the identity
    assert T.owns(Caller("key-b", admin=True), "key-a/x")


def test_shared_namespaces_are_one_partition_for_every_caller() -> None:
    tenancy = Tenancy(shared_namespaces=["faq"])
    a = tenancy.caller({"authorization": "Bearer sk-a", "x-cache-namespace": "faq"})
    b = tenancy.caller({"authorization": "Bearer sk-b"})
    assert tenancy.tenant(a, "faq") == tenancy.tenant(b, "faq") == "shared/faq"
    assert tenancy.owns(b, "shared/faq")
    assert not tenancy.owns(b, "shared/other")  # not (or no longer) shared


def test_a_trusted_identity_header_names_the_caller() -> None:
    tenancy = Tenancy(identity_header="X-Tenant-Id")
    caller = tenancy.caller({"x-tenant-id": "acme", "authorization": "Bearer sk-a"})
    assert caller.identity == "id-acme"
    # Without it, the credential decides, as everywhere.
    assert tenancy.caller({"authorization": "Bearer sk-a"}).identity.startswith("key-")
    with pytest.raises(BadRequest):
        tenancy.caller({"x-tenant-id": "acme/other"})


def test_admin_only_with_the_configured_key() -> None:
    assert not T.is_admin({"authorization": "Bearer anything"})  # no key: nobody is admin
    tenancy = Tenancy(admin_key="adm-1")
    assert tenancy.is_admin({"authorization": "Bearer adm-1"})
    assert tenancy.is_admin({"x-admin-key": "adm-1"})
    assert not tenancy.is_admin({"authorization": "Bearer adm-2"})
    assert tenancy.visible_to({"x-admin-key": "adm-1"}) is None
    visible = tenancy.visible_to({"authorization": "Bearer sk-a"})
    assert visible is not None and not visible("anonymous")
