"""The cross-encoder verifier: a model reading (stored prompt, new prompt) jointly, judging
whether one answer serves both. It sees what a bi-encoder's cosine cannot (who does what to
whom, which number, which entity), so with it on, the search hands it every candidate down
to a lower cosine floor and the model, not the cosine, decides.

Fail closed: a pair whose score does not come back within the deadline (the model is
backlogged, or admission refused it at once) is refused, never served: a miss costs one
upstream call, a wrong hit costs the caller a wrong answer.

The model runs in its own batcher thread (its own queue and admission), so a verifier
backlog never delays embeddings, and concurrent lookups' pairs share one forward pass.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from cache_service.cache.batcher import ModelBatcher
from cache_service.cache.matching import Candidate, Verdict
from cache_service.protocols import PairScorer

log = logging.getLogger("cache_service.cache")

REFUSED = "verifier"
TIMEOUT = "verifier_timeout"
ERROR = "verifier_error"


def choose_threshold(
    manifest: Mapping[str, Any], *, error_bound: float | None, override: float | None
) -> float:
    """The probability a pair must reach to be served.

    An explicit override wins. Else, with an error bound (the operator's accepted share of
    wrong hits): the smallest calibrated threshold whose measured wrong share meets it (the
    most hits that still keep the promise), or the strictest calibrated one if none does (the
    closest the model can come). Else the manifest's own calibrated default."""
    if override is not None:
        return float(override)
    if error_bound is not None:
        table = sorted(
            (float(row["threshold"]), float(row["wrong_share"]))
            for row in manifest.get("calibration") or ()
        )
        if table:
            for threshold, wrong_share in table:
                if wrong_share <= error_bound:
                    return threshold
            return table[-1][0]
        # No table to honour the bound with: fall through to the default, said once.
        log.warning("verifier manifest has no calibration table; error bound ignored")
    return float(manifest["threshold"])


def choose_floor(manifest: Mapping[str, Any], override: float | None) -> float:
    """The cosine below which candidates never reach the model (cost, not correctness: the
    model was calibrated on pairs above it)."""
    return float(override if override is not None else manifest["floor"])


class CrossEncoderVerifier:
    """The `Verifier` protocol over a `PairScorer`."""

    name = "cross_encoder"

    def __init__(
        self,
        scorer: PairScorer,
        *,
        threshold: float,
        floor: float,
        timeout_s: float,
        max_batch: int = 32,
    ) -> None:
        self.scorer = scorer
        self.threshold = threshold
        self.floor = floor
        self.timeout_s = timeout_s
        self.batcher: ModelBatcher[tuple[str, str], float] = ModelBatcher(
            lambda pairs: scorer.score(pairs), max_batch=max_batch, name="verify"
        )
        self.judged = 0
        self.accepted = 0
        self.refused = 0
        self.timeouts = 0
        self.errors = 0

    @property
    def shed(self) -> int:
        return self.batcher.shed

    async def verify(self, prompt: str, candidates: Sequence[Candidate]) -> list[Verdict]:
        # One batcher input per pair, gathered: the batcher packs them (and other lookups'
        # pairs) into one forward pass, and one pair missing the deadline loses only itself.
        results = await asyncio.gather(
            *(self.batcher.run((c.entry.prompt, prompt), self.timeout_s) for c in candidates),
            return_exceptions=True,
        )
        self.judged += len(results)
        failure = next(
            (
                r
                for r in results
                if isinstance(r, BaseException) and not isinstance(r, TimeoutError)
            ),
            None,
        )
        if isinstance(failure, asyncio.CancelledError):
            raise failure  # the lookup itself was cancelled: not the model's fault
        if failure is not None:
            # A failing model refuses the whole lookup (its other scores came from the same
            # broken model and cannot be trusted either): logged once per failure, counted.
            self.errors += 1
            log.error(
                "verifier model failed; candidates refused",
                exc_info=(type(failure), failure, failure.__traceback__),
            )
            return [Verdict(False, ERROR) for _ in results]
        verdicts: list[Verdict] = []
        for result in results:
            if isinstance(result, BaseException):  # TimeoutError, ModelBusy included
                self.timeouts += 1
                verdicts.append(Verdict(False, TIMEOUT))
            elif result >= self.threshold:
                self.accepted += 1
                verdicts.append(Verdict(True))
            else:
                self.refused += 1
                verdicts.append(Verdict(False, REFUSED))
        return verdicts

    def stats(self) -> dict[str, Any]:
        return {
            "verifier": self.name,
            "verifier_threshold": self.threshold,
            "verifier_floor": self.floor,
            "verifier_judged": self.judged,
            "verifier_accepted": self.accepted,
            "verifier_refused": self.refused,
            "verifier_timeouts": self.timeouts,
            "verifier_errors": self.errors,
            "verifier_shed": self.shed,
        }

    def close(self) -> None:
        self.batcher.close()
