"""The files of an index snapshot: each written whole and fsync'd while its size and CRC-32
are counted, and checked against both when read back; the directory fsync'd after a rename.
"""

from __future__ import annotations

import io
import os
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np

_READ_CHUNK = 16 * 1024 * 1024


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _CrcWriter:
    """A file opened for writing that counts bytes and CRC-32 as they go."""

    def __init__(self, f: IO[bytes]) -> None:
        self.f = f
        self.crc = 0
        self.size = 0

    def write(self, data: bytes | memoryview) -> None:
        self.f.write(data)
        self.crc = zlib.crc32(data, self.crc)
        self.size += len(data)


def write_array_file(
    path: Path, blocks: Sequence[np.ndarray[Any, Any]], dtype: Any, width: int
) -> dict[str, Any]:
    """One .npy file of the rows of `blocks` concatenated (never concatenated in memory),
    fsync'd; returns its name, size and CRC-32. `width` 0: one value a row."""
    out = StreamedArrayFile(path, dtype, width, sum(len(b) for b in blocks))
    try:
        for block in blocks:
            out.append(block)
    except BaseException:
        out.discard()
        raise
    return out.close()


class StreamedArrayFile:
    """One .npy file of rows appended a block at a time, for rows whose number may be known
    only once the last is written: a snapshot's flat vectors, exported scope by scope.
    Gathered before writing, they were the index's vectors over again (1.5 GB of float32 at
    a million entries in flat scopes, on every save). The header is written for at most
    `most` rows; with fewer it is rewritten at `close` for the rows written, padded to its
    length, and the CRC-32 is then read back from the page cache (write_bytes_file does the
    same for FAISS's files), else it is the one counted while writing. `width` 0: one value
    a row."""

    def __init__(self, path: Path, dtype: Any, width: int, most: int) -> None:
        self.path = path
        self.dtype = np.dtype(dtype)
        self.width = width
        self.most = most
        self.rows = 0
        self._f = open(path, "wb")  # noqa: SIM115 (closed by close() or discard())
        self._out = _CrcWriter(self._f)
        self._head = self._header(most)
        self._out.write(self._head)

    def _shape(self, rows: int) -> tuple[int, ...]:
        return (rows, self.width) if self.width else (rows,)

    def _header(self, rows: int, length: int = 0) -> bytes:
        out = io.BytesIO()
        np.lib.format.write_array_header_2_0(
            out,
            {
                "descr": np.lib.format.dtype_to_descr(self.dtype),
                "fortran_order": False,
                "shape": self._shape(rows),
            },
        )
        head = out.getvalue()
        if len(head) < length:
            # Version 2.0: 8 bytes of magic and version, the header's length (uint32), then
            # the header, which ends in a newline; spaces before it pad.
            pad = length - len(head)
            size = int.from_bytes(head[8:12], "little") + pad
            head = head[:8] + size.to_bytes(4, "little") + head[12:-1] + b" " * pad + b"\n"
        return head

    def append(self, block: np.ndarray[Any, Any]) -> None:
        data = np.ascontiguousarray(block, dtype=self.dtype)
        if data.shape[1:] != self._shape(0)[1:]:
            raise ValueError(f"rows of width {self.width} expected, got {data.shape}")
        if self.rows + len(data) > self.most:
            raise ValueError(f"more than the {self.most} rows the header has room for")
        if len(data):
            self._out.write(data.data.cast("B"))
            self.rows += len(data)

    def close(self) -> dict[str, Any]:
        """Finish the file, fsync'd; returns its name, size and CRC-32."""
        rewritten = self.rows != self.most
        if rewritten:
            # Fewer rows than `most` never need a longer header: padded to the same length.
            self._f.seek(0)
            self._f.write(self._header(self.rows, len(self._head)))
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()
        crc = crc_of(self.path) if rewritten else self._out.crc
        return {"name": self.path.name, "bytes": self._out.size, "crc32": crc}

    def discard(self) -> None:
        self._f.close()


def write_bytes_file(path: Path, data: np.ndarray[Any, Any] | Path) -> dict[str, Any]:
    """One file of raw bytes (a serialised FAISS index), fsync'd; its name, size, CRC-32.
    `data` may be that file already, written by FAISS: it is synced, and its CRC read back
    from the page cache (~0.2 s for a million 8-bit vectors)."""
    if isinstance(data, Path):
        if data != path:
            raise ValueError(f"{data.name} written where {path.name} was expected")
        with open(path, "rb+") as f:
            os.fsync(f.fileno())
        return {"name": path.name, "bytes": path.stat().st_size, "crc32": crc_of(path)}
    with open(path, "wb") as f:
        out = _CrcWriter(f)
        out.write(np.ascontiguousarray(data, dtype=np.uint8).data.cast("B"))
        f.flush()
        os.fsync(f.fileno())
    return {"name": path.name, "bytes": out.size, "crc32": out.crc}


def crc_of(path: Path) -> int:
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(_READ_CHUNK):
            crc = zlib.crc32(chunk, crc)
    return crc


def checked(directory: Path, meta: dict[str, Any], what: str) -> Path:
    """The path of a snapshot file whose size and CRC-32 match `meta`; raises ValueError
    naming `what` otherwise."""
    path = directory / str(meta["name"])
    if "/" in str(meta["name"]) or path.stat().st_size != meta["bytes"]:
        raise ValueError(f"{what}: size differs from the manifest (truncated?)")
    if crc_of(path) != meta["crc32"]:
        raise ValueError(f"{what}: checksum differs from the manifest (corrupt)")
    return path
