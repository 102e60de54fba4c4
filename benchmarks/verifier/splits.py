"""Which labelled pairs train the verifier, which calibrate its threshold, which measure it.

Fixed by seed and content, never by run, so the training script, the calibration and the
quality harness agree without passing files around:

- QQP (80,854 pairs): the seed-0 shuffle of row indices that `benchmarks.quality` already
  uses. Positions 0..9,999 (`qqp_fit`, where the guards were tuned) calibrate; 10,000..19,999
  (`qqp_held`, the quality report's set) are never trained or calibrated on; 20,000.. train.
  The same popular question can appear in pairs on both sides (QQP reuses questions); pairs,
  not sentences, are disjoint.
- PAWS dev (8,000): PAWS builds many pairs from one source sentence, so pairs are grouped by
  the sentences they share (connected components) and whole groups go to one split by a hash
  of their first sentence: ~60 % train, ~15 % calibrate, ~25 % evaluate.
- GPTCache's mock paraphrases (999, all positive): seed-1 shuffle, 400 train, 100
  calibrate, 499 evaluate.
- Follow-ups across conversations: evaluation only.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from benchmarks.quality.datasets import DEFAULT_DATA_DIR, Pair, load_pairs

Split = Literal["train", "calibrate", "evaluate"]


def qqp_split(pairs: Sequence[Pair]) -> dict[Split, list[Pair]]:
    idx = list(range(len(pairs)))
    random.Random(0).shuffle(idx)
    return {
        "calibrate": [pairs[i] for i in idx[:10_000]],
        "evaluate": [pairs[i] for i in idx[10_000:20_000]],
        "train": [pairs[i] for i in idx[20_000:]],
    }


def _components(pairs: Sequence[Pair]) -> list[str]:
    """A name per pair, its component's least sentence: pairs sharing a sentence
    (transitively) share it, whatever the file's order."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for p in pairs:
        a, b = find(p.text_a), find(p.text_b)
        if a != b:
            parent[max(a, b)] = min(a, b)
    return [find(p.text_a) for p in pairs]


def paws_split(pairs: Sequence[Pair]) -> dict[Split, list[Pair]]:
    out: dict[Split, list[Pair]] = {"train": [], "calibrate": [], "evaluate": []}
    for p, root in zip(pairs, _components(pairs), strict=True):
        bucket = int(hashlib.sha256(root.encode()).hexdigest()[:8], 16) % 100
        split: Split = "train" if bucket < 60 else "calibrate" if bucket < 75 else "evaluate"
        out[split].append(p)
    return out


def mock_split(pairs: Sequence[Pair]) -> dict[Split, list[Pair]]:
    idx = list(range(len(pairs)))
    random.Random(1).shuffle(idx)
    return {
        "train": [pairs[i] for i in idx[:400]],
        "calibrate": [pairs[i] for i in idx[400:500]],
        "evaluate": [pairs[i] for i in idx[500:]],
    }


def labelled_splits(data_dir: Path = DEFAULT_DATA_DIR) -> dict[str, dict[Split, list[Pair]]]:
    """Every labelled set by split; follow-ups are evaluation only."""
    return {
        "qqp": qqp_split(load_pairs(data_dir / "qqp_pairs.jsonl.gz", "jsonl")),
        "paws": paws_split(load_pairs(data_dir / "paws_wiki_dev.tsv", "paws_tsv")),
        "mock": mock_split(load_pairs(data_dir / "gptcache_mock_pairs.json", "gptcache_mock")),
        "followup": {
            "train": [],
            "calibrate": [],
            "evaluate": load_pairs(data_dir / "followup_queries.json", "followup"),
        },
    }
