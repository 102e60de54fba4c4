"""GPTCache 0.1.44 behind the sidecar's HTTP shape, and a trivial app: the other side and the
HTTP floor of benchmarks/compare.py.

GPTCache is set up as its own docs describe a local similarity cache, with the choices that
make the comparison like for like:

- embedding: the sidecar's own embedder (`load_embedder`: the same MiniLM ONNX file through
  ONNX Runtime, the same `embed` call, one thread), wrapped as GPTCache's `embedding_func`;
- storage: `manager_factory("sqlite,faiss")` (SQLAlchemy over sqlite for questions and
  answers, FAISS `IDMap,Flat` L2 for vectors), LRU eviction sized far above the entries so
  that nothing is evicted during a run;
- acceptance: `SearchDistanceEvaluation` over its top-1 candidate (its default top_k) with a
  threshold equivalent to the sidecar's cosine 0.92. FAISS L2 returns the squared distance
  d = 2 - 2 cos of unit vectors; the evaluation scores 4 - d and accepts a score of at least
  4 x similarity_threshold, so cos >= 0.92 <=> similarity_threshold = (1 + 0.92) / 2 = 0.96;
- the per-hit report row GPTCache writes to sqlite by default is switched off
  (`Config(disable_report=True)`): an analytics feature the sidecar keeps in memory.

Serving mirrors GPTCache's own `gptcache_server` (an async FastAPI route calling the
synchronous cache in line, so requests are handled one at a time) with the OpenAI adapter's
flow (`adapt`: one embedding, search, on a miss the upstream and a `save` of the same
embedding). The cached answer is the upstream's JSON body, answered as it was stored.

    python -m benchmarks.gptcache_server serve --data-dir D --model-dir M --upstream URL --port P
    python -m benchmarks.gptcache_server trivial --port P [--model-dir M]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

# The sidecar's thread policy: one ONNX/BLAS thread, on the same shared cores.
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402

# At module level: FastAPI resolves the routes' (postponed) annotations in this namespace.
from fastapi import FastAPI, Request  # noqa: E402
from fastapi.responses import JSONResponse, Response  # noqa: E402

SIDECAR_THRESHOLD = 0.92
"""The sidecar's default similarity_threshold (cosine), which GPTCache is set to match."""
GPTCACHE_THRESHOLD = (1 + SIDECAR_THRESHOLD) / 2
MAX_DISTANCE = 4.0
"""SearchDistanceEvaluation's default bound: the largest squared L2 of two unit vectors."""
IMPORT_BATCH = 2000
"""Entries per `import_data` call (one sqlite transaction, one FAISS add)."""
HIT_MATCH = "similarity"
"""X-Cache-Match of every GPTCache hit: it has no exact path, a repeat is a similarity hit."""
_ID = re.compile(r'"id":\s*"([^"]+)"')

CONFIG_NOTE = {
    "version": "0.1.44",
    "embedding": "cache_service load_embedder: OnnxEmbedder (same ONNX MiniLM, 1 thread)",
    "storage": "manager_factory('sqlite,faiss'): SQLAlchemy/sqlite + FAISS IDMap,Flat (L2)",
    "evaluation": f"SearchDistanceEvaluation(max_distance={MAX_DISTANCE}), top_k 1",
    "similarity_threshold": GPTCACHE_THRESHOLD,
    "equivalent_cosine": SIDECAR_THRESHOLD,
    "report_rows": "off (Config(disable_report=True))",
    "auto_flush": "default (FAISS index written every 20 saves)",
    "serving": "async FastAPI route calling the sync cache in line (as gptcache_server)",
    "schema": "as shipped: a hit's answer is read by question_id, which sqlite does not index",
}


def max_size_for(entries: int) -> int:
    # GPTCache's memory LRU evicts (soft-deletes in sqlite, removes from FAISS) past its max
    # size: set far above what a run stores, so both sides keep every entry.
    return 10 * entries + 100_000


def factory_kwargs(data_dir: Path, max_size: int) -> dict[str, Any]:
    """manager_factory's arguments. In 0.1.44 its own `max_size` argument does not reach the
    memory eviction (that reads eviction_params["max_size"], default 1000): left there, a
    10k-entry import keeps only its last 1000 vectors."""
    return {
        "manager": "sqlite,faiss",
        "data_dir": str(data_dir),
        "max_size": max_size,
        "eviction_params": {"max_size": max_size},
        "vector_params": {"dimension": 384},
    }


def data_manager(data_dir: Path, max_size: int) -> Any:
    from gptcache.manager import manager_factory

    return manager_factory(**factory_kwargs(data_dir, max_size))


def prefill(data_dir: Path, entries: Iterable[tuple[str, np.ndarray, str]], size: int) -> float:
    """Bulk import (question, unit vector, answer) through the data manager: the vectors the
    sidecar stores, never re-encoded. Returns seconds (sqlite inserts, FAISS adds, flush)."""
    t0 = time.perf_counter()
    dm = data_manager(data_dir, max_size_for(size))
    qs: list[str] = []
    vs: list[np.ndarray] = []
    ans: list[str] = []

    def flush_batch() -> None:
        dm.import_data(qs, ans, vs, [None] * len(qs))
        qs.clear()
        vs.clear()
        ans.clear()

    for prompt, vector, answer in entries:
        qs.append(prompt)
        vs.append(np.asarray(vector, dtype=np.float32))
        ans.append(answer)
        if len(qs) >= IMPORT_BATCH:
            flush_batch()
    if qs:
        flush_batch()
    dm.flush()
    dm.close()
    return time.perf_counter() - t0


class SidecarEmbedding:
    """GPTCache's embedding_func: the sidecar's embedder, one text per call (as GPTCache
    calls it)."""

    def __init__(self, model_dir: Path) -> None:
        from cache_service.backends.embedder import load_embedder

        self.embedder = load_embedder(model_dir, "onnx", threads=1)
        self.dimension = self.embedder.dim

    def to_embeddings(self, data: str, **_: Any) -> np.ndarray:
        return np.asarray(self.embedder.embed([data])[0])


def build_cache(data_dir: Path, model_dir: Path, max_size: int) -> Any:
    from gptcache import Cache, Config
    from gptcache.processor.pre import last_content
    from gptcache.similarity_evaluation import SearchDistanceEvaluation

    embedding = SidecarEmbedding(model_dir)
    cache = Cache()
    cache.init(
        pre_embedding_func=last_content,
        embedding_func=embedding.to_embeddings,
        data_manager=data_manager(data_dir, max_size),
        similarity_evaluation=SearchDistanceEvaluation(max_distance=MAX_DISTANCE),
        config=Config(similarity_threshold=GPTCACHE_THRESHOLD, disable_report=True),
    )
    return cache


def lookup(cache: Any, body: dict[str, Any], upstream: Any) -> tuple[str, str, bool]:
    """One request through GPTCache's adapter. `upstream(body) -> dict` or None (lookup
    only). Returns (HIT or MISS, the answer's JSON text, whether a miss was stored)."""
    from gptcache.adapter.adapter import adapt

    def on_hit(answer: str) -> tuple[str, str]:
        return "HIT", answer

    def llm(*_: Any, **__: Any) -> dict[str, Any] | None:
        return None if upstream is None else upstream(body)

    def store(llm_data: dict[str, Any], update_cache_func: Any, *_: Any, **__: Any) -> Any:
        text = json.dumps(llm_data)
        update_cache_func(text)
        return "STORED", text

    out = adapt(llm, on_hit, store, cache_obj=cache, messages=body["messages"])
    if out is None:
        return "MISS", "", False
    if isinstance(out, tuple):
        return ("HIT", out[1], False) if out[0] == "HIT" else ("MISS", out[1], True)
    return "MISS", json.dumps(out), False  # adapt logged the failed save and went on


def create_app(cache: Any, upstream_url: str) -> Any:
    import httpx

    app = FastAPI()
    client = httpx.Client(timeout=60)

    def upstream(body: dict[str, Any], auth: str | None) -> dict[str, Any]:
        headers = {"authorization": auth} if auth else {}
        r = client.post(f"{upstream_url}/chat/completions", json=body, headers=headers)
        r.raise_for_status()
        out: dict[str, Any] = r.json()
        return out

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        # What its FAISS index holds, so the benchmark can check nothing was evicted.
        return JSONResponse({"ok": True, "entries": int(cache.data_manager.v.count())})

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        body = await request.json()
        auth = request.headers.get("authorization")
        status, text, stored = lookup(cache, body, lambda b: upstream(b, auth))
        headers = {"x-cache": status}
        if status == "HIT":
            headers["x-cache-match"] = HIT_MATCH
            m = _ID.search(text[:200])
            if m:
                headers["x-cache-entry"] = m.group(1)
        elif stored:
            headers["x-cache-stored"] = "true"
        return Response(text, media_type="application/json", headers=headers)

    @app.post("/bench/inproc")
    async def inproc(request: Request) -> JSONResponse:
        """GPTCache's lookup timed in this process, no HTTP: {"bodies": [...], "n": N}.
        Lookup only (nothing is stored), so the entries stay as prefilled."""
        spec = await request.json()
        bodies, n = spec["bodies"], int(spec["n"])
        lat: list[float] = []
        hits = 0
        for i in range(n):
            t0 = time.perf_counter()
            status, _, _ = lookup(cache, bodies[i % len(bodies)], None)
            lat.append((time.perf_counter() - t0) * 1000)
            hits += status == "HIT"
        return JSONResponse({"latencies_ms": lat, "hits": hits})

    return app


def trivial_app(model_dir: Path | None = None) -> Any:
    """The HTTP floor: read a chat request's JSON, answer a fixed small completion.

    With `model_dir`, also `POST /v1/floor/encode`: the same, after one bare encode of the
    last message in a worker thread, the least any similarity lookup over HTTP does (the
    sidecar's embedding also runs in a thread of its own). Beside the two floors measured
    apart, it shows what this machine adds when a request waits on a thread: each wait
    lets a core go idle, and waking it was ~0.4 ms a request here (an app that only awaits
    a 5 ms sleep answered in 5.94 ms against the 0.50 ms round trip)."""
    app = FastAPI()
    answer = {
        "id": "chatcmpl-floor",
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}}],
    }

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        return JSONResponse({"ok": True})

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> JSONResponse:
        await request.json()
        return JSONResponse(answer, headers={"x-cache-match": "floor"})

    if model_dir is not None:
        from cache_service.backends.embedder import load_embedder

        embedder = load_embedder(model_dir, "onnx", threads=1)

        @app.post("/v1/floor/encode")
        async def encode(request: Request) -> JSONResponse:
            body = await request.json()
            await asyncio.to_thread(embedder.embed, [body["messages"][-1]["content"]])
            return JSONResponse(answer, headers={"x-cache-match": "floor"})

    return app


def run(app: Any, port: int) -> None:
    import uvicorn

    # The sidecar's uvicorn settings (cache_service/serving.py): httptools on uvloop, no
    # access log, so the floor and GPTCache get the same server stack as the sidecar.
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=port,
        http="httptools",
        loop="uvloop",
        access_log=False,
        log_config=None,
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--data-dir", type=Path, required=True)
    s.add_argument("--model-dir", type=Path, required=True)
    s.add_argument("--upstream", required=True, help="e.g. http://127.0.0.1:PORT/v1")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--entries", type=int, required=True, help="prefilled entries (max_size)")
    t = sub.add_parser("trivial")
    t.add_argument("--port", type=int, required=True)
    t.add_argument("--model-dir", type=Path, help="also serve POST /v1/floor/encode")
    args = p.parse_args(argv)
    if args.cmd == "trivial":
        run(trivial_app(args.model_dir), args.port)
        return 0
    cache = build_cache(args.data_dir, args.model_dir, max_size_for(args.entries))
    run(create_app(cache, args.upstream), args.port)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
