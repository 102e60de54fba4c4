"""Which model made the vectors a data dir (or a fleet's Redis) holds, and the refusal to
compare them with another model's.

A lookup compares its prompt's vector with stored ones by cosine, so both must come from one
model. Point `model_dir` at another export (another model, or the same weights in int8,
`quantize-model`: one text's two vectors differ in cosine by up to ~0.016)
and every stored vector would be scored against the other model's, silently: the threshold,
the guards' tuning and the learned thresholds would no longer mean what they were measured
to mean, and nothing would say so. So the first start records the model (its manifest's
name, revision and dimension) beside the entries, and a later start with another refuses,
naming both.

A data dir from before this record is taken to be the configured model's: until the record
existed, nothing else could have made its vectors.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cache_service.backends.jsonfile import JsonFile
from cache_service.preflight import StartupError
from cache_service.settings import Settings

RECORD = "model.json"
"""The record's file in a data dir; in Redis, the key `<redis_prefix>:model`."""


class ModelMismatch(StartupError):
    """The entries' vectors were made by another model than the one configured."""


@dataclass(frozen=True)
class ModelIdentity:
    name: str
    revision: str
    dimension: int

    @classmethod
    def of_model_dir(cls, model_dir: Path) -> ModelIdentity:
        from cache_service.backends.embedder import manifest

        try:
            described = manifest(model_dir)
            return cls(
                str(described["name"]), str(described["revision"]), int(described["dimension"])
            )
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise StartupError(f"embedding model: unreadable manifest in {model_dir}: {e}") from e

    @classmethod
    def parse(cls, data: Any) -> ModelIdentity | None:
        """The identity recorded in `data` (a dict), or None when it holds none."""
        try:
            return cls(str(data["name"]), str(data["revision"]), int(data["dimension"]))
        except (KeyError, TypeError, ValueError):
            return None

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    def __str__(self) -> str:
        return f"{self.name} ({self.revision}; {self.dimension}-d)"


def mismatch(recorded: ModelIdentity, configured: ModelIdentity, where: str) -> ModelMismatch:
    return ModelMismatch(
        f"the entries in {where} were embedded by {recorded}, but model_dir holds {configured}: "
        "their vectors cannot be compared. Point CACHE_MODEL_DIR back at that model, or use "
        "another data dir (or redis_prefix) for this one."
    )


def write_record(file: JsonFile, identity: ModelIdentity, *, reembedding: bool = False) -> None:
    """The data dir's record: `identity`, or with `reembedding` the model its entries are
    being moved to (`reembed.py`), which a start refuses until the move is done."""
    file.save({**asdict(identity), "reembedding": True} if reembedding else asdict(identity))


def claim_file(file: JsonFile, configured: ModelIdentity) -> None:
    """Record `configured` as the data dir's model, or raise ModelMismatch if another one is
    recorded there."""
    data = file.load()
    if data.get("reembedding"):
        raise StartupError(
            f"the entries in {file.path.parent} were being embedded again by "
            f"{ModelIdentity.parse(data)} when that stopped: run `python -m cache_service "
            "reembed` again with that model to finish"
        )
    recorded = ModelIdentity.parse(data)
    if recorded is None:
        write_record(file, configured)
    elif recorded != configured:
        raise mismatch(recorded, configured, str(file.path.parent))


def claim_local(settings: Settings) -> None:
    """`serve`'s check for a sidecar on its own data dir (a fleet's replicas check Redis
    instead, once it answers: `RedisFleet.claim_model`)."""
    if settings.redis_url is None:
        claim_file(
            JsonFile(settings.data_dir / RECORD), ModelIdentity.of_model_dir(settings.model_dir)
        )
