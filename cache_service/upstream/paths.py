"""The paths the relay may pass upstream: only ever a path below the upstream's base URL.

httpx takes an absolute URL (`http://host/...`, `//host/...`) over its base URL, and
normalises `..` segments away from it, so an unchecked `/v1/{path}` could send the caller's
credentials to any host or any path of the upstream's. A relayed path is refused unless every
segment is plain: no scheme, no empty (`//`) or dot segments, no backslash, control
character, `?` or `#`, however many times it was percent-encoded.
"""

from __future__ import annotations

import re
from typing import NoReturn
from urllib.parse import unquote

from cache_service.errors import BadRequest

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# Decoded once more than the server did: an escape that survives would be decoded upstream.
_MAX_DECODES = 4


def checked_relay_path(path: str) -> str:
    """`path` (below `/v1/`, as the server decoded it) if it can only name a path under the
    upstream's base URL; else a 400 naming what is wrong."""
    decoded = path
    for _ in range(_MAX_DECODES):
        once = unquote(decoded)
        if once == decoded:
            break
        decoded = once
    else:
        _refuse(path, "is percent-encoded too many times")
    if decoded != path:
        # Double encoding serves no API we relay; upstream it would decode to something else.
        _refuse(path, "contains percent-encoded characters")
    if _CONTROL.search(path):
        _refuse(path, "contains control characters")
    for bad, what in (("\\", "a backslash"), ("?", "a '?'"), ("#", "a '#'")):
        if bad in path:
            _refuse(path, f"contains {what}")
    segments = path.split("/")
    if ":" in segments[0]:
        _refuse(path, "is an absolute URL")  # `http:...` is a scheme to any URL parser
    if "" in segments[:-1]:  # a trailing slash is a path of its own, an inner // is not
        _refuse(path, "contains an empty segment ('//')")
    if any(s in (".", "..") for s in segments):
        _refuse(path, "contains a '.' or '..' segment")
    return path


def _refuse(path: str, problem: str) -> NoReturn:
    raise BadRequest(f"relayed path {path[:200]!r} {problem}", param="path")
