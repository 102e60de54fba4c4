"""Which verifier an app runs, and the cosine floor that follows from it: known before the
verifier's model loads (the guards and the index depend on it), loaded beside the rest."""

from __future__ import annotations

import asyncio
import logging

from cache_service.cache.cross_encoder import CrossEncoderVerifier, choose_floor, choose_threshold
from cache_service.protocols import PairScorer
from cache_service.settings import Settings

log = logging.getLogger("cache_service")


def _model_present(settings: Settings) -> bool:
    if settings.verifier == "off":
        return False
    return settings.verifier == "on" or (settings.verifier_dir / "manifest.json").is_file()


def wanted(settings: Settings, injected: PairScorer | None) -> bool:
    """Whether this app runs a verifier (known before its model loads: the guards depend
    on it). An injected model is used unless `verifier` is "off"."""
    return settings.verifier != "off" and (injected is not None or _model_present(settings))


async def load(settings: Settings, injected: PairScorer | None) -> CrossEncoderVerifier | None:
    """The verifier `wanted` promises, its model loaded; None where it says none."""
    if not wanted(settings, injected):
        if settings.verifier != "off":
            log.info(
                "no verifier model; verifier off",
                extra={"verifier_dir": str(settings.verifier_dir)},
            )
        return None
    scorer = injected
    if scorer is None:
        from cache_service.preflight import check_verifier

        # Again here (serve already checked): create_app is also built without the CLI.
        check_verifier(settings)
        scorer = await asyncio.to_thread(_load_pair_scorer, settings)
    verifier = CrossEncoderVerifier(
        scorer,
        threshold=choose_threshold(
            scorer.manifest,
            error_bound=settings.verifier_error_bound,
            override=settings.verifier_threshold,
        ),
        floor=choose_floor(scorer.manifest, settings.verifier_floor),
        timeout_s=settings.verifier_timeout_ms / 1000,
    )
    log.info(
        "verifier on",
        extra={
            "threshold": verifier.threshold,
            "floor": verifier.floor,
            "guards": settings.verifier_guards,
        },
    )
    return verifier


def _load_pair_scorer(settings: Settings) -> PairScorer:
    from cache_service.backends.pair_scorer import OnnxPairScorer

    # The embedder's thread count: the same cores, the same reasoning.
    return OnnxPairScorer(settings.verifier_dir, settings.embed_threads)


def search_floor(settings: Settings, injected: PairScorer | None) -> float:
    """The lowest cosine any search serves from: the verifier's floor with one (its
    manifest's, or `verifier_floor`), else the lowest threshold a request may ask for
    (`min_threshold`; feedback only raises a namespace's). The index measures its recall
    down to it (`ivf_build.noisy`)."""
    if not wanted(settings, injected):
        return settings.min_threshold
    if injected is not None:
        return choose_floor(injected.manifest, settings.verifier_floor)
    from cache_service.backends.ivf_build import RECALL_FLOOR
    from cache_service.backends.pair_scorer import read_manifest

    try:
        return choose_floor(read_manifest(settings.verifier_dir), settings.verifier_floor)
    except (OSError, ValueError, KeyError, TypeError):
        return RECALL_FLOOR  # no usable manifest: `load` refuses it, saying why
