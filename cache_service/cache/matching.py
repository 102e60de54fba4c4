"""The matching chain: which stored candidate, if any, may answer a new prompt.

Three kinds of step, cheapest first, each able only to refuse: the similarity threshold, the
lexical guards (`guards.py`: pure, tens of µs, run in the search thread beside the store
reads), then any number of verifiers behind the `Verifier` protocol (models reading both
prompts, async and batched, run on the event loop's side of the search). A candidate is
served only if every step lets it through; the first survivor of all of them wins, since
candidates arrive best first.

With a verifier configured the first step's cut-off is a lower cosine floor rather than the
similarity threshold (`CacheFront.search_threshold`): the model, not the cosine, decides
between floor and threshold, and a lookup with nothing above the floor never reaches it.

A verifier that cannot answer in time must refuse (fail closed to a miss): a wrong answer
costs more than a call upstream.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from cache_service.protocols import Entry


@dataclass(frozen=True, slots=True)
class Candidate:
    """A stored entry the threshold and the guards let through, with its similarity."""

    entry: Entry
    similarity: float


@dataclass(frozen=True, slots=True)
class Verdict:
    accepted: bool
    reason: str = "ok"
    """Why it was refused, for `X-Cache-Rejected-By` and the miss statistics."""


class Verifier(Protocol):
    name: str

    async def verify(self, prompt: str, candidates: Sequence[Candidate]) -> list[Verdict]:
        """One verdict per candidate, in order. Batched: all candidates of a lookup (and,
        inside an implementation, of concurrent lookups) may be judged in one model call."""
        ...


@dataclass(frozen=True, slots=True)
class Chosen:
    candidate: Candidate | None
    best_rejected: float | None
    reason: str


async def choose(
    prompt: str, candidates: Sequence[Candidate], verifiers: Sequence[Verifier]
) -> Chosen:
    """The first candidate every verifier accepts. Each verifier sees only the candidates
    the ones before it accepted, so a costly model judges as few pairs as possible."""
    alive = list(candidates)
    best_rejected: float | None = None
    reason = "ok"
    for verifier in verifiers:
        if not alive:
            break
        verdicts = await verifier.verify(prompt, alive)
        kept = []
        for candidate, verdict in zip(alive, verdicts, strict=True):
            if verdict.accepted:
                kept.append(candidate)
            elif best_rejected is None or candidate.similarity > best_rejected:
                best_rejected, reason = candidate.similarity, verdict.reason
        alive = kept
    if alive:
        return Chosen(alive[0], best_rejected, "ok")
    return Chosen(None, best_rejected, reason)
