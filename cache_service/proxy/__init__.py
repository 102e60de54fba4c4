"""The request path between a route and the cache and upstream: `context.py` (what a
request is), `handler.py` (lookup → hit | miss), `singleflight.py` and `fanout.py`
(identical misses share one upstream call), `streaming.py` (streamed misses), `headers.py`,
`recorder.py` (one outcome per request, cost computed once) and `audit.py`."""
