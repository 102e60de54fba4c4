"""How a batch is best run through the models: one run padded to its longest input, runs of
similar length (`onnx_session.length_groups`, what serving does), or one input at a time.

Under many clients the embedding batcher hands the model up to `embed_batch_max` prompts at
once, of whatever lengths arrived together; the verifier gets pairs. Random batches of real
sentences (QQP questions, GPTCache's web sentences, the latency benchmark's paraphrases;
QQP pairs for the verifier) go through all three ways in turn, the order shuffled per batch,
so a box that slows down mid-run slows every way alike. Inputs per second are summed over
the batches; the load average is recorded beside them.

    python -m benchmarks.model_batches --out benchmarks/results/model_batches.json
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import latency as L
from cache_service.backends.onnx_embedder import OnnxEmbedder
from cache_service.backends.pair_scorer import OnnxPairScorer

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"
ONE_RUN = 10**9  # a run cost no padding outweighs: the whole batch in one run


def _sets(rng: random.Random) -> dict[str, list[str]]:
    with gzip.open(DATA / "qqp_pairs.jsonl.gz", "rt") as f:
        qqp = [json.loads(line)["text_a"] for line in f]
    web = [row["origin"] for row in json.loads((DATA / "gptcache_mock_pairs.json").read_text())]
    return {
        "qqp questions": rng.sample(qqp, 2000),
        "gptcache web sentences": web,
        "latency paraphrases": [para for _, para in L.PAIRS],
    }


def _qqp_pairs(rng: random.Random) -> list[tuple[str, str]]:
    with gzip.open(DATA / "qqp_pairs.jsonl.gz", "rt") as f:
        rows = [json.loads(line) for line in f]
    return [(r["text_a"], r["text_b"]) for r in rng.sample(rows, 2000)]


def _race(
    ways: dict[str, Callable[[list[Any]], object]],
    items: Sequence[Any],
    size: int,
    batches: int,
    rng: random.Random,
) -> dict[str, Any]:
    spent = dict.fromkeys(ways, 0.0)
    load = os.getloadavg()[0]
    for _ in range(batches):
        batch = [rng.choice(items) for _ in range(size)]
        names = list(ways)
        rng.shuffle(names)
        for name in names:
            t0 = time.perf_counter()
            ways[name](batch)
            spent[name] += time.perf_counter() - t0
    per_s = {name: round(size * batches / s, 1) for name, s in spent.items()}
    return {"per_s": per_s, "batch": size, "batches": batches, "load": round(load, 2)}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batches", type=int, default=20, help="batches per set and size")
    p.add_argument("--sizes", default="8,32")
    p.add_argument("--out", type=Path)
    a = p.parse_args(argv)
    rng = random.Random(11)
    models = ROOT / "models"
    grouped, one_run = OnnxEmbedder(models), OnnxEmbedder(models, run_cost=ONE_RUN)
    embed_ways: dict[str, Callable[[list[Any]], object]] = {
        "one run": one_run.embed,
        "grouped": grouped.embed,
        "one at a time": lambda batch: [grouped.embed([t]) for t in batch],
    }
    verifier = models / "verifier"
    scorer = OnnxPairScorer(verifier)
    scorer_one_run = OnnxPairScorer(verifier, run_cost=ONE_RUN)
    pair_ways: dict[str, Callable[[list[Any]], object]] = {
        "one run": scorer_one_run.score,
        "grouped": scorer.score,
        "one at a time": lambda batch: [scorer.score([pair]) for pair in batch],
    }
    for embed in embed_ways.values():  # warm up: ONNX arenas, tokenizer caches
        embed(["warm up"] * 4)
    for score in pair_ways.values():
        score([("warm", "up")] * 4)
    rows = []
    for size in (int(s) for s in a.sizes.split(",")):
        for name, items in _sets(rng).items():
            got = _race(embed_ways, items, size, a.batches, rng)
            rows.append({"model": "embedder", "inputs": name, **got})
            print(json.dumps(rows[-1]), flush=True)
        got = _race(pair_ways, _qqp_pairs(rng), size, a.batches, rng)
        rows.append({"model": "verifier", "inputs": "qqp pairs", **got})
        print(json.dumps(rows[-1]), flush=True)
    report = {"load_avg": os.getloadavg(), "threads": 1, "rows": rows}
    if a.out is not None:
        a.out.write_text(json.dumps(report, indent=1) + "\n")
    print(markdown(report))
    return 0


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "| model | inputs | batch | one run (inputs/s) | grouped | one at a time | load |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in report["rows"]:
        s = r["per_s"]
        lines.append(
            f"| {r['model']} | {r['inputs']} | {r['batch']} | {s['one run']} | "
            f"**{s['grouped']}** | {s['one at a time']} | {r['load']} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
