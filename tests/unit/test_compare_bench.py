"""benchmarks/compare.py's pure parts: the stable JSON shape other tools read, the markdown
table with nulls, and GPTCache's threshold set to the sidecar's cosine. (The run itself needs
GPTCache, installed by the `bench` extra, not in CI: `make bench-compare`.)"""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from benchmarks import compare
from benchmarks import gptcache_server as G
from benchmarks.quality.run import gptcache_equivalent_cosine

FLOORS: dict[str, float | None] = {
    "http_p50_ms": 1.9,
    "encode_p50_ms": 15.9,
    "encode_batch32_per_s": 131.0,
}


def side(**values: Any) -> dict[str, Any]:
    return {k: values.get(k, 1.5) for k in compare.SIDE_KEYS}


def one_size_report() -> dict[str, Any]:
    measured = {1000: {"sidecar": side(ready_s=20.5), "gptcache": side(exact_p50_ms=None)}}
    why = {1000: {}, 1_000_000: {"gptcache": "not run: size over --gptcache-max 100000"}}
    detail = {"loads": {"1000": {"sidecar": {"ready_s": 6.6}}}, "note": "dev run"}
    return compare.build_report(FLOORS, {"start": [1.0, 1.0, 1.0]}, measured, why, detail)


def test_every_size_and_side_has_every_key_null_where_not_measured() -> None:
    report = one_size_report()
    assert compare.shape_problems(report) == []
    assert list(report["sizes"]) == ["1000", "10000", "100000", "1000000"]
    assert report["sizes"]["1000"]["sidecar"]["ready_s"] == 20.5
    assert report["sizes"]["1000"]["gptcache"]["exact_p50_ms"] is None
    assert set(report["sizes"]["100000"]["gptcache"]) == set(compare.SIDE_KEYS)
    assert all(v is None for v in report["sizes"]["100000"]["sidecar"].values())
    assert report["floors"] == FLOORS
    # Every null side says why; a reason given for a size outside --sizes is kept.
    assert report["why_null"]["10000"]["sidecar"] == "not run (not in --sizes)"
    assert report["why_null"]["1000000"]["gptcache"].startswith("not run: size over")
    assert "1000" not in report["why_null"]
    json.dumps(report, allow_nan=False)


@pytest.mark.parametrize(
    "damage",
    [
        lambda r: r["floors"].pop("encode_p50_ms"),
        lambda r: r.pop("load_avg"),
        lambda r: r["sizes"].pop("1000000"),
        lambda r: r["sizes"]["1000"].pop("gptcache"),
        lambda r: r["sizes"]["1000"]["sidecar"].pop("search_recall_at_1"),
        lambda r: r["sizes"]["1000"]["sidecar"].update(rss_mb="626 MiB"),
    ],
)
def test_shape_problems_catches_a_broken_shape(damage: Any) -> None:
    report = one_size_report()
    damage(report)
    assert compare.shape_problems(report) != []


def test_markdown_shows_sizes_run_with_loads_and_dashes_for_nulls() -> None:
    md = compare.markdown(one_size_report())
    header = next(line for line in md.splitlines() if line.startswith("| |"))
    assert "1,000 sidecar" in header and "1,000 GPTCache" in header
    assert "100,000" not in header  # sizes not run get no columns
    row = next(line for line in md.splitlines() if line.startswith("| start to ready"))
    assert "20.5 <sub>(6.6)</sub>" in row
    exact = next(line for line in md.splitlines() if line.startswith("| exact hit p50"))
    assert exact.rstrip().endswith("| – |")
    # A size outside --sizes is not listed as "not measured"; a real reason is.
    assert "not in --sizes" not in md
    assert "1,000,000 gptcache: not run: size over" in md


def test_gptcache_threshold_is_the_sidecars_cosine() -> None:
    assert G.SIDECAR_THRESHOLD == 0.92
    cosine = gptcache_equivalent_cosine(G.GPTCACHE_THRESHOLD, G.MAX_DISTANCE)
    assert cosine == pytest.approx(G.SIDECAR_THRESHOLD)


def test_gptcache_keeps_every_entry_of_a_run(tmp_path: Any) -> None:
    # GPTCache's LRU evicts past its max size (default 1000), which manager_factory takes
    # from eviction_params, not from its own max_size: both far above the entries.
    for n in compare.SIZES:
        kwargs = G.factory_kwargs(tmp_path, G.max_size_for(n))
        assert kwargs["max_size"] > 2 * n
        assert kwargs["eviction_params"]["max_size"] > 2 * n


def test_each_size_is_judged_against_its_own_floors() -> None:
    rounds = [
        {
            part: {"p50_ms": v, "load": 1.0}
            for part, v in (
                ("http", h),
                ("encode", 6.0),
                ("encode_miss", 11.0),
                ("http_encode", h + 6.5),
            )
        }
        for h in (1.5, 2.5, 2.0)
    ]
    floors = compare.size_floors(rounds, {"per_s": 200.0, "load": 0.5})
    assert floors["http_p50_ms"] == 2.0  # the median of the rounds, not the first
    assert floors["http_encode_p50_ms"] == 8.5
    assert floors["encode_batch32_per_s"] == 200.0
    assert floors["loads"]["encode_batch32_per_s"] == 0.5

    measured = {
        1000: {
            "sidecar": side(
                exact_p50_ms=2.4,
                semantic_p50_ms=10.4,
                semantic_hits_per_s_32=170.0,
                miss_added_p50_ms=14.5,
            ),
            "gptcache": side(semantic_hits_per_s_32=34.0),
        }
    }
    report = compare.build_report(
        FLOORS, {}, measured, {}, {"per_size": {"1000": {"floors": floors}}}
    )
    got = compare.ratios(report)["1000"]
    assert got["exact_vs_http"] == 1.2  # 2.4 / 2.0 (this size's floor), not 2.4 / 1.9
    assert got["semantic_vs_floor"] == 1.3  # 10.4 / (2.0 + 6.0)
    assert got["hits32_vs_batch32"] == 0.85
    assert got["hits32_vs_gptcache"] == 5.0
    assert got["miss_over_encode_ms"] == 3.5  # 14.5 - 11.0
    assert got["semantic_vs_10k"] is None  # 10k not run
    assert got["semantic_vs_one_trip"] == 1.22  # 10.4 / 8.5: informative, not a target
    # A size not run has no figures, hence no ratios.
    assert all(v is None for v in compare.ratios(report)["100000"].values())
    md = compare.markdown(report)
    row = next(line for line in md.splitlines() if line.startswith("| a miss adds"))
    assert "**3.5**" in row  # missed (bound 2 ms): bold
    row = next(line for line in md.splitlines() if line.startswith("| exact p50"))
    assert "| 1.2 |" in row  # met: plain
    row = next(line for line in md.splitlines() if "in one trip), not a target" in line)
    assert "| 1.22 |" in row and "**" not in row


def test_floors_of_rounds_without_the_one_trip_floor_leave_it_null() -> None:
    """Reports written before the one-trip floor still render."""
    rounds = [{p: {"p50_ms": 1.0, "load": 1.0} for p in ("http", "encode", "encode_miss")}]
    floors = compare.size_floors(rounds, {"per_s": 200.0, "load": 0.5})
    assert floors["http_encode_p50_ms"] is None and floors["http_p50_ms"] == 1.0


def test_the_miss_floor_encodes_prompts_as_long_as_both_sides_misses() -> None:
    """The floor under the latency a miss adds is one encode of a miss prompt: the prompts
    it times must be as long, in word pieces, as those each side is sent. When each side's
    name went into its prompts, the sidecar's ran 4 pieces longer than the floor's (~1 ms of
    encode counted against it)."""
    from cache_service.backends.embedder import load_token_counter

    count = load_token_counter()

    def mean_pieces(texts: list[str]) -> float:
        return sum(count(t) for t in texts) / len(texts)

    floor = mean_pieces(compare.Floors(None, "http://unused", 1).miss_texts)
    for name in ("sidecar", "gptcache"):
        for r in range(3):
            sent = compare.round_misses(64, r, random.Random(f"{name}-r{r}"))
            assert abs(mean_pieces(sent) - floor) < 0.5, (name, r)
