"""A fleet's replicas share one Redis of entries: a replica configured with another model
than the one that made them refuses to start (`RedisFleet.claim_model`)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from cache_service.model_identity import ModelIdentity, ModelMismatch
from cache_service.protocols import SystemClock
from cache_service.redis_fleet import RedisFleet
from cache_service.settings import Settings

FLOAT = ModelIdentity("all-MiniLM-L6-v2", "bundled 0.1.0", 384)
INT8 = ModelIdentity("all-MiniLM-L6-v2", "bundled 0.1.0, int8 (dynamic)", 384)


def _fleet(tmp_path: Path, redis_url: str, prefix: str = "t") -> RedisFleet:
    settings = Settings(
        data_dir=tmp_path, redis_url=redis_url, redis_prefix=prefix, redis_timeout_s=0.5
    )
    return RedisFleet.open(settings, SystemClock())


async def test_the_first_replica_records_the_model_and_another_model_is_refused(
    tmp_path: Path, redis_url: str
) -> None:
    first, second, other = (_fleet(tmp_path, redis_url) for _ in range(3))
    try:
        await first.claim_model(FLOAT)
        await second.claim_model(FLOAT)  # same model: joins
        with pytest.raises(ModelMismatch, match="int8") as refused:
            await other.claim_model(INT8)
        assert "prefix 't'" in str(refused.value)
        # Another prefix is another fleet, with a model of its own.
        elsewhere = _fleet(tmp_path, redis_url, prefix="u")
        try:
            await elsewhere.claim_model(INT8)
        finally:
            await elsewhere.close()
    finally:
        for fleet in (first, second, other):
            await fleet.close()


async def test_with_redis_away_the_replica_starts_unchecked(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fleet = _fleet(tmp_path, "redis://127.0.0.1:1/0")
    try:
        with caplog.at_level(logging.WARNING):
            await fleet.claim_model(INT8)
        assert "not checked" in caplog.text
    finally:
        await fleet.close()
