"""Moving a data dir to another embedding model: every stored prompt embedded again by it.

A data dir's vectors are one model's, and a start with another model refuses
(`model_identity.py`). To switch (to the int8 copy `quantize-model` writes, say) without
losing the cached answers, `python -m cache_service reembed --data-dir D` (with
`CACHE_MODEL_DIR` naming the new model) rewrites each entry's vector from its prompt, the
text a lookup embeds, and records the new model. Offline: it holds the data dir's lock, so
no sidecar serves from it meanwhile.

An interruption must not leave a data dir that a start takes for either model's, with
vectors of both: the record says "re-embedding" from before the first entry is rewritten
until after the last, a start refuses such a record, and running the command again finishes
the job (an entry embedded twice by the new model is the same entry).
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from cache_service.backends.entry_journal import EntryJournal
from cache_service.backends.jsonfile import JsonFile
from cache_service.backends.snapshots import SNAPSHOT_DIR
from cache_service.backends.store import DiskCacheStore
from cache_service.cache.write_behind import journal_dir, replay
from cache_service.model_identity import RECORD, ModelIdentity, write_record
from cache_service.protocols import Embedder
from cache_service.settings import Settings

BATCH = 64
"""Prompts per model call: batches run grouped by length (`onnx_session.length_groups`), and
64 entries are a few hundred KB of records in memory."""


@dataclass
class Reembedded:
    entries: int = 0
    """Entries whose vector was made again."""
    exact_only: int = 0
    """Entries stored without a vector (matched exactly only): left as they are."""


def reembed(
    settings: Settings,
    embedder: Embedder,
    target: ModelIdentity,
    *,
    progress: Callable[[int, int], object] | None = None,
) -> Reembedded:
    """Rewrite the vectors of the data dir's entries with `embedder` (the model `target`
    names), then record `target` as its model. The caller holds the data dir's lock."""
    record = JsonFile(settings.data_dir / RECORD)
    write_record(record, target, reembedding=True)
    done = Reembedded()
    store = DiskCacheStore(settings.store_dir, settings.store_size_limit_bytes)
    try:
        # Entries answered but not stored when the last sidecar stopped: rewritten too.
        now = time.time()
        replay(EntryJournal(journal_dir(settings.data_dir)), partial(store.put, now=now), now)
        # The snapshot holds the old vectors, and a start trusts its vectors: the next start
        # rebuilds the index from the store instead.
        shutil.rmtree(settings.data_dir / SNAPSHOT_DIR, ignore_errors=True)
        ids = store.entry_ids()
        for start in range(0, len(ids), BATCH):
            entries = [e for e in map(store.get, ids[start : start + BATCH]) if e is not None]
            semantic = [e for e in entries if e.embedding is not None]
            done.exact_only += len(entries) - len(semantic)
            if semantic:
                vectors = embedder.embed([e.prompt for e in semantic])
                for entry, vector in zip(semantic, vectors, strict=True):
                    store.put(dataclasses.replace(entry, embedding=vector), now=time.time())
                done.entries += len(semantic)
            if progress is not None:
                progress(min(start + BATCH, len(ids)), len(ids))
    finally:
        store.close()
    write_record(record, target)
    return done
