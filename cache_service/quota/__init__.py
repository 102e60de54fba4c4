"""Rate limits, per-day limits and spend budgets for requests the cache could not answer.

How the request path uses it: on a cache miss the upstream chain estimates the request's
tokens (:mod:`~cache_service.quota.estimate`) and dollar cost and asks the gate to admit it
against every scope it counts against; the ledger (:mod:`~cache_service.quota.ledger`, the
protocol) answers with a ``Held`` reservation or a :class:`~cache_service.quota.limits.Denial`
naming the scope and limit that refused and how long to wait. The call's ``Hold`` settles it
with the real ``usage``, or releases it if nothing was answered. Cache hits never touch quota.

The I/O-free core (everything but ``gate`` and ``local``; time from an injected
:class:`~cache_service.protocols.Clock`), lowest first (each imports only those above it):

* ``money``: integer nano-dollars, so budgets are exact.
* ``windows``: the counting primitives: the rpm/tpm sliding window, UTC calendar keys, the
  daily/monthly dollar budget and the rpd/tpd day counter.
* ``limits``: what a scope may use (``Limits``) and how a refusal reads (``Denial``).
* ``usage``: typed snapshots (``ScopeUse``, ``QuotaSnapshot``) every reader reads.
* ``scopes``: one scope's windows together: its denials, snapshot and rate-limit headers.
* ``alerts``: threshold crossings, told once per window.
* ``estimate``: tokens to reserve before the answer is known.
* ``manager``: ``QuotaManager``, all-or-nothing across scopes; settlement; spend export,
  import and journal recovery. Its docstring states exactly what is guaranteed.

Around it: ``ledger`` (the async ``QuotaLedger`` protocol every implementation keeps),
``local`` (the in-process ledger: the manager plus journal, snapshots and alerts),
``redis_ledger`` (the same guarantees for a fleet of replicas, kept in Redis by the Lua
scripts of ``redis_scripts``; leased holds, alerts told once fleet-wide),
``gate`` (the priority queue in front of any ledger, and the ``Hold``), ``projects``
(which scope a request counts against, and downgrades).

Names are imported from their modules; this package re-exports nothing.
"""
