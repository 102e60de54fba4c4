"""Where a miss goes: `chain.py` (the fallback chain with retries and circuit breakers,
under quota). The HTTP client itself is `backends/upstream.py`; backoff and breakers are
the pure `resilience.py`."""
