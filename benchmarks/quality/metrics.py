"""Hit-quality arithmetic, kept apart from any model so it can be unit-tested exactly.

Each lookup is one labelled pair: label 1 means serving the stored answer is right, 0 wrong.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class HitQuality:
    lookups: int
    positives: int
    negatives: int
    served: int
    right_hits: int
    wrong_hits: int

    @property
    def precision(self) -> float:
        """Share of served hits that were right; 1.0 when nothing was served (no wrong answer)."""
        return self.right_hits / self.served if self.served else 1.0

    @property
    def recall(self) -> float:
        """Share of the lookups that deserved a hit that got one."""
        return self.right_hits / self.positives if self.positives else 0.0

    @property
    def negatives_served(self) -> float:
        """Share of the lookups that deserved a miss but were served anyway."""
        return self.wrong_hits / self.negatives if self.negatives else 0.0

    @property
    def error_rate(self) -> float:
        """Wrong answers per lookup: what a user actually experiences."""
        return self.wrong_hits / self.lookups if self.lookups else 0.0


def hit_quality(labels: Sequence[int], served: Sequence[bool]) -> HitQuality:
    if len(labels) != len(served):
        raise ValueError("labels and served differ in length")
    right = sum(1 for y, s in zip(labels, served, strict=True) if s and y == 1)
    wrong = sum(1 for y, s in zip(labels, served, strict=True) if s and y != 1)
    pos = sum(1 for y in labels if y == 1)
    return HitQuality(
        lookups=len(labels),
        positives=pos,
        negatives=len(labels) - pos,
        served=right + wrong,
        right_hits=right,
        wrong_hits=wrong,
    )
