"""The index snapshot: saved, loaded, reconciled with the store; refused when damaged."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cache_service import app as app_module
from cache_service.app import create_app
from cache_service.backends import faiss_index, fast_scan, ivf_build, snapshots
from cache_service.backends.faiss_index import FaissIndex
from cache_service.backends.index_snapshot import MANIFEST, Saved, SnapshotError, load_state
from cache_service.backends.snapshot_files import crc_of
from cache_service.backends.snapshots import IndexSnapshots
from cache_service.backends.store import DiskCacheStore
from cache_service.backends.upstream import HttpUpstream
from cache_service.cache.guards import AcceptConfig
from cache_service.cache.index_upkeep import rebuild_index, snapshot_forever
from cache_service.cache.semantic import SemanticCache
from cache_service.protocols import Entry, Vector
from cache_service.settings import ConfigError, Settings
from tests.conftest import harness
from tests.fakes import FakeClock, HashingEmbedder

DIM = HashingEmbedder.dim
SCOPES = ("scope-a", "scope-b")


def unit(rng: np.random.Generator) -> Vector:
    v = rng.standard_normal(DIM).astype(np.float32)
    return (v / np.linalg.norm(v)).astype(np.float32)


class World:
    """One store directory, and caches opened over it as restarts would."""

    def __init__(self, root: Path, clock: FakeClock) -> None:
        self.root = root
        self.clock = clock
        self.snap_dir = root / "index-snapshot"
        self.rng = np.random.default_rng(7)
        self.stores: list[DiskCacheStore] = []
        self.n = 0

    def open(self, ivf_min: int | None = None) -> tuple[SemanticCache, FaissIndex, IndexSnapshots]:
        store = DiskCacheStore(self.root / "entries")
        self.stores.append(store)
        index = FaissIndex(DIM, ivf_min=ivf_min, background=False)
        cache = SemanticCache(store, index, self.clock, AcceptConfig(threshold=0.5, guards=False))
        return cache, index, IndexSnapshots(self.snap_dir, cache, index, store, dim=DIM)

    def fill(
        self,
        cache: SemanticCache,
        n: int,
        *,
        ttl_s: float = 3600,
        embed: bool = True,
        scopes: tuple[str, ...] = SCOPES,
    ) -> list[Entry]:
        out = []
        for _ in range(n):
            self.n += 1
            entry = cache.new_entry(
                scope=scopes[self.n % len(scopes)],
                exact_key=f"k{self.n}",
                namespace="ns",
                model="m",
                prompt=f"prompt {self.n}",
                embedding=unit(self.rng) if embed else None,
                response={"n": self.n},
                ttl_s=ttl_s,
            )
            cache.put(entry)
            out.append(entry)
        return out

    def close(self) -> None:
        for store in self.stores:
            store.close()


@pytest.fixture
def world(tmp_path: Path, clock: FakeClock) -> Iterator[World]:
    w = World(tmp_path, clock)
    yield w
    w.close()


def forbid_builds(monkeypatch: pytest.MonkeyPatch) -> None:
    """From here on, training an IVF fails the test: a restore must install them whole."""

    def no_build(*_: Any, **__: Any) -> Any:
        raise AssertionError("an IVF scope was trained again at restore")

    monkeypatch.setattr(faiss_index, "build_ivf", no_build)


def answers(cache: SemanticCache, entries: list[Entry]) -> list[tuple[str | None, float | None]]:
    """What a search with each entry's own vector (in its own scope) serves."""
    out = []
    for e in entries:
        assert e.embedding is not None
        hit = cache.search(e.scope, e.embedding, e.prompt)
        out.append((None if hit.entry is None else hit.entry.id, hit.similarity))
    return out


def raw_hits(index: FaissIndex, probes: list[Entry]) -> list[list[tuple[str, float]]]:
    out = []
    for e in probes:
        assert e.embedding is not None
        out.append(
            [(h.entry_id, round(h.similarity, 5)) for h in index.search(e.scope, e.embedding, 5)]
        )
    return out


def test_save_then_restore_gives_the_same_search_results(world: World) -> None:
    cache, index, snaps = world.open()
    entries = world.fill(cache, 60)
    bare = world.fill(cache, 3, embed=False)
    cache.ready = True
    saved = snaps.save()
    assert saved is not None and (saved.entries, saved.vectors) == (63, 60)
    assert snaps.save() is None  # nothing changed since

    again, index2, snaps2 = world.open()
    restored = snaps2.restore()
    assert restored is not None
    assert (restored.from_snapshot, restored.read_from_store, restored.gone) == (63, 0, 0)
    assert again.ready
    assert again.tracked() == cache.tracked()
    assert len(index2) == len(index) == 60
    assert answers(again, entries) == answers(cache, entries)
    assert raw_hits(index2, entries) == raw_hits(index, entries)
    assert {e.id for e in bare} <= again.tracked().keys()
    assert not snaps2.changed()  # restored exactly: the shutdown save has nothing to do


def test_vectors_are_saved_as_float16_and_an_earlier_builds_float32_ones_still_restore(
    world: World,
) -> None:
    cache, index, snaps = world.open()
    entries = world.fill(cache, 40)
    cache.ready = True
    assert snaps.save() is not None
    manifest = json.loads((world.snap_dir / MANIFEST).read_text())
    meta = manifest["files"]["vectors"]
    path = world.snap_dir / meta["name"]
    saved = np.load(path)
    # What the flat scopes hold, so nothing is lost: half of float32's bytes.
    assert saved.dtype == np.float16 and saved.shape == (40, DIM)

    # As a build before float16 flat scopes wrote it.
    np.save(path, saved.astype(np.float32))
    meta.update(bytes=path.stat().st_size, crc32=crc_of(path))
    (world.snap_dir / MANIFEST).write_text(json.dumps(manifest))
    _, index2, snaps2 = world.open()
    restored = snaps2.restore()
    assert restored is not None and restored.from_snapshot == 40
    assert raw_hits(index2, entries) == raw_hits(index, entries)


def test_a_restore_gives_the_heap_back_before_the_cache_is_ready(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What a start leaves resident is what it keeps: the restore's temporaries are returned
    # to the OS before readiness (and the RSS a probe of /readyz sees).
    cache, _, snaps = world.open()
    world.fill(cache, 10)
    cache.ready = True
    assert snaps.save() is not None
    again, _, snaps2 = world.open()
    ready_at_trim: list[bool] = []

    def trim() -> bool:
        ready_at_trim.append(again.ready)
        return True

    monkeypatch.setattr(snapshots, "give_back", trim)
    assert snaps2.restore() is not None
    assert ready_at_trim == [False] and again.ready


def test_an_8bit_scope_is_restored_with_its_fast_scan_codes(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ivf_build, "SQ_MIN_TRAIN", 40)  # 8-bit and fast-scan codes at 60
    monkeypatch.setattr(fast_scan, "WORTH_IT_CODES", 0)
    cache, index, snaps = world.open(ivf_min=40)
    entries = world.fill(cache, 120)
    cache.ready = True
    assert index.maintain() == 2
    assert all(s.fast is not None for s in index._scopes.values())
    assert snaps.save() is not None
    manifest = json.loads((world.snap_dir / "manifest.json").read_text())
    assert all(i["fast"] is not None for i in manifest["ivf"])

    forbid_builds(monkeypatch)
    again, index2, snaps2 = world.open(ivf_min=40)
    assert snaps2.restore() is not None
    for name, s in index2._scopes.items():
        assert s.fast is not None and s.fast.ntotal == index._scopes[name].fast.ntotal
    assert answers(again, entries) == answers(cache, entries)
    assert index2.maintain() == 0


def test_a_snapshot_saved_before_floors_were_kept_counts_as_measured_down_to_0_7(
    world: World,
) -> None:
    cache, index, snaps = world.open(ivf_min=40)
    world.fill(cache, 120)
    cache.ready = True
    assert index.maintain() == 2
    assert snaps.save() is not None
    path = world.snap_dir / "manifest.json"
    manifest = json.loads(path.read_text())
    assert [i["floor"] for i in manifest["ivf"]] == [index.recall_floor] * 2
    for saved in manifest["ivf"]:
        del saved["floor"]
    path.write_text(json.dumps(manifest))
    _, index2, snaps2 = world.open(ivf_min=40)
    assert snaps2.restore() is not None
    assert {s.floor for s in index2._scopes.values()} == {ivf_build.RECALL_FLOOR}
    assert index2.maintain() == 0  # what an index serving from 0.7 up needs


def test_an_ivf_scope_is_restored_whole_without_a_build(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache, index, snaps = world.open(ivf_min=40)
    entries = world.fill(cache, 120)  # 60 a scope
    cache.ready = True
    assert snaps.save() is not None  # of flat scopes
    assert index.maintain() == 2
    built = index.stats()
    assert {st.kind for st in built.values()} == {"ivf"}
    # No entry changed, but the scopes did: that snapshot would restore them flat.
    assert snaps.changed()
    assert snaps.save() is not None
    assert not snaps.changed()
    added = world.fill(cache, 4)
    deleted = entries[:6]
    for e in deleted:
        cache.delete(e.id)
    survivors = entries[6:] + added

    forbid_builds(monkeypatch)
    again, index2, snaps2 = world.open(ivf_min=40)
    restored = snaps2.restore()
    assert restored is not None
    assert (restored.from_snapshot, restored.read_from_store, restored.gone) == (114, 4, 6)
    stats = index2.stats()
    for scope, st in built.items():
        assert stats[scope].kind == "ivf"
        assert (stats[scope].nlist, stats[scope].nprobe) == (st.nlist, st.nprobe)
        assert stats[scope].recall_at_1 == st.recall_at_1
    assert len(index2) == len(survivors)
    assert again.tracked() == cache.tracked()
    assert answers(again, survivors) == answers(cache, survivors)
    for e in deleted:
        assert e.embedding is not None
        assert all(h.entry_id != e.id for h in index2.search(e.scope, e.embedding, 5))
    # Later writes get labels of their own: the restored ones stay found.
    more = world.fill(again, 4)
    got = answers(again, more + survivors[:10])
    assert [entry_id for entry_id, _ in got] == [e.id for e in more + survivors[:10]]
    assert [similarity for _, similarity in got] == pytest.approx([1.0] * len(got))


def test_ivf_and_flat_scopes_restore_side_by_side_the_ivf_without_a_build(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Labels are rows of one table for every scope: the flat scope, restored first, takes
    # rows with the numbers the IVF lists were saved with, so those are relabelled.
    cache, index, snaps = world.open(ivf_min=40)
    promoted = world.fill(cache, 120)
    assert index.maintain() == 2
    flat = world.fill(cache, 10, scopes=("scope-c",))
    cache.ready = True
    assert snaps.save() is not None

    forbid_builds(monkeypatch)
    again, index2, snaps2 = world.open(ivf_min=40)
    restored = snaps2.restore()
    assert restored is not None
    assert (restored.from_snapshot, restored.read_from_store, restored.gone) == (130, 0, 0)
    kinds = {scope: st.kind for scope, st in index2.stats().items()}
    assert kinds == {"scope-a": "ivf", "scope-b": "ivf", "scope-c": "flat"}
    assert again.tracked() == cache.tracked()
    assert answers(again, promoted + flat) == answers(cache, promoted + flat)


def test_an_ivf_scope_the_index_refuses_is_read_from_the_store(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache, index, snaps = world.open(ivf_min=40)
    entries = world.fill(cache, 120)
    assert index.maintain() == 2
    cache.ready = True
    assert snaps.save() is not None
    again, index2, snaps2 = world.open(ivf_min=40)
    keep = index2.import_ivf

    def refuse_b(scope: str, saved: Any) -> None:
        if scope == "scope-b":  # as for a blob that is not what it says
            raise ValueError("rows already used or repeated")
        keep(scope, saved)

    monkeypatch.setattr(index2, "import_ivf", refuse_b)
    restored = snaps2.restore()
    assert restored is not None
    assert (restored.from_snapshot, restored.read_from_store) == (60, 60)
    assert again.tracked() == cache.tracked()
    assert answers(again, entries) == answers(cache, entries)


def test_entries_added_and_deleted_after_the_snapshot_are_reconciled(world: World) -> None:
    cache, _, snaps = world.open()
    entries = world.fill(cache, 40)
    cache.ready = True
    assert snaps.save() is not None
    added = world.fill(cache, 5)
    deleted = entries[:4]
    for e in deleted:
        cache.delete(e.id)

    again, index2, snaps2 = world.open()
    restored = snaps2.restore()
    assert restored is not None
    assert (restored.from_snapshot, restored.read_from_store, restored.gone) == (36, 5, 4)
    assert again.tracked() == cache.tracked()
    assert len(index2) == 41
    assert answers(again, added + entries[4:]) == answers(cache, added + entries[4:])
    for e in deleted:
        assert e.embedding is not None
        assert all(h.entry_id != e.id for h in index2.search(e.scope, e.embedding, 5))
    assert snaps2.changed()  # the next save records the reconciled state
    assert snaps2.save() is not None
    third, _, snaps3 = world.open()
    r3 = snaps3.restore()
    assert r3 is not None and (r3.from_snapshot, r3.read_from_store, r3.gone) == (41, 0, 0)
    assert third.tracked() == cache.tracked()


def test_expired_entries_in_the_snapshot_are_dropped(world: World, clock: FakeClock) -> None:
    cache, _, snaps = world.open()
    short = world.fill(cache, 6, ttl_s=60)
    long = world.fill(cache, 6, ttl_s=3600)
    cache.ready = True
    assert snaps.save() is not None
    clock.advance(120)

    again, index2, snaps2 = world.open()
    restored = snaps2.restore()
    assert restored is not None
    assert (restored.from_snapshot, restored.expired) == (6, 6)
    assert again.tracked().keys() == {e.id for e in long}
    assert len(index2) == 6
    for e in short:
        assert e.id not in again.store  # deleted from the store, as a rebuild does
        assert e.embedding is not None
        assert again.search(e.scope, e.embedding, e.prompt).entry is None


def _damage_vectors(snap_dir: Path) -> None:
    manifest = json.loads((snap_dir / MANIFEST).read_text())
    path = snap_dir / manifest["files"]["vectors"]["name"]
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate_vectors(snap_dir: Path) -> None:
    manifest = json.loads((snap_dir / MANIFEST).read_text())
    path = snap_dir / manifest["files"]["vectors"]["name"]
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 2)


def _other_dim(snap_dir: Path) -> None:
    manifest = json.loads((snap_dir / MANIFEST).read_text())
    manifest["dim"] = DIM * 2
    (snap_dir / MANIFEST).write_text(json.dumps(manifest))


def _garbage_manifest(snap_dir: Path) -> None:
    (snap_dir / MANIFEST).write_bytes(b"\x00{not json")


def _other_format(snap_dir: Path) -> None:
    manifest = json.loads((snap_dir / MANIFEST).read_text())
    manifest["format"] = 99
    (snap_dir / MANIFEST).write_text(json.dumps(manifest))


def _missing_file(snap_dir: Path) -> None:
    manifest = json.loads((snap_dir / MANIFEST).read_text())
    (snap_dir / manifest["files"]["ids"]["name"]).unlink()


def _arrays_disagree(snap_dir: Path) -> None:
    manifest = json.loads((snap_dir / MANIFEST).read_text())
    manifest["count"] += 1
    (snap_dir / MANIFEST).write_text(json.dumps(manifest))


@pytest.mark.parametrize(
    "damage",
    [
        _damage_vectors,
        _truncate_vectors,
        _other_dim,
        _garbage_manifest,
        _other_format,
        _missing_file,
        _arrays_disagree,
    ],
)
async def test_a_damaged_or_mismatched_snapshot_is_ignored_and_the_index_rebuilt(
    world: World, damage: Callable[[Path], None], caplog: pytest.LogCaptureFixture
) -> None:
    cache, _, snaps = world.open()
    entries = world.fill(cache, 30)
    cache.ready = True
    assert snaps.save() is not None
    damage(world.snap_dir)
    with pytest.raises(SnapshotError):
        load_state(world.snap_dir, dim=DIM)

    again, index2, snaps2 = world.open()
    with caplog.at_level(logging.WARNING, logger="cache_service"):
        assert snaps2.restore() is None
    assert "index snapshot ignored" in caplog.text
    assert len(index2) == 0 and not again.tracked()  # nothing touched

    # The app's start path: no crash, a full rebuild, then a fresh snapshot.
    await rebuild_index(again, snaps2)
    assert again.ready
    assert again.tracked() == cache.tracked()
    assert answers(again, entries) == answers(cache, entries)
    load_state(world.snap_dir, dim=DIM)  # rewritten whole


async def test_the_periodic_task_saves_only_when_the_index_changed(world: World) -> None:
    cache, _, snaps = world.open()
    world.fill(cache, 4)
    cache.ready = True
    saves: list[Saved] = []
    real_save = snaps.save

    def counted() -> Saved | None:
        saved = real_save()
        if saved is not None:
            saves.append(saved)
        return saved

    snaps.save = counted  # type: ignore[method-assign]
    task = asyncio.create_task(snapshot_forever(snaps, 0.01))
    try:
        for _ in range(200):
            if saves:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)
        assert len(saves) == 1  # then nothing changed: no more writes
        world.fill(cache, 1)
        for _ in range(200):
            if len(saves) == 2:
                break
            await asyncio.sleep(0.01)
        assert len(saves) == 2
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert load_state(world.snap_dir, dim=DIM).ids.shape == (5,)


def test_no_snapshot_means_restore_returns_none_quietly(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    _, _, snaps = world.open()
    with caplog.at_level(logging.WARNING, logger="cache_service"):
        assert snaps.restore() is None
    assert caplog.text == ""


def test_a_crash_mid_save_leaves_the_previous_snapshot_usable(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache, _, snaps = world.open()
    first = world.fill(cache, 20)
    cache.ready = True
    assert snaps.save() is not None
    later = world.fill(cache, 5)

    # The second save dies after writing its arrays, before the manifest's rename.
    def crash(src: Any, dst: Any) -> None:
        raise OSError("power cut")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="power cut"):
        snaps.save()
    monkeypatch.undo()
    leftovers = {p.name for p in world.snap_dir.iterdir()}
    assert any(name.endswith(".tmp") for name in leftovers)
    (world.snap_dir / "junk.npy.tmp").write_bytes(b"half a file")

    again, _, snaps2 = world.open()
    restored = snaps2.restore()
    assert restored is not None
    assert (restored.from_snapshot, restored.read_from_store) == (20, 5)
    assert again.tracked() == cache.tracked()
    assert answers(again, first + later) == answers(cache, first + later)

    # The next good save commits and clears the crashed one's files.
    assert snaps2.save() is not None
    names = {p.name for p in world.snap_dir.iterdir()}
    assert len(names) == 6 and MANIFEST in names
    assert not any(name.endswith(".tmp") for name in names)


def test_a_save_before_the_index_is_ready_writes_nothing(world: World) -> None:
    cache, _, snaps = world.open()
    world.fill(cache, 3)
    assert snaps.save() is None
    assert not world.snap_dir.exists()


def test_an_empty_cache_round_trips(world: World) -> None:
    cache, _, snaps = world.open()
    cache.ready = True
    cache.changes += 1
    saved = snaps.save()
    assert saved is not None and saved.entries == 0
    again, _, snaps2 = world.open()
    restored = snaps2.restore()
    assert restored is not None and restored.from_snapshot == 0 and again.ready


Q = "How do I reset my password?"
PARAPHRASE = "how do I reset my password"


async def test_the_app_restarts_from_its_snapshot(
    settings_factory: Callable[..., Settings],
    embedder: HashingEmbedder,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = settings_factory(backoff_base_s=0.001)
    async with harness(settings, embedder, clock) as h:
        assert (await h.chat(Q)).headers["x-cache"] == "MISS"
        assert (await h.chat("What is the capital of France?")).headers["x-cache"] == "MISS"
    # Shutdown saved the snapshot (the rebuild at start had saved an empty one).
    manifest = json.loads((settings.data_dir / "index-snapshot" / MANIFEST).read_text())
    assert manifest["count"] == 2 and manifest["vectors"] == 2

    def no_rebuild(self: SemanticCache, **_: Any) -> int:
        raise AssertionError("restarted by a full rebuild, not from the snapshot")

    monkeypatch.setattr(SemanticCache, "rebuild", no_rebuild)
    with caplog.at_level(logging.INFO, logger="cache_service"):
        async with harness(settings, embedder, clock) as h:
            semantic = await h.chat(PARAPHRASE)
            assert semantic.headers["x-cache"] == "HIT"
            assert semantic.headers["x-cache-match"] == "semantic"
            assert await h.upstream_calls() == 0
    assert "index restored from snapshot" in caplog.text


async def test_the_index_is_restored_while_the_model_loads(
    settings_factory: Callable[..., Settings],
    embedder: HashingEmbedder,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """The model load waits for the restore to have started: were they one after the
    other, the lifespan would never get past the load."""
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "manifest.json").write_text(json.dumps({"dimension": DIM}))
    settings = settings_factory(model_dir=model_dir)
    restoring = threading.Event()
    restore = IndexSnapshots.restore

    def recording_restore(self: IndexSnapshots) -> Any:
        restoring.set()
        return restore(self)

    def slow_load(_: Settings) -> HashingEmbedder:
        assert restoring.wait(10), "the model loaded before the index restore began"
        return embedder

    monkeypatch.setattr(IndexSnapshots, "restore", recording_restore)
    monkeypatch.setattr(app_module, "_load_embedder", slow_load)
    app = create_app(settings, upstream=HttpUpstream("http://127.0.0.1:9/v1"), clock=clock)
    async with app.router.lifespan_context(app):
        assert restoring.is_set()


async def test_a_model_whose_vectors_differ_from_its_manifest_stops_the_start(
    settings_factory: Callable[..., Settings],
    embedder: HashingEmbedder,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "manifest.json").write_text(json.dumps({"dimension": DIM + 1}))
    monkeypatch.setattr(app_module, "_load_embedder", lambda _: embedder)
    settings = settings_factory(model_dir=model_dir)
    app = create_app(settings, upstream=HttpUpstream("http://127.0.0.1:9/v1"), clock=clock)
    with pytest.raises(ConfigError, match=f"{DIM}-d vectors; its manifest says {DIM + 1}"):
        async with app.router.lifespan_context(app):
            pass
