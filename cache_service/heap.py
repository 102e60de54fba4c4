"""Giving freed heap back to the operating system (glibc's `malloc_trim`).

glibc keeps what a process freed for reuse instead of returning it, and after one large
allocation is freed it serves later ones up to that size from the heap too (its mmap
threshold rises), so the temporaries of a large piece of work stay resident after it: a
restore from an index snapshot left 1,246 B per entry resident at 100k entries and 969 at
1M, of which ~270 and ~140 were free heap that one trim returns. Elsewhere (no glibc)
nothing is trimmed.
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Callable


@functools.cache
def malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim(pad), or None where there is none. Loaded once, on first use."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    trim = getattr(libc, "malloc_trim", None)
    if trim is None:
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    fn: Callable[[int], int] = trim
    return fn


def give_back() -> bool:
    """Return free heap pages to the OS; blocking (tens of ms after a large free): call it
    from a worker thread. True if glibc released any."""
    trim = malloc_trim()
    return bool(trim(0)) if trim is not None else False
