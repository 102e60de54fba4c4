"""The cache proper, pure where it can be: `keys.py` (scope and exact key), `policy.py`
(the caller's directives), `guards.py` and `matching.py` (whether a candidate may answer),
`semantic.py` (store + index), `front.py` (the async face the request path uses),
`batcher.py` (one model thread, batched), `feedback.py` (thresholds learned from verdicts).
"""
