"""A snapshot's .npy file written a block at a time, its row count known only at the end."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cache_service.backends.snapshot_files import StreamedArrayFile, crc_of


@pytest.mark.parametrize("rows", [0, 1, 7, 1_000])
def test_a_streamed_file_loads_as_the_rows_written(tmp_path: Path, rows: int) -> None:
    blocks = np.random.default_rng(rows).standard_normal((rows, 6)).astype(np.float32)
    path = tmp_path / "v.npy"
    # Room for ten million rows: the header is rewritten, padded, for far fewer.
    out = StreamedArrayFile(path, "<f2", 6, 10_000_000)
    for start in range(0, rows, 3):
        out.append(blocks[start : start + 3])
    meta = out.close()
    assert meta == {"name": "v.npy", "bytes": path.stat().st_size, "crc32": crc_of(path)}
    for mode in (None, "r"):
        got = np.load(path, mmap_mode=mode)
        assert got.dtype == np.float16 and got.shape == (rows, 6)
        np.testing.assert_array_equal(got, blocks.astype(np.float16))
    assert (path.stat().st_size - 2 * 6 * rows) % 64 == 0  # the header kept numpy's alignment


def test_more_rows_than_promised_or_rows_of_another_width_are_refused(tmp_path: Path) -> None:
    out = StreamedArrayFile(tmp_path / "v.npy", "<f4", 4, 9)
    with pytest.raises(ValueError, match="width 4"):
        out.append(np.zeros((2, 5), np.float32))
    out.append(np.zeros((9, 4), np.float32))
    with pytest.raises(ValueError, match="more than the 9 rows"):
        out.append(np.zeros((1, 4), np.float32))
    out.discard()
