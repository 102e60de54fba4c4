"""The spend journal on a real disk: segments, recovery after a snapshot, torn lines."""

from __future__ import annotations

from pathlib import Path

from cache_service.backends.journal import SpendJournal
from cache_service.quota.manager import SpendEvent

P = ("project", "default")


def hold(i: int, usd: float = 0.5) -> SpendEvent:
    return SpendEvent("hold", i, (P,), usd, 1.0e9)


def test_recover_reads_only_segments_after_the_snapshot(tmp_path: Path) -> None:
    j = SpendJournal(tmp_path)
    j.start(1)
    j.append(hold(1))
    covered = j.rotate()  # a snapshot taken now covers segment 1
    j.append(hold(2))
    j.append(SpendEvent("settle", 2, (P,), 0.25, 1.0e9))
    j.close()

    events, last = SpendJournal(tmp_path).recover(after=covered)
    assert [(e.op, e.id) for e in events] == [("hold", 2), ("settle", 2)]
    assert events[1].scopes == (P,) and events[1].usd == 0.25
    assert last == 2
    everything, _ = SpendJournal(tmp_path).recover(after=0)
    assert len(everything) == 3


def test_torn_last_line_is_skipped(tmp_path: Path) -> None:
    j = SpendJournal(tmp_path)
    j.start(1)
    j.append(hold(1))
    j.close()
    segment = next(tmp_path.glob("spend-journal.*"))
    with open(segment, "ab") as f:
        f.write(b'{"op":"hold","id":2,"sco')  # power lost mid-line
    events, _ = SpendJournal(tmp_path).recover(after=0)
    assert [e.id for e in events] == [1]


def test_start_drops_covered_segments(tmp_path: Path) -> None:
    j = SpendJournal(tmp_path)
    j.start(1)
    j.append(hold(1))
    j.rotate()
    j.append(hold(2))
    j.close()
    j = SpendJournal(tmp_path)
    j.start(3)  # segments 1 and 2 are in a snapshot now
    j.append(hold(3))
    j.close()
    events, last = SpendJournal(tmp_path).recover(after=0)
    assert [e.id for e in events] == [3]
    assert last == 3


def test_names_from_headers_round_trip(tmp_path: Path) -> None:
    odd = ("project", 'quote " backslash \\ newline \n ünïcode')
    j = SpendJournal(tmp_path)
    j.start(1)
    j.append(SpendEvent("settle", 7, (odd, P), 1e-05, 1.7e9))
    j.close()
    (event,), _ = SpendJournal(tmp_path).recover(after=0)
    assert event == SpendEvent("settle", 7, (odd, P), 1e-05, 1.7e9)


def test_tokens_round_trip_and_older_lines_read_as_none(tmp_path: Path) -> None:
    j = SpendJournal(tmp_path)
    j.start(1)
    j.append(SpendEvent("settle", 3, (P,), 0.0, 1.7e9, tokens=1234))
    j.close()
    segment = next(tmp_path.glob("spend-journal.*"))
    with open(segment, "ab") as f:  # as written before per-day token limits
        f.write(b'{"op":"settle","id":4,"scopes":[["project","default"]],"usd":0.5,"t":1.7e9}\n')
    events, _ = SpendJournal(tmp_path).recover(after=0)
    assert events == [
        SpendEvent("settle", 3, (P,), 0.0, 1.7e9, tokens=1234),
        SpendEvent("settle", 4, (P,), 0.5, 1.7e9),
    ]
