"""The model that made a data dir's vectors is recorded at the first start, and a start with
another model refuses (`model_identity.py`); the fleet's record lives in Redis."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cache_service.backends.jsonfile import JsonFile
from cache_service.model_identity import (
    RECORD,
    ModelIdentity,
    ModelMismatch,
    claim_file,
    claim_local,
)
from cache_service.preflight import StartupError
from cache_service.settings import Settings

MODELS = Path(__file__).resolve().parents[2] / "models"
FLOAT = ModelIdentity("all-MiniLM-L6-v2", "bundled 0.1.0", 384)
INT8 = ModelIdentity("all-MiniLM-L6-v2", "bundled 0.1.0, int8 (dynamic)", 384)


def test_the_first_claim_records_the_model_and_the_same_model_claims_again(
    tmp_path: Path,
) -> None:
    file = JsonFile(tmp_path / RECORD)
    claim_file(file, FLOAT)
    assert ModelIdentity.parse(json.loads(file.path.read_text())) == FLOAT
    claim_file(file, FLOAT)  # a restart
    assert ModelIdentity.parse(file.load()) == FLOAT


def test_another_model_is_refused_naming_both_and_the_record_stays(tmp_path: Path) -> None:
    file = JsonFile(tmp_path / RECORD)
    claim_file(file, FLOAT)
    with pytest.raises(ModelMismatch) as refused:
        claim_file(file, INT8)
    message = str(refused.value)
    assert "bundled 0.1.0;" in message and "int8 (dynamic)" in message
    assert str(tmp_path) in message and "CACHE_MODEL_DIR" in message
    assert isinstance(refused.value, StartupError)  # `serve` prints it and exits 2
    assert ModelIdentity.parse(file.load()) == FLOAT
    with pytest.raises(ModelMismatch):  # another dimension is another model too
        claim_file(file, ModelIdentity(FLOAT.name, FLOAT.revision, 768))


def test_a_record_that_names_no_model_is_replaced(tmp_path: Path) -> None:
    file = JsonFile(tmp_path / RECORD)
    for junk in ({}, {"name": "x"}, {"name": "x", "revision": "y", "dimension": "many"}):
        file.save(junk)
        claim_file(file, FLOAT)
        assert ModelIdentity.parse(file.load()) == FLOAT


def test_the_identity_is_read_from_the_model_dirs_manifest(tmp_path: Path) -> None:
    described = json.loads((MODELS / "manifest.json").read_text())
    assert ModelIdentity.of_model_dir(MODELS) == ModelIdentity(
        described["name"], described["revision"], described["dimension"]
    )
    with pytest.raises(StartupError, match="unreadable manifest"):
        ModelIdentity.of_model_dir(tmp_path)


def test_a_local_sidecar_claims_its_data_dir_and_a_fleet_replica_does_not(
    tmp_path: Path,
) -> None:
    local = Settings(data_dir=tmp_path / "a", model_dir=MODELS)
    claim_local(local)
    assert ModelIdentity.parse(JsonFile(tmp_path / "a" / RECORD).load()) == (
        ModelIdentity.of_model_dir(MODELS)
    )
    fleet = Settings(data_dir=tmp_path / "b", model_dir=MODELS, redis_url="redis://127.0.0.1:1/0")
    claim_local(fleet)  # its entries are in Redis: `RedisFleet.claim_model` checks there
    assert not (tmp_path / "b" / RECORD).exists()
