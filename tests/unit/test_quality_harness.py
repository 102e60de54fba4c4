"""The hit-quality harness (benchmarks/quality/run.py) on a hand-made labelled file.

HashingEmbedder embeds a bag of words, so the cosines below follow from word counts: k words
shared between texts of m and n distinct words -> k / sqrt(m n) (same words -> 1.0).
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
    # P7 duplicate at cosine 5/sqrt(42) = 0.772; in one shared cache P4's text_a is nearer
    # (5/sqrt(35) = 0.845): a misdirected hit where served
    ("how do i bake sourdough bread", "how do i bake bread at home", 1),
    # P8 non-duplicate at cosine 3/4; in one shared cache its text_b is P6's text_a verbatim
    # (exact key): serving that answer is right although P8 is labelled 0
    ("what is deep learning", "what is machine learning", 0),
]


def _write_pairs(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.jsonl"
    path.write_text(
        "".join(json.dumps({"text_a": a, "text_b": b, "label": y}) + "\n" for a, b, y in PAIRS)
    )
    return path


def _counts(c: dict[str, Any]) -> tuple[int, int, int, int]:
    """(right, right on label-1 lookups, label-0 served wrongly, label-1 misdirected)"""
    return c["right"], c["right_positive"], c["wrong_negative"], c["wrong_positive"]


@pytest.fixture
def table() -> VectorTable:
    return VectorTable(HashingEmbedder(), cache_id=None)


def test_hand_made_cosines_hold(table: VectorTable) -> None:
    # guards the arithmetic below against a hash collision in the fake embedder
    table.add([t for a, b, _ in PAIRS for t in (a, b)])

    def cos(a: str, b: str) -> float:
        return float(table[a] @ table[b])

    (p1, p2, p3, p4, p5, _p6, p7, p8) = [(a, b) for a, b, _ in PAIRS]
    assert cos(*p1) == pytest.approx(1.0)
    assert cos(*p2) == pytest.approx(1.0)
    assert cos(*p3) == pytest.approx(6 / 7)
    assert cos(*p4) == pytest.approx(5 / math.sqrt(30))
    assert abs(cos(*p5)) < 0.5
    assert cos(*p7) == pytest.approx(5 / math.sqrt(42))
    assert cos(*p8) == pytest.approx(3 / 4)
    assert cos(p7[1], p4[0]) == pytest.approx(5 / math.sqrt(35))  # P7's misdirection
    assert cos(p4[1], p7[0]) == pytest.approx(5 / 6)  # below P4's own 0.913


def test_pairs_isolated_and_shared(tmp_path: Path, table: VectorTable) -> None:
    ps = custom(_write_pairs(tmp_path), "jsonl", None)
    assert isinstance(ps, PairSet)
    res = run([ps], table, use_gptcache=False, workroot=tmp_path / "work")["datasets"]["tiny"]
    assert (res["pairs"], res["positives"]) == (8, 4)

    pw = res["modes"]["pairwise"]["policies"]
    assert _counts(pw["cosine>=0.80"]) == (3, 3, 2, 0)  # P1 P4 P6 | P2 P3
    assert _counts(pw["cosine>=0.85"]) == (3, 3, 2, 0)
    assert _counts(pw["cosine>=0.90"]) == (3, 3, 1, 0)  # P3 drops out
    assert _counts(pw["cosine>=0.92"]) == (2, 2, 1, 0)  # P4 drops out
    assert _counts(pw["cosine>=0.95"]) == (2, 2, 1, 0)
    assert _counts(pw["default"]) == (2, 2, 0, 0)  # P2 refused by the word-order guard
    d = pw["cosine>=0.80"]
    assert d["precision"] == pytest.approx(3 / 5)
    assert d["recall"] == pytest.approx(3 / 4)
    assert d["negatives_served"] == pytest.approx(2 / 4)
    assert d["error_rate"] == pytest.approx(2 / 8)
    reasons = res["modes"]["pairwise"]["default_outcomes_by_reason"]
    assert reasons["word_order_differs"] == {"label0": 1, "label1": 0}
    assert reasons["exact"] == {"label0": 0, "label1": 1}
    gpt = res["modes"]["pairwise"]["gptcache_rule_computed"]
    assert gpt["cosine_threshold"] == pytest.approx(0.6)
    assert _counts(gpt) == (4, 4, 3, 0)  # + P7 (0.772) and P8 (0.75)

    sweep = {round(p["threshold"], 2): p for p in res["modes"]["pairwise"]["sweep"]}
    assert _counts(sweep[0.5]) == (4, 4, 3, 0)
    assert _counts(sweep[0.76]) == (4, 4, 2, 0)
    assert _counts(sweep[0.86]) == (3, 3, 1, 0)
    # only the exact hit (P6): float cosines of reordered texts fall a hair short of 1.0
    assert _counts(sweep[1.0]) == (1, 1, 0, 0)

    sh = res["modes"]["shared"]["policies"]
    assert _counts(sh["cosine>=0.80"]) == (4, 3, 2, 1)  # + P8 verbatim; P7 misdirected
    assert _counts(sh["cosine>=0.85"]) == (4, 3, 2, 0)  # P7's 0.845 no longer served
    assert _counts(sh["cosine>=0.90"]) == (4, 3, 1, 0)
    assert _counts(sh["cosine>=0.95"]) == (3, 2, 1, 0)
    assert _counts(sh["default"]) == (3, 2, 0, 0)
    s = sh["cosine>=0.80"]
    assert s["precision"] == pytest.approx(4 / 7)
    assert s["recall"] == pytest.approx(3 / 4)
    assert s["negatives_served"] == pytest.approx(2 / 4)
    assert s["error_rate"] == pytest.approx(3 / 8)
    g = res["modes"]["shared"]["gptcache"]
    assert g["how"].startswith("COMPUTED")
    assert _counts(g) == (4, 3, 2, 1)


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
            # without the earlier turns the identical follow-up is an exact hit, and wrong:
            # verbatim text is no excuse when the answer depends on the conversation
            c = res["no_context"][mode]["policies"][pol]
            assert (c["lookups"], c["served"], c["wrong_negative"]) == (lookups, 2, 2)
    assert len(res["no_context"]["pairwise"]["served_pairs_default"]) == 2


def test_count_and_gptcache_rule() -> None:
    labels = [1, 1, 0, 0, 0]
    c = count(labels, [True, True, True, True, False], [True, False, False, True, False])
    assert (c.right, c.right_positive, c.wrong_negative, c.wrong_positive) == (2, 1, 1, 1)
    assert c.served == 4
    assert c.precision == pytest.approx(2 / 4)
    assert c.recall == pytest.approx(1 / 2)
    assert c.negatives_served == pytest.approx(1 / 3)
    assert c.error_rate == pytest.approx(2 / 5)
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
    # top-1 at cosine >= 0.6, no exact-key step: P8's text_b still finds P6's identical
    # question (distance 0), P7's finds P4's
    assert _counts(g) == (4, 3, 2, 1)
    assert g["served_decisions_agreeing_with_cosine_rule"] == len(PAIRS)
