"""`quantize-model`: the int8 copy is a model directory serving's loader reads, its manifest
names another revision (so a float32 data dir refuses it), and its vectors stay near the
float32 export's."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from cache_service.backends.embedder import load_embedder, manifest, onnx_file
from cache_service.backends.quantize import quantize_model
from tests.unit.test_onnx_embedder import MODELS, TEXTS


def test_the_int8_copy_loads_as_a_model_dir_and_stays_near_the_float_vectors(
    tmp_path: Path,
) -> None:
    source_written = onnx_file(MODELS).parent.stat().st_mtime_ns
    out = quantize_model(MODELS, tmp_path / "int8")
    # Nothing is written beside the float32 export, which may be read-only (the image's is).
    assert onnx_file(MODELS).parent.stat().st_mtime_ns == source_written
    described = manifest(out)
    assert described["revision"] != manifest(MODELS)["revision"] and "int8" in described["revision"]
    assert described["dimension"] == manifest(MODELS)["dimension"]
    exported = out / described["onnx_dir"] / described["onnx_file"]
    original = MODELS / described["onnx_dir"] / described["onnx_file"]
    assert exported.stat().st_size < original.stat().st_size / 3  # weights in one byte
    a = load_embedder(MODELS, "onnx").embed(TEXTS)
    b = load_embedder(out, "onnx").embed(TEXTS)
    assert np.allclose(np.linalg.norm(b, axis=1), 1.0, atol=1e-5)
    same = (a * b).sum(axis=1)
    assert same.min() > 0.97, same
    assert not np.allclose(a, b, atol=1e-4)  # quantised, not a copy of the float weights
    # A second call keeps what is there (setup scripts may run it twice).
    before = exported.stat().st_mtime_ns
    quantize_model(MODELS, tmp_path / "int8")
    assert exported.stat().st_mtime_ns == before
    assert json.loads((out / "manifest.json").read_text())["onnx_file"] == described["onnx_file"]
