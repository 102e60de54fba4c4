"""The serving embedder (ONNX Runtime alone) makes sentence-transformers' vectors, without
importing torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cache_service.backends.embedder import SentenceTransformerEmbedder, load_embedder
from cache_service.backends.onnx_embedder import OnnxEmbedder

MODELS = Path(__file__).resolve().parents[2] / "models"

TEXTS = [
    "How do I reset my password?",
    "what's the fastest way to get a new password",
    "Écrivez-moi un haïku sur la pluie ☔ 日本語",
    "x",
    "word " * 400,  # past the model's 256-token window: cut, not padded to it
    "Order 1234 arrived with a broken lid; how do I claim a replacement?",
]


@pytest.fixture(scope="module")
def ours() -> OnnxEmbedder:
    return OnnxEmbedder(MODELS)


def test_the_vectors_are_sentence_transformers_own(ours: OnnxEmbedder) -> None:
    reference = SentenceTransformerEmbedder(MODELS, "onnx").embed(TEXTS)
    got = ours.embed(TEXTS)  # one batch of mixed lengths: padding must not leak in
    assert got.shape == (len(TEXTS), ours.dim) and got.dtype == np.float32
    assert np.abs(got - reference).max() < 1e-5
    one_by_one = np.stack([ours.embed([t])[0] for t in TEXTS])
    assert np.abs(one_by_one - got).max() < 1e-5
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert ours.embed([]).shape == (0, ours.dim)


def test_serving_loads_it_without_torch() -> None:
    code = (
        "import sys; from pathlib import Path;"
        "from cache_service.backends.embedder import load_embedder;"
        f"e = load_embedder(Path({str(MODELS)!r}));"
        "e.embed(['hello']); print(type(e).__name__, 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["OnnxEmbedder", "False"]


def test_the_torch_backend_is_still_there_when_asked_for() -> None:
    assert isinstance(load_embedder(MODELS, "torch"), SentenceTransformerEmbedder)
