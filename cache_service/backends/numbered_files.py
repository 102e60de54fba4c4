"""Files named prefix, number, suffix in one directory: the segments both journals (spend,
entries) roll over, listed by number so a replay reads them oldest first."""

from __future__ import annotations

from pathlib import Path


def numbered(directory: Path, prefix: str, suffix: str) -> list[tuple[int, Path]]:
    """(number, path) of each such file, lowest number first; other names are ignored."""
    found = []
    for p in directory.glob(f"{prefix}*{suffix}"):
        try:
            found.append((int(p.name[len(prefix) : -len(suffix)]), p))
        except ValueError:
            continue
    return sorted(found)
