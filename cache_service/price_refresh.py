"""`python -m cache_service prices refresh [--from FILE_OR_WHEEL]`: rewrite the shipped
price table (`cache_service/data/prices.json`) from LiteLLM's.

LiteLLM ships its table inside its wheel, so the refresh asks the package index for that
wheel alone (`pip download litellm --no-deps`: none of its dependencies, nothing installed)
and reads the one file out of the zip. `--from` takes a wheel or the JSON itself instead, for
a machine without the index. What is kept is decided in `price_source` (pure).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

from cache_service.price_source import SourceInfo, build

PACKAGE = "litellm"
# In the wheel LiteLLM's table is kept under this name (its repository's copy, the one the
# library falls back to offline); the unsuffixed name is tried in case a release renames it.
MEMBERS = (
    "litellm/model_prices_and_context_window_backup.json",
    "litellm/model_prices_and_context_window.json",
)
DATA_FILE = Path(__file__).parent / "data" / "prices.json"
_WHEEL_VERSION = re.compile(r"^litellm-([^-]+)-")


class RefreshError(Exception):
    """The source could not be fetched or read; the message says what to do."""


def download_wheel(into: Path) -> Path:
    """The latest litellm wheel from the package index pip is configured with."""
    cmd = [sys.executable, "-m", "pip", "download", PACKAGE, "--no-deps", "--only-binary=:all:"]
    done = subprocess.run(
        [*cmd, "--quiet", "--dest", str(into)], capture_output=True, text=True, check=False
    )
    wheels = sorted(into.glob(f"{PACKAGE}-*.whl"))
    if done.returncode != 0 or not wheels:
        raise RefreshError(
            f"pip download {PACKAGE} failed ({done.stderr.strip()[-500:] or done.returncode}); "
            "fetch the wheel elsewhere and pass it with --from"
        )
    return wheels[-1]


def read_source(path: Path) -> tuple[bytes, SourceInfo]:
    """The table's bytes and where they came from, out of a wheel or a JSON file."""
    today = dt.datetime.now(dt.UTC).date().isoformat()
    if path.suffix == ".whl":
        match = _WHEEL_VERSION.match(path.name)
        version = match.group(1) if match else "unknown"
        with zipfile.ZipFile(path) as wheel:
            names = set(wheel.namelist())
            member = next((m for m in MEMBERS if m in names), None)
            if member is None:
                raise RefreshError(f"{path.name} holds none of {', '.join(MEMBERS)}")
            data = wheel.read(member)
    else:
        version, member, data = "unknown", path.name, path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    return data, SourceInfo(PACKAGE, version, member, digest, today)


def render(table: dict[str, Any]) -> str:
    """The header indented, then one model per line: a refresh's diff reads as a list of
    changed prices."""
    lines = ["{"]
    for key in ("source", "unit", "count"):
        lines.append(f"  {json.dumps(key)}: {json.dumps(table[key])},")
    lines.append('  "models": {')
    models = list(table["models"].items())
    for i, (name, spec) in enumerate(models):
        comma = "," if i < len(models) - 1 else ""
        lines.append(f"    {json.dumps(name)}: {json.dumps(spec)}{comma}")
    lines += ["  }", "}", ""]
    return "\n".join(lines)


def refresh(source: Path | None, out: Path = DATA_FILE) -> dict[str, Any]:
    """Rewrite `out` from `source` (downloaded when None); returns what was written."""
    with tempfile.TemporaryDirectory(prefix="prices-") as tmp:
        path = source if source is not None else download_wheel(Path(tmp))
        raw, info = read_source(path)
    try:
        parsed = json.loads(raw)
    except json.JSONDecodeError as e:
        raise RefreshError(f"{info.file} is not JSON: {e}") from None
    if not isinstance(parsed, dict):
        raise RefreshError(f"{info.file} is not a JSON object")
    table = build(parsed, info)
    if not table["models"]:
        # A renamed field upstream would otherwise ship an empty table: every model $0.
        raise RefreshError(f"{info.file} holds no OpenAI or Anthropic model with a price")
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_suffix(".tmp")
    partial.write_text(render(table), encoding="utf-8")
    partial.replace(out)
    return table


def run(source: Path | None, out: Path = DATA_FILE) -> int:
    try:
        table = refresh(source, out)
    except (RefreshError, OSError, zipfile.BadZipFile) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    s = table["source"]
    print(f"{table['count']} models from {s['package']} {s['version']} ({s['file']}) -> {out}")
    return 0
