"""The verifier's cross-encoder: a BERT-style pair classifier exported to ONNX, run through
ONNX Runtime with a HuggingFace `tokenizers` WordPiece tokenizer (no torch at serving).

The model directory holds `manifest.json` (max_len, calibrated threshold and floor),
`tokenizer.json` and the ONNX file the manifest names. Nothing here downloads.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cache_service.backends.onnx_session import (
    RUN_COST_TOKENS,
    cpu_session,
    forward,
    input_names,
)

log = logging.getLogger(__name__)

DEFAULT_MAX_LEN = 96


def read_manifest(model_dir: Path) -> dict[str, Any]:
    data = json.loads((model_dir / "manifest.json").read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{model_dir / 'manifest.json'} must hold a JSON object")
    return data


class OnnxPairScorer:
    """`score` returns sigmoid(logit) per (stored prompt, new prompt) pair. Blocking and
    CPU-bound: call it from the verifier's batcher thread, never on the event loop."""

    def __init__(self, model_dir: Path, threads: int = 1, run_cost: int = RUN_COST_TOKENS) -> None:
        """`run_cost`: how a batch is split into runs (`onnx_session.length_groups`)."""
        from tokenizers import Tokenizer

        self.model_dir = model_dir
        self._manifest = read_manifest(model_dir)
        max_len = int(self._manifest.get("max_len", DEFAULT_MAX_LEN))
        tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        # The file may carry the embedder's settings (padded to 128): the pair model was
        # trained at max_len, longest_first keeps both prompts represented when one is long.
        tokenizer.enable_truncation(max_length=max_len, strategy="longest_first")
        # Padding is `forward`'s, per group of similar length: short pairs cost short passes.
        tokenizer.no_padding()
        self._tokenizer = tokenizer
        self._run_cost = run_cost
        onnx_file = model_dir / str(self._manifest.get("onnx_file", "model.onnx"))
        self._session = cpu_session(onnx_file, threads)
        self._inputs = input_names(self._session)
        self._output = "logits"
        outputs = [o.name for o in self._session.get_outputs()]
        if self._output not in outputs:
            self._output = outputs[0]
        log.info(
            "verifier model loaded",
            extra={"model": self._manifest.get("name"), "threads": threads, "max_len": max_len},
        )

    @property
    def manifest(self) -> dict[str, Any]:
        return self._manifest

    def score(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        if not pairs:
            return []
        encodings = self._tokenizer.encode_batch([(a, b) for a, b in pairs])
        flat = np.empty(len(pairs), dtype=np.float64)
        for rows, logits, _ in forward(
            self._session, self._output, encodings, self._inputs, self._run_cost
        ):
            flat[rows] = logits.astype(np.float64).reshape(len(rows), -1)[:, 0]
        return [float(p) for p in 1.0 / (1.0 + np.exp(-flat))]
