"""IdTable against a dict that does the same: ids in spaces, rows, columns, reuse, rehashes."""

from __future__ import annotations

import uuid

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cache_service.id_table import IdTable

Model = dict[tuple[int, str], int]


def _check(table: IdTable, model: Model) -> None:
    assert len(table) == len(model)
    assert sorted(table.live().tolist()) == sorted(model.values())
    for (space, key), row in model.items():
        assert table.row(key, space) == row
        assert table.key(row) == key
    for space in {space for space, _ in model} | {0, 1}:
        keys = [key for sp, key in model if sp == space]
        assert table.rows(keys, space).tolist() == [model[space, k] for k in keys]
        assert sorted(table.in_space(space).tolist()) == sorted(model[space, k] for k in keys)
    assert table.keys(list(model.values())) == [key for _, key in model]


# Entry ids are kept packed (32 lowercase hex digits as 16 bytes): some such ids, among them
# ones ending in NUL bytes, beside ids that look like them or share their bytes.
_LIKE_ENTRY_IDS = [
    "00" * 16,
    "ab" + "00" * 15,
    "6162636465666768696a6b6c6d6e6f70",  # the bytes of the next one
    "abcdefghijklmnop",
    "AB" * 16,  # upper case: kept as text
    "0" * 31,
    "0" * 33,
]
_keys = st.one_of(
    st.text(min_size=1, max_size=6).filter(lambda k: not k.endswith("\x00")),
    st.sampled_from(_LIKE_ENTRY_IDS),
)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.tuples(st.booleans(), st.integers(0, 2), st.lists(_keys, max_size=12)), max_size=25)
)
def test_it_matches_a_dict_through_adds_and_removes(
    steps: list[tuple[bool, int, list[str]]],
) -> None:
    table = IdTable()
    model: Model = {}
    for adding, space, keys in steps:
        if adding:
            new = list(dict.fromkeys(k for k in keys if (space, k) not in model))
            rows = table.add(new, space).tolist()
            assert len(set(rows) | set(model.values())) == len(rows) + len(model)
            model.update({(space, k): row for k, row in zip(new, rows, strict=True)})
        else:
            gone = [k for k in dict.fromkeys(keys) if (space, k) in model]
            table.remove([model.pop((space, k)) for k in gone])
        _check(table, model)
    assert (table.rows(["never-added", "nor-this"], 0) == -1).all()
    assert table.row("never-added", 0) == -1


def test_one_id_in_two_spaces_is_two_rows() -> None:
    table = IdTable()
    a, b = table.add(["e1"], 0)[0], table.add(["e1"], 7)[0]
    assert a != b and table.row("e1", 0) == a and table.row("e1", 7) == b
    assert table.row("e1", 3) == -1
    table.remove([a])
    assert table.row("e1", 0) == -1 and table.row("e1", 7) == b


def test_file_finds_known_keys_files_the_rest_and_says_which() -> None:
    table = IdTable()
    known = table.add(["a"], 0)[0]
    rows, filed = table.file(["b", "a", "c", "b"], 0)
    assert filed.tolist() == [True, False, True, False]  # a repeat shares the first's row
    assert rows[1] == known and rows[3] == rows[0] and len(set(rows.tolist())) == 3
    assert table.rows(["a", "b", "c"], 0).tolist() == [rows[1], rows[0], rows[2]]
    assert table.file(["a", "b"], 0)[1].tolist() == [False, False]
    with pytest.raises(ValueError):
        table.file(["ok", ""], 0)
    assert len(table) == 3  # nothing filed by the refused call


def test_freed_rows_are_handed_out_again_lowest_first() -> None:
    table = IdTable()
    rows = table.add([f"e{i}" for i in range(10)], 0)
    assert rows.tolist() == list(range(10))
    table.remove([7, 2, 5])
    assert table.add(["x", "y"], 0).tolist() == [2, 5]
    assert table.add(["z", "w"], 0).tolist() == [7, 10]


def test_many_uuid_ids_round_trip_through_bulk_calls() -> None:
    ids = [uuid.uuid4().hex for _ in range(200_000)]
    table = IdTable()
    rows = np.concatenate([table.add(ids[:150_000], 1), table.add(ids[150_000:], 1)])
    assert (table.rows(ids, 1) == rows).all()
    assert (table.rows(ids, 2) == -1).all()
    table.remove(rows[::2])
    expect = rows.copy()
    expect[::2] = -1
    assert (table.rows(ids, 1) == expect).all()
    assert table.keys(rows[1::2][:5]) == ids[1::2][:5]


def test_repeated_or_known_keys_are_refused_without_taking_rows() -> None:
    table = IdTable()
    table.add(["a"], 0)
    for bad in (["b", "b"], ["a"], [""], ["nul\x00"]):
        with pytest.raises(ValueError):
            table.add(bad, 0)
    with pytest.raises(ValueError):
        table.add(["c"], -1)
    assert len(table) == 1 and table.add(["b"], 0).tolist() == [1]
    assert table.rows(["", "a\x00", "a"], 0).tolist() == [-1, -1, 0]  # looked up, not refused


def test_columns_follow_rows_and_reset_when_freed() -> None:
    table = IdTable({"expires": (np.float64, np.nan)})
    rows = table.add(["a", "b", "c"], 4)
    table.column("expires")[rows] = [1.0, 2.0, 3.0]
    table.remove([rows[1]])
    assert table.column("space").tolist() == [4, -1, 4]
    assert np.isnan(table.column("expires")[1])
    assert table.column("expires")[2] == 3.0


def test_non_ascii_and_longer_ids_widen_the_table() -> None:
    table = IdTable()
    table.add(["ab"], 0)
    table.add(["é" * 40, "z"], 0)
    assert table.key(table.row("é" * 40, 0)) == "é" * 40
    assert table.rows(["ab", "z", "é" * 40, "é"], 0).tolist() == [0, 2, 1, -1]


def test_entry_ids_are_kept_in_16_bytes_and_read_back_whole() -> None:
    ids = [uuid.uuid4().hex for _ in range(1000)] + ["00" * 16, "ab" + "00" * 15]
    table = IdTable()
    rows = table.add(ids, 3)
    assert table._ids.dtype.itemsize == 16  # half the text
    assert table.keys(rows) == ids
    assert [table.key(r) for r in rows[-2:].tolist()] == ids[-2:]
    assert table.rows(ids, 3).tolist() == rows.tolist()
    assert table.row("00" * 16, 3) == rows[-2] and table.row("ab" + "00" * 15, 3) == rows[-1]
    # Another id of the same bytes, and upper-case hex, are other ids, filed as text.
    alias, upper = "abcdefghijklmnop", ids[0].upper()
    assert table.row(alias, 3) == -1 and table.row(upper, 3) == -1
    more = table.add([alias, upper, "6162636465666768696a6b6c6d6e6f70"], 3)
    assert table.keys(np.concatenate([more, rows[:2]])) == [
        alias,
        upper,
        "6162636465666768696a6b6c6d6e6f70",
        *ids[:2],
    ]
    assert table.rows([alias, "6162636465666768696a6b6c6d6e6f70"], 3).tolist() == [
        more[0],
        more[2],
    ]
    table.remove(more[:1])
    assert table.row(alias, 3) == -1 and table.row("6162636465666768696a6b6c6d6e6f70", 3) == more[2]
