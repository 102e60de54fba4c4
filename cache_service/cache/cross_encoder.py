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
SKIPPED = "verifier_skipped"


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
        max_batch: int = 1,
        max_pairs: int = 2,
    ) -> None:
        """`max_batch` 1: measured on 2 cores with the int8 model, a pair cost 7.4 ms alone,
        8.5 ms each in twos and 13 ms each in sixteens when a batch was one run padded to its
        longest pair. Run in groups of like length (`onnx_session.length_groups`), batches of
        8-32 QQP pairs now score 8-17 % more pairs a second than one at a time
        (`benchmarks/model_batches.py`), but a pair then waits for its whole batch: not
        worth its latency for at most two candidates a lookup."""
        self.scorer = scorer
        self.threshold = threshold
        self.floor = floor
        self.timeout_s = timeout_s
        self.max_pairs = max_pairs
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
        """Best candidate first, one pair at a time, stopping at the first accepted: the
        matching chain serves the first survivor anyway, and on this CPU a pair costs the
        same alone as in a batch (see __init__), so a hit usually costs one pass. At most
        `max_pairs` are judged; the rest are refused unjudged (`verifier_skipped`): a
        candidate that far down the cosine order rarely wins, and each costs ~7 ms."""
        verdicts: list[Verdict] = []
        for candidate in candidates:
            if len(verdicts) >= self.max_pairs or any(v.accepted for v in verdicts):
                verdicts.append(Verdict(False, SKIPPED))
                continue
            verdict = await self._judge((candidate.entry.prompt, prompt))
            if verdict.reason == ERROR:
                # A failing model refuses the whole lookup: nothing it said can be trusted.
                return [Verdict(False, ERROR) for _ in candidates]
            verdicts.append(verdict)
        return verdicts

    async def _judge(self, pair: tuple[str, str]) -> Verdict:
        self.judged += 1
        try:
            score = await self.batcher.run(pair, self.timeout_s)
        except TimeoutError:  # ModelBusy included: refused at the door
            self.timeouts += 1
            return Verdict(False, TIMEOUT)
        except Exception:
            self.errors += 1
            log.exception("verifier model failed; candidates refused")
            return Verdict(False, ERROR)
        if score >= self.threshold:
            self.accepted += 1
            return Verdict(True)
        self.refused += 1
        return Verdict(False, REFUSED)

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
