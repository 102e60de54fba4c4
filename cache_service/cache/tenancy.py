"""Pure: who a caller is, and which partition of the cache its requests belong to.

The tenant is who the caller *is*: a hash of its credential (`Authorization`, else
`x-api-key`), or, when the operator names one, an identity header its own gateway sets and
the sidecar trusts. `X-Cache-Namespace` (else `X-Project-Id`) only partitions *within* that
identity: two callers with different keys naming the same namespace get different
partitions, so one can never be served, read, invalidate or teach thresholds to the other's
entries (the cache leak a shared namespace header caused in peers). Sharing a namespace
across credentials is an explicit operator setting (`shared_namespaces`), at the operator's
risk: every caller naming it reads and writes the same entries.

A partition's label is `identity` or `identity/namespace`, with identities `anonymous`,
`key-<hash>`, `id-<value>` or `shared`; namespaces and identity values may not contain `/`,
so a label names exactly one (identity, namespace) pair and cannot be forged by choosing a
namespace. The label is hashed into every scope, so isolation holds by construction.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Callable, Collection
from dataclasses import dataclass

from cache_service.errors import BadRequest

_TOKEN = re.compile(r"[A-Za-z0-9._:@+-]{1,128}")
SHARED = "shared"
ANONYMOUS = "anonymous"


@dataclass(frozen=True, slots=True)
class Caller:
    identity: str
    admin: bool = False
    """Presented the operator's admin key: may read and change every tenant's entries."""


def credential_identity(headers: dict[str, str]) -> str:
    """`key-` and a hash of the caller's API key (never the key), or `anonymous`."""
    auth = headers.get("authorization") or headers.get("x-api-key") or ""
    if auth:
        return "key-" + hashlib.sha256(auth.encode()).hexdigest()[:16]
    return ANONYMOUS


def namespace_of(headers: dict[str, str]) -> str | None:
    """The namespace a caller names for itself: X-Cache-Namespace, else X-Project-Id."""
    for name in ("x-cache-namespace", "x-project-id"):
        value = headers.get(name, "").strip()
        if value:
            return value
    return None


class Tenancy:
    def __init__(
        self,
        *,
        admin_key: str | None = None,
        identity_header: str | None = None,
        shared_namespaces: Collection[str] = (),
    ) -> None:
        self.admin_key = admin_key
        self.identity_header = identity_header.lower() if identity_header else None
        self.shared = frozenset(shared_namespaces)

    def caller(self, headers: dict[str, str]) -> Caller:
        identity = credential_identity(headers)
        if self.identity_header:
            trusted = headers.get(self.identity_header, "").strip()
            if trusted:
                _check(trusted, self.identity_header)
                identity = "id-" + trusted
        return Caller(identity, admin=self.is_admin(headers))

    def is_admin(self, headers: dict[str, str]) -> bool:
        """Constant-time: presented `Authorization: Bearer <admin_key>` (or X-Admin-Key, or
        HTTP Basic with the admin key as the password: what a browser sends for the
        dashboard once asked, with any user name)."""
        if not self.admin_key:
            return False
        given = headers.get("x-admin-key") or headers.get("authorization", "")
        if given[:6].lower() == "basic ":
            given = _basic_password(given[6:])
        given = given.removeprefix("Bearer ").strip()
        return hmac.compare_digest(given.encode(), self.admin_key.encode())

    def tenant(self, caller: Caller, namespace: str | None) -> str:
        """The partition label for a caller's request in `namespace` (None: its own root)."""
        if namespace is None:
            return caller.identity
        _check(namespace, "namespace")
        if namespace in self.shared:
            return f"{SHARED}/{namespace}"
        return f"{caller.identity}/{namespace}"

    def visible_to(self, headers: dict[str, str]) -> Callable[[str], bool] | None:
        """Which tenants' figures a caller may read: None (all) for the admin, else a test
        admitting only its own."""
        caller = self.caller(headers)
        if caller.admin:
            return None
        return lambda tenant: self.owns(caller, tenant)

    def owns(self, caller: Caller, tenant: str) -> bool:
        """Whether the caller may read or change a partition's entries and figures."""
        if caller.admin:
            return True
        identity = tenant.split("/", 1)[0]
        if identity == SHARED:
            return tenant.split("/", 1)[-1] in self.shared
        return identity == caller.identity


def _basic_password(encoded: str) -> str:
    """The password of an HTTP Basic credential ("" when it is not one)."""
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return ""
    return decoded.partition(":")[2]


def _check(value: str, what: str) -> None:
    if not _TOKEN.fullmatch(value):
        raise BadRequest(
            f"{what} must be 1 to 128 of A-Z a-z 0-9 . _ : @ + - (got {value[:40]!r})",
            param=what,
        )
