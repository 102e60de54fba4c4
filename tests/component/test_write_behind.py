"""Entries stored after their answer: journalled first, visible while pending, stored in
order, replayed after a crash, and never lost to a torn record or a failing store."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cache_service.backends.entry_journal import EntryJournal, encode
from cache_service.backends.records import to_record
from cache_service.backends.store import DiskCacheStore
from cache_service.cache.write_behind import WriteBehind, journal_dir, replay
from cache_service.protocols import Entry
from cache_service.settings import Settings
from tests.conftest import Harness, harness, journalled
from tests.fakes import FakeClock, HashingEmbedder


def entry(n: int, key: str | None = None, expires: float | None = None) -> Entry:
    vector = np.full(4, 0.5, dtype=np.float32)
    body = f'{{"n": {n}}}'
    return Entry(f"e{n}", "s", key or f"k{n}", "ns", "m", f"q {n}", vector, body, 0.0, expires)


def test_records_come_back_in_order_up_to_a_torn_one(tmp_path: Path) -> None:
    journal = EntryJournal(tmp_path)
    for n in range(3):
        journal.append(encode(to_record(entry(n))))
    (segment,) = journal.swap(journal.create())
    whole = segment.read_bytes()
    assert [r["id"] for r in EntryJournal.read(segment)] == ["e0", "e1", "e2"]
    segment.write_bytes(whole[:-5])  # a crash part way through the last write
    assert [r["id"] for r in EntryJournal.read(segment)] == ["e0", "e1"]
    flipped = bytearray(whole)
    flipped[len(encode(to_record(entry(0)))) + 20] ^= 0xFF  # a bad byte in the second
    segment.write_bytes(bytes(flipped))
    assert [r["id"] for r in EntryJournal.read(segment)] == ["e0"]


def test_a_new_journal_numbers_its_segments_after_those_left(tmp_path: Path) -> None:
    first = EntryJournal(tmp_path)
    first.append(encode(to_record(entry(0))))
    first.close()
    (left,) = first.segments()
    second = EntryJournal(tmp_path)
    second.append(encode(to_record(entry(1))))
    second.close()
    assert second.segments()[0] == left and len(second.segments()) == 2  # oldest first


def test_a_segment_closed_empty_is_removed(tmp_path: Path) -> None:
    journal = EntryJournal(tmp_path)
    journal.append(encode(to_record(entry(0))))
    full = journal.swap(journal.create())
    journal.close()
    assert journal.segments() == full  # the spare, never written, is gone


def test_after_a_failed_write_records_go_to_a_new_segment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    journal = EntryJournal(tmp_path)
    journal.append(encode(to_record(entry(0))))
    real_write = os.write

    def full_disk(fd: int, data: bytes) -> int:
        return real_write(fd, data[:10])  # part of the frame, then the disk was full

    monkeypatch.setattr(os, "write", full_disk)
    with pytest.raises(OSError):
        journal.append(encode(to_record(entry(1))))
    monkeypatch.setattr(os, "write", real_write)
    journal.append(encode(to_record(entry(2))))
    closed = journal.swap(journal.create())
    assert len(closed) == 2  # the torn one goes with the next batch's
    assert [r["id"] for p in closed for r in EntryJournal.read(p)] == ["e0", "e2"]


def test_pending_entries_are_found_by_key_and_stored_in_order(tmp_path: Path) -> None:
    stored: list[str] = []
    writer = WriteBehind(lambda e: stored.append(e.id), EntryJournal(tmp_path))
    older, newer = entry(1, key="same"), entry(2, key="same")
    writer.submit(older)
    writer.submit(newer)
    assert writer.pending("same") is newer
    writer.close()
    assert stored == ["e1", "e2"]
    assert writer.pending("same") is None and not writer.busy
    assert EntryJournal(tmp_path).segments() == []  # closed: nothing left to replay


def test_a_newer_entry_under_the_key_stays_pending_until_its_own_store(tmp_path: Path) -> None:
    gate = threading.Event()
    stored: list[str] = []

    def put(e: Entry) -> None:
        if e.id == "e2":
            assert gate.wait(10)
        stored.append(e.id)

    writer = WriteBehind(put, EntryJournal(tmp_path))
    writer.submit(entry(1, key="same"))
    writer.flush()
    second = entry(2, key="same")
    writer.submit(second)
    assert writer.pending("same") is second  # held in its store, still served from here
    gate.set()
    writer.flush()
    assert stored == ["e1", "e2"] and writer.pending("same") is None
    writer.close()


def test_a_failing_store_is_counted_and_the_rest_are_stored(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    stored: list[str] = []

    def put(e: Entry) -> None:
        if e.id == "e1":
            raise OSError("disk full")
        stored.append(e.id)

    writer = WriteBehind(put, EntryJournal(tmp_path))
    for n in range(3):
        writer.submit(entry(n))
    writer.close()
    assert stored == ["e0", "e2"] and writer.failed == 1 and writer.stored == 2
    assert "store failed" in caplog.text


def test_a_segment_that_cannot_be_created_stops_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stored: list[str] = []
    journal = EntryJournal(tmp_path)
    writer = WriteBehind(lambda e: stored.append(e.id), journal)
    writer._start = lambda: None  # type: ignore[method-assign]  # flushed by hand
    writer.submit(entry(1))
    create = journal.create

    def full_disk() -> Any:
        raise OSError("no space left")

    monkeypatch.setattr(journal, "create", full_disk)
    writer.flush()
    assert stored == ["e1"] and journal.segments() == []  # stored, its segment gone
    monkeypatch.setattr(journal, "create", create)
    writer.submit(entry(2))  # the next record makes its own segment
    assert journalled(tmp_path) == ["q 2"]
    writer.close()
    assert stored == ["e1", "e2"]


def test_replay_stores_what_a_crash_left_newest_last(tmp_path: Path) -> None:
    crashed = WriteBehind(lambda e: None, EntryJournal(tmp_path))
    crashed._start = lambda: None  # type: ignore[method-assign]  # its writer never ran
    crashed.submit(entry(1, key="same"))
    crashed.submit(entry(2, key="same"))
    crashed.submit(entry(3, expires=50.0))  # expired by the restart: not stored
    store = DiskCacheStore(tmp_path / "store")
    try:
        assert replay(EntryJournal(tmp_path), store.put, now=100.0) == 2
        got = store.get_by_exact_key("same")
        assert got is not None and got.id == "e2"
        assert len(store) == 1
        assert EntryJournal(tmp_path).segments() == []
    finally:
        store.close()


def test_a_replay_the_store_refuses_is_kept_for_the_next_start(tmp_path: Path) -> None:
    journal = EntryJournal(tmp_path)
    journal.append(encode(to_record(entry(1))))
    journal.close()

    def refuse(e: Entry) -> None:
        raise OSError("disk full")

    assert replay(EntryJournal(tmp_path), refuse, now=0.0) == 0
    stored: list[Any] = []
    assert replay(EntryJournal(tmp_path), stored.append, now=0.0) == 1
    assert [e.id for e in stored] == ["e1"]


# --- through the app: nothing behaves as if a pending entry were not there


@pytest.fixture
async def held(settings_factory: Any, embedder: HashingEmbedder, clock: FakeClock) -> Any:
    """A sidecar whose writer never runs on its own: every entry stays pending until
    something flushes it."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(WriteBehind, "_start", lambda self: None)
        settings: Settings = settings_factory()
        async with harness(settings, embedder, clock) as h:
            yield h


async def test_a_paraphrase_right_behind_its_miss_finds_the_pending_entry(held: Harness) -> None:
    assert (await held.chat("How do I reset my password?")).headers["x-cache"] == "MISS"
    assert len(held.state["front"].cache.index) == 0  # pending
    again = await held.chat("how do I reset my password")
    assert again.headers["x-cache-match"] == "semantic"  # stored by the search's flush


async def test_the_cache_api_sees_pending_entries(held: Harness) -> None:
    front = held.state["front"]
    assert (await held.chat("How do I reset my password?")).headers["x-cache"] == "MISS"
    stats = (await held.client.get("/v1/cache/stats")).json()
    assert stats["cache"]["vectors"] == 1  # stored before the figures were read
    assert stats["cache"]["stored_after_answer"] == 1
    assert stats["cache"]["store_failures_after_answer"] == 0
    (stored,) = list(front.cache.store.iter_entries())
    # invalidated while pending: removed, and never brought back by a later store
    assert (await held.chat("How do I change my email?")).headers["x-cache"] == "MISS"
    gone = await held.client.delete("/v1/cache", params={"model": stored.model})
    assert gone.status_code == 200 and gone.json()["deleted"] == 2, gone.text
    await front.settle()
    assert len(front.cache.store) == 0
    assert journalled(journal_dir(held.state["settings"].data_dir)) == []
    assert (await held.chat("How do I reset my password?")).headers["x-cache"] == "MISS"
    # an entry stored through the API is pending too, and can be invalidated at once
    made = await held.client.post(
        "/v1/cache/store", json={"model": "m", "prompt": "p", "response": 1}
    )
    assert made.status_code == 201, made.text
    deleted = await held.client.delete(f"/v1/cache/entries/{made.json()['entry_id']}")
    assert deleted.status_code == 200, deleted.text
