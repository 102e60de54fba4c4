"""The hit-quality harness (benchmarks/quality/run.py) on a hand-made labelled file.

HashingEmbedder embeds a bag of words, so the cosines below follow from word counts:
same words -> 1.0; 6 shared of 7 words each -> 6/7; 5 shared, 5 vs 6 words -> 5/sqrt(30).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from benchmarks.quality.run import (
    FollowUpSet,
    PairSet,
    VectorTable,
    count,
    custom,
    gptcache_equivalent_cosine,
    run,
)
from tests.fakes import HashingEmbedder

PAIRS = [
    # P1 duplicate, same words reordered without breaking bigrams: served by every policy
    ("what is the capital of france", "the capital of france is what", 1),
    # P2 role swap, same words: bare cosine 1.0 serves it, the word-order guard refuses it
    ("flights from boston to denver", "flights from denver to boston", 0),
    # P3 number changed: cosine 6/7 = 0.857
    ("is a 19 year old an adult", "is a 17 year old an adult", 0),
    # P4 duplicate with an extra word: cosine 5/sqrt(30) = 0.913
    ("how do i bake bread", "how do i bake some bread", 1),
    # P5 unrelated
    ("best pizza in rome", "how to fix a flat tire", 0),
    # P6 identical text: an exact-key hit
    ("what is machine learning", "what is machine learning", 1),
    # P7 duplicate (cosine 0.913 in isolation); in one shared cache its text_b is P4's
    # text_a verbatim, so the exact key serves P4's answer: a misdirected hit
    ("how do i bake sourdough bread", "how do i bake bread", 1),
]


def _write_pairs(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.jsonl"
    path.write_text(
        "".join(json.dumps({"text_a": a, "text_b": b, "label": y}) + "\n" for a, b, y in PAIRS)
    )
    return path


def _counts(c: dict[str, Any]) -> tuple[int, int, int]:
    return c["right"], c["wrong_negative"], c["wrong_positive"]


@pytest.fixture
def table() -> VectorTable:
    return VectorTable(HashingEmbedder(), cache_id=None)


def test_hand_made_cosines_hold(table: VectorTable) -> None:
    # guards the arithmetic below against a hash collision in the fake embedder
    texts = [t for a, b, _ in PAIRS for t in (a, b)]
    table.add(texts)

    def cos(a: str, b: str) -> float:
        return float(table[a] @ table[b])

    assert cos(*PAIRS[0][:2]) == pytest.approx(1.0)
    assert cos(*PAIRS[1][:2]) == pytest.approx(1.0)
    assert cos(*PAIRS[2][:2]) == pytest.approx(6 / 7)
    assert cos(*PAIRS[3][:2]) == pytest.approx(5 / math.sqrt(30))
    assert cos(*PAIRS[6][:2]) == pytest.approx(5 / math.sqrt(30))
    assert abs(cos(*PAIRS[4][:2])) < 0.5
    assert cos(PAIRS[3][1], PAIRS[6][0]) == pytest.approx(5 / 6)  # below P4's own 0.913


def test_pairs_isolated_and_shared(tmp_path: Path, table: VectorTable) -> None:
    ps = custom(_write_pairs(tmp_path), "jsonl", None)
    assert isinstance(ps, PairSet)
    res = run([ps], table, use_gptcache=False, workroot=tmp_path / "work")["datasets"]["tiny"]
    assert (res["pairs"], res["positives"]) == (7, 4)

    pw = res["modes"]["pairwise"]["policies"]
    # (right, label-0 served, label-1 served the wrong entry)
    assert _counts(pw["cosine>=0.80"]) == (4, 2, 0)  # P1 P4 P6 P7 | P2 P3
    assert _counts(pw["cosine>=0.85"]) == (4, 2, 0)
    assert _counts(pw["cosine>=0.90"]) == (4, 1, 0)  # P3 drops out
    assert _counts(pw["cosine>=0.92"]) == (2, 1, 0)  # P4, P7 drop out
    assert _counts(pw["cosine>=0.95"]) == (2, 1, 0)
    assert _counts(pw["default"]) == (2, 0, 0)  # P2 refused by the word-order guard
    d = pw["cosine>=0.80"]
    assert d["precision"] == pytest.approx(4 / 6)
    assert d["recall"] == pytest.approx(1.0)
    assert d["negatives_served"] == pytest.approx(2 / 3)
    assert d["error_rate"] == pytest.approx(2 / 7)
    reasons = res["modes"]["pairwise"]["default_outcomes_by_reason"]
    assert reasons["word_order_differs"] == {"label0": 1, "label1": 0}
    assert reasons["exact"] == {"label0": 0, "label1": 1}
    gpt = res["modes"]["pairwise"]["gptcache_rule_computed"]
    assert gpt["cosine_threshold"] == pytest.approx(0.6)
    assert _counts(gpt) == (4, 2, 0)

    sh = res["modes"]["shared"]["policies"]
    assert _counts(sh["cosine>=0.80"]) == (3, 2, 1)  # P7 served P4's answer (exact key)
    assert _counts(sh["cosine>=0.90"]) == (3, 1, 1)
    assert _counts(sh["cosine>=0.95"]) == (2, 1, 1)
    assert _counts(sh["default"]) == (2, 0, 1)
    s = sh["cosine>=0.80"]
    assert s["precision"] == pytest.approx(3 / 6)
    assert s["recall"] == pytest.approx(3 / 4)
    assert s["error_rate"] == pytest.approx(3 / 7)
    assert res["modes"]["shared"]["gptcache"]["how"].startswith("COMPUTED")
    assert _counts(res["modes"]["shared"]["gptcache"]) == (3, 2, 1)

    sweep = {round(p["threshold"], 2): p for p in res["modes"]["pairwise"]["sweep"]}
    assert _counts(sweep[0.5]) == (4, 2, 0)
    assert _counts(sweep[0.86]) == (4, 1, 0)
    # only the exact hit (P6): float cosines of reordered texts fall a hair short of 1.0
    assert _counts(sweep[1.0]) == (1, 0, 0)


def test_followups_context_never_crosses(tmp_path: Path, table: VectorTable) -> None:
    rows = [
        ("What is the largest planet?", "Jupiter.", "What is a notable feature of it?"),
        ("Who wrote Hamlet?", "Shakespeare.", "What is a notable feature of it?"),
        ("What is Python?", "A language.", "Who created it?"),
    ]
    path = tmp_path / "fu.json"
    path.write_text(
        json.dumps(
            [
                {
                    "Main Query": m,
                    "Main Query Response": r,
                    "Follow-Up Query": f,
                    "Follow Up Query Response": "-",
                }
                for m, r, f in rows
            ]
        )
    )
    fs = custom(path, "followup", None)
    assert isinstance(fs, FollowUpSet)
    res = run([fs], table, use_gptcache=False, workroot=tmp_path / "work")["datasets"]["fu"]
    for mode, lookups in (("pairwise", 6), ("shared", 3)):
        for pol in ("cosine>=0.80", "cosine>=0.95", "default"):
            c = res["context"][mode]["policies"][pol]
            assert (c["lookups"], c["served"]) == (lookups, 0)
            # without the earlier turns the identical follow-up is an exact hit either way
            c = res["no_context"][mode]["policies"][pol]
            assert (c["lookups"], c["wrong_negative"]) == (lookups, 2)
    assert len(res["no_context"]["pairwise"]["served_pairs_default"]) == 2


def test_count_and_gptcache_rule() -> None:
    c = count([1, 1, 0, 0], [True, True, True, False], [True, False, False, False])
    assert (c.right, c.wrong_negative, c.wrong_positive, c.served) == (1, 1, 1, 3)
    assert c.precision == pytest.approx(1 / 3)
    assert c.recall == pytest.approx(1 / 2)
    assert c.negatives_served == pytest.approx(1 / 2)
    assert c.error_rate == pytest.approx(2 / 4)
    # SearchDistanceEvaluation: score 4 - d, d = 2 - 2cos; threshold 0.8 of [0, 4]
    assert gptcache_equivalent_cosine() == pytest.approx(0.6)
    assert gptcache_equivalent_cosine(0.9) == pytest.approx(0.8)


# gptcache 0.1.x uses SQLAlchemy 1.x spellings that 2.x flags as deprecated
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_gptcache_column_matches_its_cosine_rule(tmp_path: Path, table: VectorTable) -> None:
    pytest.importorskip("gptcache")
    pytest.importorskip("sqlalchemy")
    ps = custom(_write_pairs(tmp_path), "jsonl", None)
    res = run([ps], table, use_gptcache=True, workroot=tmp_path / "work")["datasets"]["tiny"]
    g = res["modes"]["shared"]["gptcache"]
    assert not g["how"].startswith("COMPUTED")
    # top-1 at cosine >= 0.6; GPTCache has no exact-key step, so P7's text_b finds P4's
    # identical stored question by vector (distance 0): misdirected as in our shared cache
    assert _counts(g) == (3, 2, 1)
    assert g["served_decisions_agreeing_with_cosine_rule"] == len(PAIRS)
