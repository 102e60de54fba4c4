"""The formats a report comes in, and `render`, which picks the renderer for one."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from cache_service.report.build import ReportError
from cache_service.report.html import render_html
from cache_service.report.text import render_json, render_markdown

FORMATS = ("html", "md", "json")
MEDIA_TYPES = {
    "html": "text/html; charset=utf-8",
    "md": "text/markdown; charset=utf-8",
    "json": "application/json",
}


def render(report: dict[str, Any], fmt: str) -> tuple[str, str]:
    """(text, media type) in one of FORMATS."""
    renderers: dict[str, Callable[[dict[str, Any]], str]] = {
        "html": render_html,
        "md": render_markdown,
        "json": render_json,
    }
    if fmt not in renderers:
        raise ReportError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    return renderers[fmt](report), MEDIA_TYPES[fmt]
