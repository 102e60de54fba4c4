"""Reports over the outcome log: the numbers are computed once, the renderers only lay them
out (JSON, Markdown, or one self-contained HTML file with PNG plots).

Modules, by idea (import from them directly; this package re-exports nothing):

* `build`: `build_report` and its inputs (`parse_since`) and statistics (`percentile`):
  every number a report shows, as plain JSON-able data.
* `text`: the report as tables, Markdown and JSON, and the number formatting they share.
* `html`: `render_html`, one self-contained page.
* `plots`: the matplotlib PNGs the HTML page embeds.
* `formats`: `FORMATS` and `render`, which picks the renderer for a format name.
* `cli`: `python -m cache_service report`.
"""
