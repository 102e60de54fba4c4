"""Loaders for the labelled pair sets used to measure hit quality.

Every loader returns ``Pair(text_a, text_b, label)`` so the harness can treat "would the cache
serve b's stored answer for a?" uniformly: label 1 means serving is right, 0 means it is wrong.
The data lives outside the project (``../shared/data``) and is read, never copied.
"""

from __future__ import annotations

import csv
import gzip
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Format = Literal["jsonl", "paws_tsv", "gptcache_mock", "followup"]

DEFAULT_DATA_DIR = Path(__file__).resolve().parents[3] / "shared" / "data"


@dataclass(frozen=True, slots=True)
class Pair:
    text_a: str
    text_b: str
    label: int


@dataclass(frozen=True, slots=True)
class FollowUp:
    main_query: str
    main_response: str
    followup_query: str
    followup_response: str


def _read_text(path: Path) -> str:
    if path.suffix == ".gz":
        with gzip.open(path, "rt", encoding="utf-8") as f:
            return f.read()
    return path.read_text(encoding="utf-8")


def load_followups(path: str | Path) -> list[FollowUp]:
    rows = json.loads(_read_text(Path(path)))
    return [
        FollowUp(
            main_query=r["Main Query"],
            main_response=r["Main Query Response"],
            followup_query=r["Follow-Up Query"],
            followup_response=r["Follow Up Query Response"],
        )
        for r in rows
    ]


def followup_cross_pairs(followups: Sequence[FollowUp]) -> list[Pair]:
    """Every ordered pair of follow-ups from different conversations, all label 0.

    Each follow-up only makes sense after its own main query, so serving follow-up j's answer
    for follow-up i is always wrong, whatever the text similarity.
    """
    return [
        Pair(a.followup_query, b.followup_query, 0)
        for i, a in enumerate(followups)
        for j, b in enumerate(followups)
        if i != j
    ]


def load_pairs(path: str | Path, fmt: Format) -> list[Pair]:
    """Load labelled pairs; ``fmt`` picks the file layout.

    - ``jsonl``: JSON lines (optionally .gz) with ``text_a``, ``text_b``, ``label``.
    - ``paws_tsv``: PAWS ``id<TAB>sentence1<TAB>sentence2<TAB>label``, no header.
    - ``gptcache_mock``: JSON list of ``{origin, similar}``, all positive.
    - ``followup``: the MeanCache follow-up json, as cross-conversation negatives.
    """
    p = Path(path)
    if fmt == "jsonl":
        pairs = []
        for line in _read_text(p).splitlines():
            if line.strip():
                r = json.loads(line)
                pairs.append(Pair(str(r["text_a"]), str(r["text_b"]), int(r["label"])))
        return pairs
    if fmt == "paws_tsv":
        with p.open(encoding="utf-8", newline="") as f:
            # PAWS text contains bare quotes (`` '' "), so quoting must be off.
            reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
            return [Pair(row[1], row[2], int(row[3])) for row in reader if len(row) >= 4]
    if fmt == "gptcache_mock":
        rows = json.loads(_read_text(p))
        return [Pair(r["origin"], r["similar"], 1) for r in rows]
    if fmt == "followup":
        return followup_cross_pairs(load_followups(p))
    raise ValueError(f"unknown format {fmt!r}")


def split_sample(pairs: Sequence[Pair], n: int, seed: int = 0, parts: int = 2) -> list[list[Pair]]:
    """``parts`` disjoint random samples of ``n`` pairs each (fixed seed → reproducible)."""
    idx = list(range(len(pairs)))
    random.Random(seed).shuffle(idx)
    if n * parts > len(idx):
        raise ValueError("not enough pairs for the requested disjoint samples")
    return [[pairs[i] for i in idx[k * n : (k + 1) * n]] for k in range(parts)]


def standard_sets(data_dir: Path = DEFAULT_DATA_DIR, qqp_n: int = 10_000) -> dict[str, list[Pair]]:
    """The sets the quality numbers are reported on: QQP fit/held-out samples, PAWS dev, mock."""
    qqp = load_pairs(data_dir / "qqp_pairs.jsonl.gz", "jsonl")
    fit, held = split_sample(qqp, qqp_n, seed=0, parts=2)
    return {
        "qqp_fit": fit,
        "qqp_held": held,
        "paws_dev": load_pairs(data_dir / "paws_wiki_dev.tsv", "paws_tsv"),
        "gptcache_mock": load_pairs(data_dir / "gptcache_mock_pairs.json", "gptcache_mock"),
        "followup_cross": load_pairs(data_dir / "followup_queries.json", "followup"),
    }
