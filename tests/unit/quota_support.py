"""Shared by the quota unit tests: scopes, time and result helpers."""

from __future__ import annotations

from datetime import UTC, datetime

from cache_service.quota.limits import Denial
from cache_service.quota.manager import Reservation


def ts(iso: str) -> float:
    return datetime.fromisoformat(iso).replace(tzinfo=UTC).timestamp()


P: tuple[str, str] = ("project", "default")
G: tuple[str, str] = ("global", "total")
U: tuple[str, str] = ("upstream", "openai")


def admitted(result: Reservation | Denial) -> Reservation:
    assert isinstance(result, Reservation), result
    return result


def denied(result: Reservation | Denial) -> Denial:
    assert isinstance(result, Denial), result
    return result
