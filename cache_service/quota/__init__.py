"""Rate limits, per-day limits and spend budgets for requests the cache could not answer.
Pure: no I/O, time comes from an injected :class:`~cache_service.protocols.Clock`.

How the pipeline uses it: on a cache miss, estimate the request's tokens
(:mod:`~cache_service.quota.estimate`) and dollar cost, call
:meth:`~cache_service.quota.manager.QuotaManager.reserve` with every scope the request counts
against; if it returns a :class:`~cache_service.quota.manager.Reservation`, forward upstream and
``settle`` it with the real ``usage`` (or ``release`` it if nothing was sent). A
:class:`~cache_service.quota.limits.Denial` names the scope and limit that refused and how long
to wait. Cache hits never touch quota.

Modules, lowest first (each imports only those above it):

* ``money``: integer nano-dollars, so budgets are exact.
* ``windows``: the counting primitives: the rpm/tpm sliding window, UTC calendar keys, the
  daily/monthly dollar budget and the rpd/tpd day counter.
* ``limits``: what a scope may use (``Limits``) and how a refusal reads (``Denial``).
* ``scopes``: one scope's windows together: its denials, snapshot and rate-limit headers.
* ``alerts``: threshold crossings, told once per window.
* ``estimate``: tokens to reserve before the answer is known.
* ``manager``: ``QuotaManager``, all-or-nothing across scopes; settlement; spend export,
  import and journal recovery. Its docstring states exactly what is guaranteed.

Names are imported from their modules; this package re-exports nothing.
"""
