"""An Entry as a plain record, the one format every store persists.

Plain types only (str, numbers, None, dicts and lists of them, the vector as little-endian
float32 bytes): a record must stay readable after the Entry class changes, and by any store.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cache_service.protocols import Entry, answer_json


def to_record(entry: Entry) -> dict[str, Any]:
    return {
        "v": 2,
        "id": entry.id,
        "scope": entry.scope,
        "exact_key": entry.exact_key,
        "namespace": entry.namespace,
        "model": entry.model,
        "prompt": entry.prompt,
        "embedding": None if entry.embedding is None else entry.embedding.astype("<f4").tobytes(),
        "body": entry.body,
        "created": entry.created,
        "expires": entry.expires,
        "prompt_tokens": entry.prompt_tokens,
        "completion_tokens": entry.completion_tokens,
        "cached_tokens": entry.cached_tokens,
        "meta": entry.meta,
    }


def from_record(r: dict[str, Any]) -> Entry:
    emb = r["embedding"]
    return Entry(
        id=r["id"],
        scope=r["scope"],
        exact_key=r["exact_key"],
        namespace=r["namespace"],
        model=r["model"],
        prompt=r["prompt"],
        embedding=None if emb is None else np.frombuffer(emb, dtype="<f4").copy(),
        # Version 1 kept the answer as a dict: encoded once here, as the store would now.
        body=r["body"] if "body" in r else answer_json(r.get("response")),
        created=r["created"],
        expires=r["expires"],
        prompt_tokens=r["prompt_tokens"],
        completion_tokens=r["completion_tokens"],
        # Records written before prompt-cache pricing have none: saved at full input price.
        cached_tokens=r.get("cached_tokens", 0),
        meta=r.get("meta") or {},
    )
