"""Learning from wrong hits: caller feedback and sampled audits.

A namespace's threshold rises when its callers report wrong hits (vCache's idea, per
namespace rather than per entry: a cache of paraphrase-heavy support questions and one of
code prompts need different cut-offs, and a namespace sees enough traffic to learn one).

It rises in measured steps, because one report is weak evidence and the old rule (jump just
above the fooling similarity at once) overreacted: one wrong report at 0.99 put a namespace at
0.995, which switches paraphrase matching off for it, on the word of a single caller (who
may be mistaken, or judging a stale answer rather than the match). So:

- Corroboration: a wrong report whose similarity is at or above the namespace's current
  threshold (one below it was already excluded, and says nothing new) is held as pending
  evidence. Only when CORROBORATE such reports are pending does the threshold move; the
  pending reports are then consumed, so each further step needs fresh evidence.
- Partial step: it moves STEP_SHARE (half) of the way from where it is toward just above
  the lowest pending similarity (RAISE_MARGIN above it, at most CEILING). The lowest, because
  that is the similarity every pending report vouches for being unsafe. Repeated evidence at
  the same similarity converges on it geometrically and never overshoots it.
- Correct feedback relaxes it slowly (RELAX_STEP per report), never below the operator's
  base, as before.

The reported entry itself is invalidated by the caller of `record` at once whatever this
decides (that answer is known bad), so waiting for corroboration costs only other, similar
matches. Pure: the owner persists `export()`; files written before pending evidence existed
still `load()` (no pending reports).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")

RAISE_MARGIN = 0.005
RELAX_STEP = 0.001
CEILING = 0.995
CORROBORATE = 2
"""Wrong reports (at or above the current threshold) needed before the threshold moves."""
STEP_SHARE = 0.5
"""Share of the distance to the target a corroborated step covers."""
MAX_PENDING = 16
"""Pending similarities kept per namespace (only the lowest CORROBORATE are ever used)."""


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
        # namespace -> similarities of wrong reports not yet acted on.
        self.pending: dict[str, list[float]] = {}
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
        if correct:
            current = max(self.base, current - RELAX_STEP)
        elif similarity >= current:
            pending = self.pending.setdefault(namespace, [])
            pending.append(similarity)
            # Evidence below the threshold is moot: relaxing may make it relevant again,
            # but then fresh reports will say so.
            pending[:] = sorted(s for s in pending if s >= current)[:MAX_PENDING]
            if len(pending) >= CORROBORATE:
                target = min(CEILING, pending[0] + RAISE_MARGIN)
                if target > current:
                    current = round(current + STEP_SHARE * (target - current), 6)
                del self.pending[namespace]
        if current == self.base:
            self.thresholds.pop(namespace, None)
        else:
            self.thresholds[namespace] = current
        return current

    def export(self) -> dict[str, Any]:
        return {"thresholds": self.thresholds, "counts": self.counts, "pending": self.pending}

    def load(self, data: dict[str, Any]) -> None:
        self.thresholds = {
            str(k): float(v) for k, v in (data.get("thresholds") or {}).items() if v > self.base
        }
        self.counts = {str(k): dict(v) for k, v in (data.get("counts") or {}).items()}
        # Absent in files written before corroboration: nothing pending.
        self.pending = {
            str(k): sorted(float(s) for s in v)[:MAX_PENDING]
            for k, v in (data.get("pending") or {}).items()
            if v
        }


@dataclass(slots=True)
class AuditTally:
    """Sampled semantic hits re-asked upstream: agreement estimates live precision."""

    audited: int = 0
    agreed: int = 0
    skipped: int = 0

    @classmethod
    def of(cls, data: dict[str, Any]) -> AuditTally:
        """Back from `as_dict()` (as saved in audit.json); {} is an empty tally."""
        try:
            return cls(*(max(0, int(data.get(k) or 0)) for k in ("audited", "agreed", "skipped")))
        except (TypeError, ValueError):
            return cls()

    def as_dict(self) -> dict[str, Any]:
        return {
            "audited": self.audited,
            "agreed": self.agreed,
            "skipped": self.skipped,
            "estimated_precision": round(self.agreed / self.audited, 4) if self.audited else None,
        }


def quality_view(
    learner: FeedbackLearner,
    tally: AuditTally | None,
    visible: Callable[[str], bool] | None = None,
) -> dict[str, Any]:
    """What is known of the hits' quality, as `/v1/cache/stats` and the report show it: the
    audit tally (None where it is not known: a CLI report of a data_dir where no audit has
    finished), verdicts and learned thresholds per namespace (only those `visible` admits)."""

    def mine(d: dict[str, T]) -> dict[str, T]:
        return {k: v for k, v in d.items() if visible is None or visible(k)}

    return {
        "audit": None if tally is None else tally.as_dict(),
        "feedback": mine(learner.counts),
        "learned_thresholds": mine(learner.thresholds),
        # Wrong reports held until a second one corroborates them.
        "pending_wrong_reports": {k: len(v) for k, v in mine(learner.pending).items()},
    }
