"""The int8 copy of the embedder (`cache_service/backends/quantize.py`) against the float32
export: speed, and how far its vectors move.

The embedder's forward pass is bound by reading its weights: ~90 MB of float32 per pass, past
the 32 MiB L3 here, so a BERT-fused graph of the same weights (`onnxruntime.transformers`)
gave the same vectors within 2e-7 and no speed; int8 weights are a quarter of that.

    python -m benchmarks.quantized_embedder --out /tmp/minilm-int8

Then `python -m benchmarks.quality.run --model-dir /tmp/minilm-int8` measures hit quality
with it. Results on record: README, "An int8 embedder".
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cache_service.backends.embedder import onnx_file
from cache_service.backends.quantize import quantize_model

ROOT = Path(__file__).resolve().parent.parent


def compare(float_dir: Path, int8_dir: Path, n: int, rounds: int) -> dict[str, Any]:
    """Speed in alternation (one encode of a paraphrase, of a miss prompt, batch-32), and how
    far the int8 vectors are from the float32 ones: cosine between the two vectors of one
    text, and the change in the cosine of each labelled pair of the latency benchmark."""
    from benchmarks import latency as L
    from benchmarks.compare import encode_batch32, encode_one
    from cache_service.backends.onnx_embedder import OnnxEmbedder

    models = {"float32": OnnxEmbedder(float_dir, 1), "int8": OnnxEmbedder(int8_dir, 1)}
    paraphrases = [p for _, p in L.PAIRS]
    originals = [o for o, _ in L.PAIRS]
    misses = L.miss_prompts(64, "r0", random.Random(3))
    texts = originals + paraphrases + misses
    a, b = models["float32"].embed(texts), models["int8"].embed(texts)
    same_text = (a * b).sum(axis=1)
    k = len(L.PAIRS)
    pair_float = (a[:k] * a[k : 2 * k]).sum(axis=1)
    pair_int8 = (b[:k] * b[k : 2 * k]).sum(axis=1)
    shift = np.abs(pair_int8 - pair_float)
    runs: list[dict[str, Any]] = []
    for r in range(rounds):
        for name in models if r % 2 == 0 else reversed(list(models)):
            # The side-by-side benchmark's own floors, so the figures read alike.
            model = models[name]
            runs.append(
                {
                    "model": name,
                    "round": r,
                    "load": round(os.getloadavg()[0], 2),
                    "paraphrase_p50_ms": encode_one(model, paraphrases, n)["p50_ms"],
                    "miss_prompt_p50_ms": encode_one(model, misses, n)["p50_ms"],
                    "batch32_per_s": encode_batch32(model, paraphrases, n)["per_s"],
                }
            )

    def med(name: str, key: str) -> float:
        return round(float(statistics.median(x[key] for x in runs if x["model"] == name)), 2)

    keys = ("paraphrase_p50_ms", "miss_prompt_p50_ms", "batch32_per_s")
    return {
        "model_bytes": {
            name: os.path.getsize(onnx_file(d))
            for name, d in (("float32", float_dir), ("int8", int8_dir))
        },
        "median": {name: {key: med(name, key) for key in keys} for name in models},
        "same_text_cosine": {
            "min": round(float(same_text.min()), 4),
            "p50": round(float(np.median(same_text)), 4),
        },
        "pair_cosine_shift": {
            "pairs": k,
            "mean": round(float(shift.mean()), 4),
            "max": round(float(shift.max()), 4),
        },
        "runs": runs,
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model-dir", type=Path, default=ROOT / "models", help="the float32 export")
    p.add_argument("--out", type=Path, required=True, help="where the int8 model dir goes")
    p.add_argument("--n", type=int, default=200, help="encodes per timing")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--json", type=Path, help="write the comparison here")
    a = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    quantize_model(a.model_dir, a.out)
    report = compare(a.model_dir, a.out, a.n, a.rounds)
    text = json.dumps(report, indent=1)
    if a.json is not None:
        a.json.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
