"""Telemetry: what each request did, as Prometheus metrics and as an on-disk outcome log.

Modules, by idea (import from them directly; this package re-exports nothing):

* `events`: `OutcomeEvent`, the one record per request the recorder emits, and its helpers
  (`split_cost`, `StageTimer`, the outcome groups `HITS` / `UPSTREAM_PAID`).
* `stats`: the counters behind GET /v1/cache/stats (`Outcome`, `Stats`, `LabelCaps`) and
  `record_event` / `replay_stats`, which rebuild them from logged events.
* `metrics`: `Metrics`, the Prometheus registry of one app instance.
* `outcome_log`: `OutcomeLog` (the SQLite writer) and `read_outcomes` (the read-only reader).
* `quota_view`: adapters from the quota manager's snapshot dict to gauges and report rows.
* `hub`: `Telemetry`, the facade the recorder and the routes hold.
"""
