"""Learning from wrong hits: caller feedback and sampled audits.

A wrong hit reported for a namespace raises that namespace's threshold just above the
similarity that fooled it (vCache's idea, per namespace rather than per entry: a cache of
paraphrase-heavy support questions and one of code prompts need different cut-offs, and a
namespace sees enough traffic to learn one). Correct feedback lowers it back slowly, never
below the operator's threshold. Pure: the owner persists `export()`.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

RAISE_MARGIN = 0.005
RELAX_STEP = 0.001
CEILING = 0.995


@dataclass(slots=True)
class ServedHit:
    entry_id: str
    namespace: str
    similarity: float
    match: str


class FeedbackLearner:
    def __init__(self, base_threshold: float, *, remember: int = 10_000) -> None:
        self.base = base_threshold
        self.thresholds: dict[str, float] = {}
        self.counts: dict[str, dict[str, int]] = {}
        self._recent: OrderedDict[str, ServedHit] = OrderedDict()
        self._remember = remember

    def served(self, request_id: str, hit: ServedHit) -> None:
        """Remember recent hits so feedback can name the request instead of the entry."""
        self._recent[request_id] = hit
        self._recent.move_to_end(request_id)
        while len(self._recent) > self._remember:
            self._recent.popitem(last=False)

    def find(self, request_id: str) -> ServedHit | None:
        return self._recent.get(request_id)

    def threshold(self, namespace: str) -> float:
        return self.thresholds.get(namespace, self.base)

    def record(self, namespace: str, similarity: float | None, correct: bool) -> float:
        """Apply one verdict; returns the namespace's threshold afterwards."""
        c = self.counts.setdefault(namespace, {"correct": 0, "wrong": 0})
        c["correct" if correct else "wrong"] += 1
        current = self.threshold(namespace)
        if similarity is None:  # an exact hit judged wrong says nothing about similarity
            return current
        if not correct and similarity >= current:
            current = min(CEILING, similarity + RAISE_MARGIN)
        elif correct:
            current = max(self.base, current - RELAX_STEP)
        if current == self.base:
            self.thresholds.pop(namespace, None)
        else:
            self.thresholds[namespace] = current
        return current

    def export(self) -> dict[str, Any]:
        return {"thresholds": self.thresholds, "counts": self.counts}

    def load(self, data: dict[str, Any]) -> None:
        self.thresholds = {
            str(k): float(v) for k, v in (data.get("thresholds") or {}).items() if v > self.base
        }
        self.counts = {str(k): dict(v) for k, v in (data.get("counts") or {}).items()}


@dataclass(slots=True)
class AuditTally:
    """Sampled semantic hits re-asked upstream: agreement estimates live precision."""

    audited: int = 0
    agreed: int = 0
    skipped: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "audited": self.audited,
            "agreed": self.agreed,
            "skipped": self.skipped,
            "estimated_precision": round(self.agreed / self.audited, 4) if self.audited else None,
        }
