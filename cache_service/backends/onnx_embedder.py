"""all-MiniLM-L6-v2 through ONNX Runtime and a `tokenizers` WordPiece tokenizer, with the
pooling sentence-transformers applies (mean over the attention mask, then L2 norm), written
out here: no torch and no sentence-transformers at serving.

Why not sentence-transformers' own ONNX backend (`embedder.py`, still used to export the
model and by `embedder_backend: torch`): it imports torch and transformers to run an ONNX
graph. Measured on this box at a million entries, that import made the model the slower half
of a restart (9 s of the 15.7 s to ready, beside the index restore), and torch alone is
~300 MB of resident memory that serving never uses. The vectors are the same: a test holds
them to sentence-transformers' within 1e-5.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cache_service.backends.embedder import manifest, onnx_path
from cache_service.backends.onnx_session import (
    RUN_COST_TOKENS,
    cpu_session,
    forward,
    input_names,
)
from cache_service.protocols import Vector

log = logging.getLogger(__name__)


class OnnxEmbedder:
    """The export under `model_dir` (manifest.json names it): texts in, unit vectors out.
    Blocking and CPU-bound: run it from the embedding batcher's thread."""

    backend = "onnx"

    def __init__(self, model_dir: Path, threads: int = 1, run_cost: int = RUN_COST_TOKENS) -> None:
        """`run_cost`: how a batch is split into runs (`onnx_session.length_groups`)."""
        from tokenizers import Tokenizer

        described = manifest(model_dir)
        exported = onnx_path(model_dir)
        self._dim = int(described["dimension"])
        tokenizer = Tokenizer.from_file(str(exported / "tokenizer.json"))
        # The file pads every input to 128 and cuts at 128; sentence-transformers cuts at the
        # model's max_seq_length (256), and so does this. Padding is `forward`'s, per group.
        tokenizer.enable_truncation(max_length=_max_seq_length(exported, described))
        tokenizer.no_padding()
        self._tokenizer = tokenizer
        self._run_cost = run_cost
        self._session = cpu_session(exported / str(described["onnx_file"]), threads)
        self._inputs = input_names(self._session)
        # The token states (sentence-transformers pools them), whatever the export names them.
        self._output = self._session.get_outputs()[0].name
        log.info("embedder loaded", extra={"backend": self.backend, "threads": threads})

    @property
    def dim(self) -> int:
        return self._dim

    def embed(self, texts: Sequence[str]) -> Vector:
        if not texts:
            return np.zeros((0, self._dim), dtype=np.float32)
        encodings = self._tokenizer.encode_batch(list(texts))
        pooled = np.empty((len(texts), self._dim), dtype=np.float32)
        for rows, tokens, mask in forward(
            self._session, self._output, encodings, self._inputs, self._run_cost
        ):
            weights = mask[:, :, None].astype(np.float32)
            summed = (tokens.astype(np.float32, copy=False) * weights).sum(axis=1)
            pooled[rows] = summed / np.clip(weights.sum(axis=1), 1e-9, None)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        out: Vector = np.ascontiguousarray(pooled / np.clip(norms, 1e-12, None), np.float32)
        return out


def _max_seq_length(exported: Path, described: dict[str, Any]) -> int:
    """sentence-transformers' max_seq_length for the export (its own config first)."""
    config = exported / "sentence_bert_config.json"
    if config.is_file():
        value = json.loads(config.read_text()).get("max_seq_length")
        if isinstance(value, int) and value > 0:
            return value
    return int(described.get("max_seq_length", 256))
