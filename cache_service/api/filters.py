"""The dashboard's filters (time range, namespace, model, project) as query parameters,
shared by GET /v1/cache/stats and GET /v1/cache/recent."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from cache_service.errors import BadRequest
from cache_service.report.build import ReportError, parse_since
from cache_service.telemetry.outcome_log import OutcomeFilter


@dataclass(frozen=True, slots=True)
class Filters:
    since: str | None = None
    until: str | None = None
    namespace: str | None = None
    model: str | None = None
    project: str | None = None

    @property
    def needs_log(self) -> bool:
        """Time and project are not in the live counters: only the outcome log has them."""
        return bool(self.since or self.until or self.project)

    def given(self) -> dict[str, str]:
        """The filters the caller set, echoed in the answer."""
        pairs = {
            "since": self.since,
            "until": self.until,
            "namespace": self.namespace,
            "model": self.model,
            "project": self.project,
        }
        return {k: v for k, v in pairs.items() if v}

    def outcome_filter(
        self, namespaces: tuple[str, ...] | None = None, now: float | None = None
    ) -> OutcomeFilter:
        """The log query; `since` and `until` are durations before now (15m, 1h, 7d) or
        ISO 8601 times. BadRequest on a malformed one."""
        now = time.time() if now is None else now
        bounds: dict[str, float | None] = {}
        for name in ("since", "until"):
            try:
                bounds[name] = parse_since(getattr(self, name), now)
            except ReportError as e:
                raise BadRequest(str(e).replace("since", name, 1), param=name) from e
        return OutcomeFilter(
            since=bounds["since"],
            until=bounds["until"],
            namespace=self.namespace or None,
            model=self.model or None,
            project=self.project or None,
            namespaces=namespaces,
        )


def visible_namespaces(
    visible: Callable[[str], bool] | None, known: set[str]
) -> tuple[str, ...] | None:
    """The namespaces a caller may read among those counted (None: every one, the admin)."""
    if visible is None:
        return None
    return tuple(sorted(ns for ns in known if visible(ns)))
