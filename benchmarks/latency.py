"""Latency and throughput of the sidecar over real HTTP, at 1k and 100k cached entries.

What it measures, against a real `python -m cache_service serve` subprocess:

1. exact-hit latency (the same request repeated),
2. semantic-hit latency (hand-written paraphrases of stored prompts; only responses carrying
   ``X-Cache-Match: semantic`` from the right entry are counted, and their share is reported),
3. the latency a miss adds: the simulated upstream runs as its own process with 0 ms latency;
   the same never-seen prompts go (a) straight to it and (b) through the sidecar (exact check,
   embed, search, forward, store), interleaved one by one; added = p(b) - p(a),
4. throughput with 8 concurrent clients (one keep-alive connection each) on exact and on
   semantic hits, with the embedder's batch counters from ``/v1/cache/stats``.

The data dir is prefilled before the sidecar starts, straight through ``DiskCacheStore``: a few
hundred real embedded prompts (the paraphrase originals among them) plus random unit vectors
as filler, all in the one scope the queries use, so every search scans the full index (the
worst case: one tenant, one model, one system prompt). The sidecar rebuilds its FAISS index
from the store at start; the benchmark waits for ``/readyz``.

Every measurement is repeated ``--rounds`` times and the median of each percentile is reported,
because the box this was written on (2 cores) is shared with other work.

    .venv/bin/python benchmarks/latency.py [--sizes 1000,100000] [--requests 300]
        [--rounds 5] [--out benchmarks/results/latency.json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import platform
import random
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

# Same thread policy as the sidecar: this process shares the 2 cores with it.
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import httpx  # noqa: E402
import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cache_service.backends.faiss_index import FaissIndex  # noqa: E402
from cache_service.backends.store import DiskCacheStore  # noqa: E402
from cache_service.cache.guards import AcceptConfig  # noqa: E402
from cache_service.cache.keys import build_keys  # noqa: E402
from cache_service.cache.semantic import SemanticCache  # noqa: E402
from cache_service.cache.tenancy import credential_identity  # noqa: E402
from cache_service.protocols import SystemClock  # noqa: E402
from cache_service.settings import load_settings  # noqa: E402

MODEL = "gpt-4o-mini"
SYSTEM_PROMPT = "You are a concise, friendly assistant for the ACME help centre."
HEADERS = {"Authorization": "Bearer sk-latency-benchmark"}
DIM = 384
TTL_S = 7 * 24 * 3600.0
CONCURRENCY = 8
WARMUP = 20
SHARED_BOX_NOTE = (
    "Numbers are from a shared 2-core box (other CPU work may have been running); each "
    "figure is the median over rounds. Client and server share the same 2 cores."
)

# Hand-written near-duplicates: the paraphrase keeps every content word of the original and
# changes only scaffolding ("How do I" / "How can I", "What is" / "What's", "please"), which
# is what a semantic cache is for. The first of each pair is stored, the second is queried.
PAIRS: tuple[tuple[str, str], ...] = (
    ("How do I reset my password?", "How can I reset my password?"),
    ("How do I delete my account?", "How can I delete my account?"),
    ("What is the capital of Australia?", "What's the capital of Australia?"),
    ("How do I change my email address?", "How can I change my email address?"),
    ("What is the refund policy for annual plans?", "What's the refund policy for annual plans?"),
    ("How long does shipping to Canada take?", "How long will shipping to Canada take?"),
    ("Explain how photosynthesis works.", "Can you explain how photosynthesis works?"),
    (
        "What is the difference between a list and a tuple in Python?",
        "What's the difference between a list and a tuple in Python?",
    ),
    ("How do I export my data to a CSV file?", "How can I export my data to a CSV file?"),
    (
        "Can I upgrade my subscription in the middle of the billing cycle?",
        "Is it possible to upgrade my subscription in the middle of the billing cycle?",
    ),
    ("What are the symptoms of dehydration?", "What are symptoms of dehydration?"),
    (
        "How do I enable two-factor authentication?",
        "How can I enable two-factor authentication?",
    ),
    (
        "Why is my laptop battery draining so fast?",
        "Why does my laptop battery drain so fast?",
    ),
    ("What is the best way to learn Spanish?", "What's the best way to learn Spanish?"),
    ("How do I cancel my order?", "How can I cancel my order?"),
    ("Where can I find my invoices?", "Where do I find my invoices?"),
    ("How do I connect my printer to Wi-Fi?", "How can I connect my printer to Wi-Fi?"),
    ("What does HTTP status code 404 mean?", "What does the HTTP status code 404 mean?"),
    ("Summarize the plot of Hamlet.", "Please summarize the plot of Hamlet."),
    ("How do I center a div in CSS?", "How can I center a div in CSS?"),
    ('Translate "good morning" into French.', 'Please translate "good morning" into French.'),
    (
        "What are the health benefits of green tea?",
        "What are some health benefits of green tea?",
    ),
    ("How do I merge two branches in git?", "How can I merge two branches in git?"),
    ("Why is the sky blue?", "So why is the sky blue?"),
    ("How do I update my billing address?", "How can I update my billing address?"),
    (
        "What is the time complexity of binary search?",
        "What's the time complexity of binary search?",
    ),
    ("How do I install Python on Windows?", "How can I install Python on Windows?"),
    ("Write a haiku about autumn leaves.", "Please write a haiku about autumn leaves."),
    (
        "What is the boiling point of water at sea level?",
        "What's the boiling point of water at sea level?",
    ),
    (
        "How do I make a cup of cold brew coffee?",
        "How can I make a cup of cold brew coffee?",
    ),
    ("How does compound interest work?", "Can you explain how compound interest works?"),
    (
        "What is the weather like in Lisbon in spring?",
        "What's the weather like in Lisbon in spring?",
    ),
    (
        "How do I remove a background from an image?",
        "How can I remove a background from an image?",
    ),
    (
        "What should I pack for a week-long hiking trip?",
        "What do I need to pack for a week-long hiking trip?",
    ),
    ("How do I write a cover letter?", "How should I write a cover letter?"),
    (
        "What is the difference between RAM and storage?",
        "What's the difference between RAM and storage?",
    ),
    (
        "How do I sort a dictionary by value in Python?",
        "How can I sort a dictionary by value in Python?",
    ),
    ("Is it safe to eat raw cookie dough?", "Can I safely eat raw cookie dough?"),
    ("How many calories are in a banana?", "How many calories does a banana have?"),
    ("What time zone is Tokyo in?", "What's the time zone of Tokyo?"),
    ("How do I renew my passport?", "How can I renew my passport?"),
    (
        "What are good names for a golden retriever puppy?",
        "What are some good names for a golden retriever puppy?",
    ),
    (
        "How do I stop my cat from scratching the furniture?",
        "How can I stop my cat from scratching the furniture?",
    ),
    ("What is a healthy resting heart rate?", "What's a healthy resting heart rate?"),
    ("How do I track my package?", "How can I track my package?"),
    ("What is machine learning?", "So what is machine learning?"),
    ("How do I apply for a refund?", "How can I apply for a refund?"),
    (
        "Recommend a good book on personal finance.",
        "Please recommend a good book on personal finance.",
    ),
    (
        "How do I turn off notifications on my phone?",
        "How can I turn off notifications on my phone?",
    ),
    (
        "What is the return window for electronics?",
        "What's the return window for electronics?",
    ),
    (
        "How do I add a user to my team workspace?",
        "How can I add a user to my team workspace?",
    ),
    ("What causes inflation?", "So what causes inflation?"),
)

# More real (embedded) prompts around the originals, so the index's nearest neighbours of a
# query are realistic text rather than only random filler.
_TOPICS = (
    "database indexing", "unit testing", "password managers", "remote onboarding",
    "invoice disputes", "shipping delays", "API rate limits", "data retention", "team billing",
    "mobile notifications", "account recovery", "single sign-on", "usage reports",
    "webhook retries", "CSV imports", "refund requests", "gift cards", "tax exemptions",
    "seat licences", "audit logs", "dark mode", "keyboard shortcuts", "calendar sync",
    "file versioning", "storage quotas", "guest access", "custom domains", "email bounces",
    "spam filtering", "two-factor recovery codes", "browser extensions", "offline mode",
    "printer drivers", "VPN setup", "Wi-Fi dead zones", "laptop overheating",
    "battery health", "screen calibration", "backup schedules", "disk encryption",
    "composting at home", "sourdough starters", "marathon training", "indoor plants",
    "budget travel", "learning Japanese", "public speaking", "time management",
    "home espresso", "bird watching",
)  # fmt: skip
_TEMPLATES = (
    "What are common problems with {t}?",
    "Give me a short checklist for {t}.",
    "Summarise the key ideas behind {t} for a beginner.",
    "Which tools or settings help with {t}?",
    "Write a two-sentence FAQ answer about {t}.",
)
_MISS_WORDS = (
    "lighthouse", "quarterly", "glacier", "invoice", "orchestra", "firmware", "meadow",
    "ledger", "volcano", "sprint", "cathedral", "bandwidth", "harvest", "satellite", "pottery",
    "migration", "telescope", "warranty", "canyon", "algorithm", "bakery", "compiler",
    "tundra", "mortgage", "saxophone", "pipeline", "coral", "spreadsheet", "falcon", "kernel",
    "vineyard", "protocol", "blizzard", "payroll", "origami", "subway", "nebula", "thermostat",
    "parliament", "quilt", "router", "savanna", "chess", "latency", "bonsai", "freight",
    "monsoon", "ballet", "encryption", "tapestry",
)  # fmt: skip
_MISS_TEMPLATES = (
    "Draft a note for ticket {n} connecting {a} with {b}.",
    "Request {n}: compare {a} and {b} in one paragraph.",
    "For case {n}, list three facts about {a} and one about {b}.",
    "Item {n}: write a limerick mentioning {a}, {b} and {c}.",
    "Order {n} arrived with a broken {a}; how do I claim a {b} replacement?",
    "Explain to a child why a {a} is unlike a {b} (question {n}).",
    "My {a} keeps beeping after update {n}; is the {b} to blame?",
    "Plan a {a}-themed birthday with a {b} cake for {n} guests.",
)


def extra_real_prompts() -> list[str]:
    return [tpl.format(t=t) for t in _TOPICS for tpl in _TEMPLATES]


def miss_prompts(count: int, tag: str, rng: random.Random) -> list[str]:
    """Never-seen prompts. Each carries a unique number, so even a near neighbour is refused
    by the numbers guard and the request stays a miss."""
    out = []
    for i in range(count):
        a, b, c = rng.sample(_MISS_WORDS, 3)
        tpl = _MISS_TEMPLATES[i % len(_MISS_TEMPLATES)]
        out.append(tpl.format(n=f"{tag}-{i}-{rng.randrange(10**6)}", a=a, b=b, c=c))
    return out


def chat_body(prompt: str) -> dict[str, Any]:
    return {
        "model": MODEL,
        "messages": [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": prompt},
        ],
    }


def fake_completion(prompt: str, i: int) -> dict[str, Any]:
    text = (
        f"Here is a short answer to your question ({prompt[:40]}). First, check the settings "
        "page and make sure the option is enabled. Second, save your changes and reload the "
        "page. If the problem persists, contact support with the request id and a screenshot."
    )
    return {
        "id": f"chatcmpl-prefill{i:010d}",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": MODEL,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text, "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 30, "completion_tokens": 55, "total_tokens": 85},
    }


# ---------------------------------------------------------------------------------- prefill


def embed_real(prompts: Sequence[str]) -> np.ndarray:
    from cache_service.backends.embedder import load_embedder

    embedder = load_embedder(ROOT / "models", "onnx", threads=1)
    chunks = [embedder.embed(prompts[i : i + 32]) for i in range(0, len(prompts), 32)]
    return np.concatenate(chunks)


def prefill_entries(
    size: int, real_prompts: Sequence[str], real_vectors: np.ndarray, seed: int
) -> Iterator[tuple[str, np.ndarray]]:
    """The `size` (prompt, unit vector) pairs a prefill stores, in order: the real embedded
    prompts first, then random unit filler. The same seed gives the same entries, so another
    cache (benchmarks/compare.py) can be filled with exactly these."""
    rng = np.random.default_rng(seed)
    n_filler = max(0, size - len(real_prompts))
    filler = rng.standard_normal((n_filler, DIM), dtype=np.float32)
    filler /= np.linalg.norm(filler, axis=1, keepdims=True)
    words = rng.integers(0, len(_MISS_WORDS), size=(n_filler, 3))
    yield from zip(real_prompts[:size], real_vectors[:size], strict=False)
    for i in range(n_filler):
        a, b, c = (_MISS_WORDS[j] for j in words[i])
        yield f"Archived question {i}: how do {a} and {b} relate to {c}?", filler[i]


PREFILL_BATCH = 2000
"""Entries per store transaction in a prefill: one commit per entry made a 1M prefill take
most of an hour; batches of this size are what benchmarks/restart.py fills with."""


def prefill(
    data_dir: Path,
    size: int,
    real_prompts: Sequence[str],
    real_vectors: np.ndarray,
    seed: int,
) -> tuple[dict[str, str], float]:
    """Write `size` entries into data_dir's store as the proxy would have stored them.
    Returns prompt -> entry id for the real prompts, and the seconds it took."""
    settings = load_settings(data_dir=data_dir)
    tenant = credential_identity({k.lower(): v for k, v in HEADERS.items()})
    started = time.perf_counter()
    store = DiskCacheStore(settings.store_dir, settings.store_size_limit_bytes)
    # Only new_entry is used (ids, timestamps, expiry); the sidecar builds its own index.
    maker = SemanticCache(store, FaissIndex(DIM), SystemClock(), AcceptConfig())
    ids: dict[str, str] = {}
    entries = prefill_entries(size, real_prompts, real_vectors, seed)
    try:
        for start in range(0, size, PREFILL_BATCH):
            # Nested in put's own transaction: diskcache commits once, at the outer one.
            with store._cache.transact():
                for i, (prompt, vector) in enumerate(
                    itertools.islice(entries, PREFILL_BATCH), start
                ):
                    keys = build_keys(
                        chat_body(prompt), tenant, max_semantic_chars=settings.semantic_max_chars
                    )
                    assert keys.semantic_ok, prompt
                    entry = maker.new_entry(
                        scope=keys.scope,
                        exact_key=keys.exact_key,
                        namespace=keys.tenant,
                        model=keys.model,
                        prompt=keys.prompt,
                        embedding=np.ascontiguousarray(vector, dtype=np.float32),
                        response=fake_completion(prompt, i),
                        ttl_s=TTL_S,
                        prompt_tokens=30,
                        completion_tokens=55,
                        meta={"api": "openai"},
                    )
                    store.put(entry)
                    if i < len(real_prompts):
                        ids[prompt] = entry.id
    finally:
        store.close()
    return ids, time.perf_counter() - started


# ---------------------------------------------------------------------------------- processes


def write_results(out: Path, report: dict[str, Any], md: str) -> None:
    """A benchmark's JSON (the shape other tools read) and its markdown beside it, printed."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    out.with_suffix(".md").write_text(md)
    print(md)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Procs:
    """Every subprocess this benchmark starts, stopped in `close` whatever happened."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(
        self,
        args: list[str],
        log_path: Path,
        env: dict[str, str],
        *,
        module: str = "cache_service",
        cwd: Path = ROOT,
    ) -> subprocess.Popen[bytes]:
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", module, *args],
                cwd=cwd,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if proc in self.procs:
            self.procs.remove(proc)

    def close(self) -> None:
        for proc in list(self.procs):
            self.stop(proc)


def start_simulator(procs: Procs, workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    """The simulated upstream at 0 ms, ready: its process and its base URL."""
    port = free_port()
    log_path = workdir / "sim.log"
    args = ["simulate-upstream", "--port", str(port), "--latency-ms", "0"]
    sim = procs.start(args, log_path, dict(os.environ))
    wait_http(f"http://127.0.0.1:{port}/healthz", sim, 60, log_path)
    return sim, f"http://127.0.0.1:{port}/v1"


def wait_http(
    url: str, proc: subprocess.Popen[bytes], timeout_s: float, log_path: Path
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    with httpx.Client(timeout=5) as c:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                tail = log_path.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"process exited ({proc.returncode}) before ready:\n{tail}")
            with contextlib.suppress(httpx.HTTPError):
                r = c.get(url)
                if r.status_code == 200:
                    body: dict[str, Any] = r.json()
                    return body
            time.sleep(0.2)
    raise RuntimeError(f"{url} not ready after {timeout_s} s")


def rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def with_cpu(pid: int, n: int, fn: Any, *fn_args: Any) -> dict[str, Any]:
    """Run one measurement and add the sidecar's CPU ms per request: unlike wall time, it
    hardly moves when neighbours load the shared cores."""
    c0, load = cpu_s(pid), os.getloadavg()[0]
    out: dict[str, Any] = fn(*fn_args)
    out["sidecar_cpu_ms_per_req"] = rnd((cpu_s(pid) - c0) * 1000 / n, 2)
    out["loadavg_1m"] = round(load, 2)
    return out


def server_backend(log_path: Path) -> str | None:
    for line in log_path.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            rec = json.loads(line)
            if isinstance(rec, dict) and rec.get("event") == "embedder loaded":
                return str(rec.get("backend"))
    return None


# ---------------------------------------------------------------------------------- measuring


def pct(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def summary(values: Sequence[float]) -> dict[str, Any]:
    return {
        "n": len(values),
        "p50_ms": rnd(pct(values, 50)),
        "p99_ms": rnd(pct(values, 99)),
        "mean_ms": rnd(statistics.fmean(values)) if values else None,
        "max_ms": rnd(max(values)) if values else None,
    }


def rnd(x: float | None, nd: int = 3) -> float | None:
    return None if x is None else round(x, nd)


def med(values: Sequence[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return rnd(statistics.median(vals)) if vals else None


def make_client() -> httpx.Client:
    return httpx.Client(
        timeout=60,
        limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
        headers=HEADERS,
    )


def post(client: httpx.Client, url: str, body: dict[str, Any]) -> tuple[float, httpx.Response]:
    t0 = time.perf_counter()
    r = client.post(url, json=body)
    ms = (time.perf_counter() - t0) * 1000
    if r.status_code != 200:
        raise RuntimeError(f"{url} answered {r.status_code}: {r.text[:300]}")
    return ms, r


def cache_counters(client: httpx.Client, base: str) -> dict[str, Any]:
    snap = client.get(f"{base}/v1/cache/stats").json()
    out: dict[str, Any] = dict(snap["cache"])
    out.update({k: snap["total"][k] for k in ("exact_hits", "semantic_hits", "misses")})
    return out


def run_exact(
    client: httpx.Client, url: str, body: dict[str, Any], n: int, want: str = "exact"
) -> dict[str, Any]:
    """`want`: the X-Cache-Match a counted answer carries (another cache may have no exact
    path and answer a repeat as a similarity hit)."""
    lat: list[float] = []
    wrong = 0
    for _ in range(n):
        ms, r = post(client, url, body)
        if r.headers.get("x-cache-match") == want:
            lat.append(ms)
        else:
            wrong += 1
    return {**summary(lat), "not_exact": wrong}


def run_semantic(
    client: httpx.Client,
    url: str,
    queries: Sequence[tuple[str, str]],
    n: int,
    first_seen: dict[str, str],
    want: str = "semantic",
) -> dict[str, Any]:
    """queries: (paraphrase, id of the entry it should be answered from); `want`: the
    X-Cache-Match of a similarity hit."""
    lat: list[float] = []
    other: dict[str, int] = {}
    wrong_entry = 0
    for i in range(n):
        para, entry_id = queries[i % len(queries)]
        ms, r = post(client, url, chat_body(para))
        match = r.headers.get("x-cache-match") or r.headers.get("x-cache", "?").lower()
        first_seen.setdefault(para, match)
        if match == want and r.headers.get("x-cache-entry") == entry_id:
            lat.append(ms)
        elif match == want:
            wrong_entry += 1
        else:
            why = r.headers.get("x-cache-rejected-by")
            key = f"{match}:{why}" if why else match
            other[key] = other.get(key, 0) + 1
    return {
        **summary(lat),
        "share": round(len(lat) / n, 4),
        "semantic_wrong_entry": wrong_entry,
        "not_semantic": other,
    }


def run_miss(
    direct: httpx.Client,
    via: httpx.Client,
    sim_url: str,
    side_url: str,
    prompts: Sequence[str],
) -> dict[str, Any]:
    """Interleaved, so drift from neighbours' load hits both series alike."""
    a: list[float] = []
    b: list[float] = []
    paired: list[float] = []
    not_miss = 0
    near = 0
    for prompt in prompts:
        body = chat_body(prompt)
        ms_a, _ = post(direct, sim_url, body)
        ms_b, r = post(via, side_url, body)
        if r.headers.get("x-cache") != "MISS" or r.headers.get("x-cache-stored") != "true":
            not_miss += 1
            continue
        if r.headers.get("x-cache-rejected-by") not in (None, "below_threshold"):
            near += 1  # a candidate passed the threshold and a guard refused it
        a.append(ms_a)
        b.append(ms_b)
        paired.append(ms_b - ms_a)
    sa, sb = summary(a), summary(b)
    added = {
        "p50_ms": rnd(sb["p50_ms"] - sa["p50_ms"]) if a else None,
        "p99_ms": rnd(sb["p99_ms"] - sa["p99_ms"]) if a else None,
    }
    return {
        "direct": sa,
        "via_sidecar": sb,
        "added": added,
        "paired_diff": summary(paired),
        "not_miss": not_miss,
        "guard_refused_candidate": near,
    }


async def run_concurrent(
    url: str,
    bodies: Sequence[dict[str, Any]],
    want: str,
    clients: int = CONCURRENCY,
    *,
    window_s: float | None = None,
    warm_s: float = 1.0,
) -> dict[str, Any]:
    """`clients` clients, one keep-alive connection each, pulling from a shared list.

    Without `window_s`: every body once; the rate is all of them over the wall time, ramp-up
    and drain included. With it, a steady state: the clients cycle through the bodies for
    `warm_s` + `window_s` seconds and the rate counts only answers that arrived inside the
    window. On one 1M store on a quiet box, 320 requests from 32 clients (~1 s) read 262-307
    hits/s where alternating 5 s windows read 306-313: a short run starts with a batch that
    waits for every client to send, ends at a fraction of the clients, and falls wholly
    inside or outside any periodic work of the server.

    The clients are built and connected before the clock starts: an httpx client loads a TLS
    context when it is made (~25 ms of CPU here, even for plain http), so 32 of them built
    inside the timed run added ~0.8 s of the benchmark's own start-up to the wall time and
    to the first requests' latency, whichever server answered."""
    # Every body once, or round and round until the window closes.
    feed = iter(bodies) if window_s is None else itertools.cycle(bodies)
    lat: list[float] = []
    other = 0
    sent = 0
    kinds: dict[str, int] = {}
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    tls = ssl.create_default_context()  # one context for all (they never use it)
    pool = [
        httpx.AsyncClient(timeout=60, limits=limits, headers=HEADERS, verify=tls)
        for _ in range(clients)
    ]
    base = url.split("/v1/", 1)[0]
    opens = closes = 0.0  # the window, on the perf_counter clock (set when the clock starts)

    def next_body() -> dict[str, Any] | None:
        nonlocal sent
        if window_s is not None and time.perf_counter() >= closes:
            return None
        body = next(feed, None)
        sent += body is not None
        return body

    async def worker(c: httpx.AsyncClient) -> None:
        nonlocal other
        while (body := next_body()) is not None:
            t0 = time.perf_counter()
            r = await c.post(url, json=body)
            done = time.perf_counter()
            if window_s is not None and not opens <= done < closes:
                continue  # ramp-up, or an answer after the window: not counted
            if r.status_code == 200 and r.headers.get("x-cache-match") == want:
                lat.append((done - t0) * 1000)
            else:
                other += 1
                match = r.headers.get("x-cache-match") or r.headers.get("x-cache")
                kind = f"{r.status_code}:{match}"
                kinds[kind] = kinds.get(kind, 0) + 1

    try:
        # Open each client's connection (a health probe, not a measured request).
        await asyncio.gather(*(c.get(f"{base}/healthz") for c in pool))
        t0 = time.perf_counter()
        opens = t0 + warm_s
        closes = opens + (window_s or 0.0)
        await asyncio.gather(*(worker(c) for c in pool))
        wall = time.perf_counter() - t0
    finally:
        await asyncio.gather(*(c.aclose() for c in pool))
    counted = len(lat) + other
    timed = wall if window_s is None else window_s
    return {
        "requests": sent,
        "wall_s": round(wall, 3),
        **({} if window_s is None else {"warm_s": warm_s, "window_s": window_s}),
        "timed_s": round(timed, 3),
        "req_per_s": round(counted / timed, 1),
        "latency": summary(lat),
        "not_wanted_match": other,
        # status:X-Cache-Match (or X-Cache) of the others, e.g. shed embeddings sent upstream
        "not_wanted_kinds": kinds,
    }


class Sidecar:
    def __init__(
        self,
        proc: subprocess.Popen[bytes],
        base: str,
        ready: dict[str, Any],
        ready_s: float,
        t0: float,
        log_path: Path,
    ) -> None:
        self.proc, self.base, self.ready, self.ready_s = proc, base, ready, ready_s
        self.t0, self.log_path = t0, log_path


def start_sidecar(
    data_dir: Path,
    args: argparse.Namespace,
    procs: Procs,
    sim_url: str,
    log_path: Path,
    sweep_interval_s: float | None = None,
    *,
    cwd: Path = ROOT,
    env_extra: dict[str, str] | None = None,
) -> Sidecar:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "CACHE_EMBEDDER_BACKEND": "onnx",
        "CACHE_MODEL_DIR": str(ROOT / "models"),
        "CACHE_SWEEP_INTERVAL_S": str(sweep_interval_s or args.sweep_interval),
        **(env_extra or {}),  # benchmarks/ab.py's per-side settings
    }
    cmd = ["serve", "--port", str(port), "--data-dir", str(data_dir), "--upstream", sim_url]
    t0 = time.perf_counter()
    # `cwd`: the source tree `python -m cache_service` imports (benchmarks/ab.py's sides).
    proc = procs.start([*cmd, "--log-level", args.log_level], log_path, env, cwd=cwd)
    ready = wait_http(f"{base}/readyz", proc, 600, log_path)
    return Sidecar(proc, base, ready, time.perf_counter() - t0, t0, log_path)


def sweep_probe(
    size: int,
    data_dir: Path,
    args: argparse.Namespace,
    procs: Procs,
    sim_url: str,
    workdir: Path,
    sem_queries: Sequence[tuple[str, str]],
) -> dict[str, Any]:
    """Hits while the periodic sweep runs back to back (CACHE_SWEEP_INTERVAL_S=1): at large
    sizes one sweep takes long enough that this is what a share of real traffic sees."""
    sc = start_sidecar(data_dir, args, procs, sim_url, workdir / f"sidecar-{size}-sweep.log", 1.0)
    url = f"{sc.base}/v1/chat/completions"
    n, pid = args.requests, sc.proc.pid
    try:
        time.sleep(2)  # the first sweep starts 1 s after the lifespan starts
        with make_client() as side:
            run_exact(side, url, chat_body(PAIRS[0][0]), WARMUP)
            exact = with_cpu(pid, n, run_exact, side, url, chat_body(PAIRS[0][0]), n)
            sem = with_cpu(pid, n, run_semantic, side, url, sem_queries, n, {})
    finally:
        procs.stop(sc.proc)
    print(
        f"[{size}] while sweeping: exact p50 {exact['p50_ms']} ms, semantic p50 "
        f"{sem['p50_ms']} ms / p99 {sem['p99_ms']} ms",
        flush=True,
    )
    return {"exact": exact, "semantic": sem}


# ---------------------------------------------------------------------------------- one size


def bench_size(
    size: int,
    args: argparse.Namespace,
    procs: Procs,
    sim_url: str,
    real_prompts: Sequence[str],
    real_vectors: np.ndarray,
    workdir: Path,
) -> dict[str, Any]:
    data_dir = workdir / f"data-{size}"
    ids, prefill_s = prefill(data_dir, size, real_prompts, real_vectors, seed=size)
    print(f"[{size}] prefill of {size} entries took {prefill_s:.1f} s", flush=True)

    # The one expensive call in the sidecar's periodic sweep (SemanticCache.sweep calls
    # len(store) every time), timed alone on the freshly filled store.
    store = DiskCacheStore(load_settings(data_dir=data_dir).store_dir)
    t = time.perf_counter()
    len(store)
    store_len_s = time.perf_counter() - t
    store.close()
    print(f"[{size}] len(DiskCacheStore) took {store_len_s:.2f} s", flush=True)

    sc = start_sidecar(data_dir, args, procs, sim_url, workdir / f"sidecar-{size}.log")
    proc, base, ready, ready_s, t0 = sc.proc, sc.base, sc.ready, sc.ready_s, sc.t0
    log_path = sc.log_path
    print(
        f"[{size}] sidecar ready in {ready_s:.1f} s ({ready['entries_indexed']} vectors indexed)",
        flush=True,
    )
    result: dict[str, Any] = {
        "size": size,
        "prefill_s": round(prefill_s, 2),
        "startup_to_ready_s": round(ready_s, 2),
        "store_len_s": round(store_len_s, 2),
        "entries_indexed_at_start": ready["entries_indexed"],
        "rss_mib_at_start": rss_mib(proc.pid),
    }
    side_url = f"{base}/v1/chat/completions"
    direct_url = f"{sim_url}/chat/completions"
    rng = random.Random(size)
    exact_body = chat_body(PAIRS[0][0])
    sem_queries = [(para, ids[orig]) for orig, para in PAIRS]
    first_seen: dict[str, str] = {}
    rounds: list[dict[str, Any]] = []
    try:
        with make_client() as side, make_client() as sim, make_client() as ctl:
            # Warm-up: first requests pay for lazy imports, ONNX arena growth, connections.
            run_exact(side, side_url, exact_body, WARMUP)
            for prompt in miss_prompts(WARMUP // 2, f"warm{size}", rng):
                post(sim, direct_url, chat_body(prompt))
                post(side, side_url, chat_body(prompt))
            before_seq = cache_counters(ctl, base)
            for r in range(args.rounds):
                t = time.perf_counter()
                since_start = t - t0
                n, pid = args.requests, proc.pid
                exact = with_cpu(pid, n, run_exact, side, side_url, exact_body, n)
                sem = with_cpu(pid, n, run_semantic, side, side_url, sem_queries, n, first_seen)
                misses = miss_prompts(n, f"r{r}", rng)
                miss = with_cpu(pid, n, run_miss, sim, side, direct_url, side_url, misses)
                rounds.append(
                    {
                        # Seconds since the sidecar was launched: its sweep runs every
                        # sweep_interval_s (60 s by default) and competes for the CPU.
                        "window_s": [round(since_start, 1), round(time.perf_counter() - t0, 1)],
                        "exact": exact,
                        "semantic": sem,
                        "miss": miss,
                    }
                )
                print(
                    f"[{size}] round {r + 1}/{args.rounds} ({time.perf_counter() - t:.1f} s): "
                    f"exact p50 {exact['p50_ms']} ms, semantic p50 {sem['p50_ms']} ms "
                    f"(share {sem['share']}), miss added p50 {miss['added']['p50_ms']} ms; "
                    f"sidecar CPU ms/req exact {exact['sidecar_cpu_ms_per_req']}, semantic "
                    f"{sem['sidecar_cpu_ms_per_req']}, miss {miss['sidecar_cpu_ms_per_req']}; "
                    f"load {exact['loadavg_1m']}",
                    flush=True,
                )
            after_seq = cache_counters(ctl, base)

            conc: list[dict[str, Any]] = []
            n_conc = max(args.requests, 50 * CONCURRENCY)
            n_exact = max(5 * args.requests, 1500)  # ~1 ms each: more for a stable rate
            sem_bodies = [chat_body(sem_queries[i % len(sem_queries)][0]) for i in range(n_conc)]
            for _ in range(args.rounds):
                tc = time.perf_counter()
                ex = with_cpu(
                    proc.pid,
                    n_exact,
                    asyncio.run,
                    run_concurrent(side_url, [exact_body] * n_exact, "exact"),
                )
                c0 = cache_counters(ctl, base)
                se = with_cpu(
                    proc.pid, n_conc, asyncio.run, run_concurrent(side_url, sem_bodies, "semantic")
                )
                c1 = cache_counters(ctl, base)
                se["embedding_batches"] = c1["embedding_batches"] - c0["embedding_batches"]
                se["embedded"] = c1["embedded"] - c0["embedded"]
                conc.append({"window_s": [round(tc - t0, 1)], "exact": ex, "semantic": se})
                conc[-1]["window_s"].append(round(time.perf_counter() - t0, 1))
            print(
                f"[{size}] 8 clients: exact {[c['exact']['req_per_s'] for c in conc]} req/s, "
                f"semantic {[c['semantic']['req_per_s'] for c in conc]} req/s",
                flush=True,
            )
            final = cache_counters(ctl, base)
    finally:
        result["rss_mib_at_end"] = rss_mib(proc.pid)
        procs.stop(proc)
    if size >= args.sweep_probe_min:
        result["sweep_probe"] = sweep_probe(
            size, data_dir, args, procs, sim_url, workdir, sem_queries
        )
    result["embedding_backend_server"] = server_backend(log_path)
    result["semantic_first_pass"] = {
        "distinct_paraphrases": len(first_seen),
        "served_semantic": sum(1 for v in first_seen.values() if v == "semantic"),
        "not_semantic": sorted(p for p, v in first_seen.items() if v != "semantic"),
    }
    result["sequential_embedding"] = {
        "embedding_batches": after_seq["embedding_batches"] - before_seq["embedding_batches"],
        "embedded": after_seq["embedded"] - before_seq["embedded"],
    }
    result["vectors_at_end"] = final["vectors"]
    result["rounds"] = rounds
    result["concurrent_rounds"] = conc
    result["median"] = {
        "exact_p50_ms": med([x["exact"]["p50_ms"] for x in rounds]),
        "exact_p99_ms": med([x["exact"]["p99_ms"] for x in rounds]),
        "semantic_p50_ms": med([x["semantic"]["p50_ms"] for x in rounds]),
        "semantic_p99_ms": med([x["semantic"]["p99_ms"] for x in rounds]),
        "semantic_share": med([x["semantic"]["share"] for x in rounds]),
        "miss_direct_p50_ms": med([x["miss"]["direct"]["p50_ms"] for x in rounds]),
        "miss_direct_p99_ms": med([x["miss"]["direct"]["p99_ms"] for x in rounds]),
        "miss_via_p50_ms": med([x["miss"]["via_sidecar"]["p50_ms"] for x in rounds]),
        "miss_via_p99_ms": med([x["miss"]["via_sidecar"]["p99_ms"] for x in rounds]),
        "miss_added_p50_ms": med([x["miss"]["added"]["p50_ms"] for x in rounds]),
        "miss_added_p99_ms": med([x["miss"]["added"]["p99_ms"] for x in rounds]),
        "miss_paired_diff_p50_ms": med([x["miss"]["paired_diff"]["p50_ms"] for x in rounds]),
        "cpu_exact_ms": med([x["exact"]["sidecar_cpu_ms_per_req"] for x in rounds]),
        "cpu_semantic_ms": med([x["semantic"]["sidecar_cpu_ms_per_req"] for x in rounds]),
        "cpu_miss_ms": med([x["miss"]["sidecar_cpu_ms_per_req"] for x in rounds]),
        "cpu_conc_semantic_ms": med([c["semantic"]["sidecar_cpu_ms_per_req"] for c in conc]),
        "conc_exact_req_s": med([c["exact"]["req_per_s"] for c in conc]),
        "conc_semantic_req_s": med([c["semantic"]["req_per_s"] for c in conc]),
        "conc_semantic_p50_ms": med([c["semantic"]["latency"]["p50_ms"] for c in conc]),
        "conc_semantic_embedded": sum(c["semantic"]["embedded"] for c in conc),
        "conc_semantic_embedding_batches": sum(c["semantic"]["embedding_batches"] for c in conc),
    }
    return result


# ---------------------------------------------------------------------------------- report


def fmt(x: Any, nd: int = 1) -> str:
    return "–" if x is None else f"{x:.{nd}f}"


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "# Sidecar latency benchmark",
        "",
        f"_{report['note']}_",
        "",
        f"Run {report['started_utc']} on {report['host']['cpus']} CPUs "
        f"(load average before/after: {report['host']['loadavg_before']} / "
        f"{report['host']['loadavg_after']}); {report['params']['requests']} requests per "
        f"measurement, {report['params']['rounds']} rounds, medians over rounds. Server-side "
        f"embedding backend: **{report['embedding_backend_server']}**. Total run "
        f"{report['total_s']:.0f} s.",
        "",
        "Latency in ms over HTTP (keep-alive, one connection, sequential). Miss-added = "
        "p(via sidecar) − p(straight to the simulated upstream, 0 ms latency), same prompts. "
        f"Throughput: {CONCURRENCY} concurrent clients, cache hits.",
        "",
        "| entries | exact p50 | exact p99 | semantic p50 | semantic p99 | semantic share "
        "| miss-added p50 | miss-added p99 | req/s exact (8 clients) | req/s semantic "
        "(8 clients) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in report["sizes"]:
        m = s["median"]
        lines.append(
            f"| {s['size']:,} | {fmt(m['exact_p50_ms'], 2)} | {fmt(m['exact_p99_ms'], 2)} "
            f"| {fmt(m['semantic_p50_ms'])} | {fmt(m['semantic_p99_ms'])} "
            f"| {fmt((m['semantic_share'] or 0) * 100, 0)} % "
            f"| {fmt(m['miss_added_p50_ms'])} | {fmt(m['miss_added_p99_ms'])} "
            f"| {fmt(m['conc_exact_req_s'], 0)} | {fmt(m['conc_semantic_req_s'], 0)} |"
        )
    lines += [
        "",
        "Miss path in detail (ms) and startup:",
        "",
        "| entries | direct p50 | direct p99 | via sidecar p50 | via sidecar p99 "
        "| paired diff p50 | prefill s | start→ready s | RSS MiB start/end "
        "| 8-client semantic: embedded / batches |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in report["sizes"]:
        m = s["median"]
        lines.append(
            f"| {s['size']:,} | {fmt(m['miss_direct_p50_ms'], 2)} "
            f"| {fmt(m['miss_direct_p99_ms'], 2)} | {fmt(m['miss_via_p50_ms'])} "
            f"| {fmt(m['miss_via_p99_ms'])} | {fmt(m['miss_paired_diff_p50_ms'])} "
            f"| {fmt(s['prefill_s'])} | {fmt(s['startup_to_ready_s'])} "
            f"| {s['rss_mib_at_start']} / {s['rss_mib_at_end']} "
            f"| {m['conc_semantic_embedded']} / {m['conc_semantic_embedding_batches']} |"
        )
    lines += [
        "",
        "Sidecar CPU per request (ms of user+system time of the sidecar process over the "
        "measurement ÷ requests; barely moved by neighbours' load, unlike wall time):",
        "",
        "| entries | exact hit | semantic hit | miss | semantic hit, 8 clients |",
        "|---:|---:|---:|---:|---:|",
    ]
    for s in report["sizes"]:
        m = s["median"]
        lines.append(
            f"| {s['size']:,} | {fmt(m['cpu_exact_ms'], 2)} | {fmt(m['cpu_semantic_ms'], 2)} "
            f"| {fmt(m['cpu_miss_ms'], 2)} | {fmt(m['cpu_conc_semantic_ms'], 2)} |"
        )
    probed = [s for s in report["sizes"] if "sweep_probe" in s]
    if probed:
        lines += [
            "",
            "Sweep probe: the same hits while the sidecar's sweep runs back to back "
            "(`CACHE_SWEEP_INTERVAL_S=1`), next to `len(DiskCacheStore)` timed alone on the "
            "prefilled store (the sweep calls it every time):",
            "",
            "| entries | len(store) s | exact p50 / p99 | semantic p50 / p99 "
            "| steady-state semantic p50 / p99 | sidecar CPU ms/semantic hit |",
            "|---:|---:|---:|---:|---:|---:|",
        ]
        for s in probed:
            m, pr = s["median"], s["sweep_probe"]
            lines.append(
                f"| {s['size']:,} | {fmt(s['store_len_s'], 2)} "
                f"| {fmt(pr['exact']['p50_ms'], 2)} / {fmt(pr['exact']['p99_ms'], 2)} "
                f"| {fmt(pr['semantic']['p50_ms'])} / {fmt(pr['semantic']['p99_ms'])} "
                f"| {fmt(m['semantic_p50_ms'])} / {fmt(m['semantic_p99_ms'])} "
                f"| {fmt(pr['semantic']['sidecar_cpu_ms_per_req'], 2)} |"
            )
    lines += [
        "",
        "- Entries: a few hundred real embedded prompts plus random unit vectors as filler, all "
        "in the queries' scope (one tenant, model and system prompt), so each search scans the "
        "whole flat index. Misses are stored, so the index grows during the run "
        + ", ".join(f"{s['size']:,} → {s['vectors_at_end']:,}" for s in report["sizes"])
        + ".",
        "- Semantic share: responses with `X-Cache-Match: semantic` from the paired original's "
        "entry, over all paraphrase requests. A paraphrase the guards refuse goes upstream, is "
        "stored, and is an exact hit from then on.",
        "- The sidecar's periodic sweep (`SemanticCache.sweep`, every `sweep_interval_s`, "
        "60 s by default) was pushed out of the main measurements "
        f"(`CACHE_SWEEP_INTERVAL_S={report['params']['sweep_interval_s']:g}`) so they show the "
        "steady state; the sweep-probe table measures hits while it runs.",
        "- Raw per-round numbers (p50/p99/max, load average, CPU): the JSON next to this file.",
        "",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="1000,100000")
    p.add_argument("--requests", type=int, default=300)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/latency.json")
    p.add_argument("--log-level", default="INFO", help="sidecar log level (INFO as deployed)")
    p.add_argument(
        "--sweep-interval",
        type=float,
        default=3600.0,
        help="the sidecar's CACHE_SWEEP_INTERVAL_S during the main measurements (default "
        "3600: keep the periodic sweep out of them; it is measured by the sweep probe)",
    )
    p.add_argument(
        "--sweep-probe-min",
        type=int,
        default=10_000,
        help="sizes from this up also get the sweep probe (hits during back-to-back sweeps)",
    )
    p.add_argument(
        "--render", type=Path, help="only re-render the markdown from an existing JSON result"
    )
    args = p.parse_args(argv)
    if args.render is not None:
        md_path = args.render.with_suffix(".md")
        md_path.write_text(markdown(json.loads(args.render.read_text())))
        print(f"wrote {md_path}")
        return 0
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]

    started = time.perf_counter()
    load_before = os.getloadavg()
    real_prompts = [orig for orig, _ in PAIRS] + extra_real_prompts()
    t = time.perf_counter()
    real_vectors = embed_real(real_prompts)
    print(f"embedded {len(real_prompts)} real prompts in {time.perf_counter() - t:.1f} s")

    procs = Procs()
    report: dict[str, Any] = {
        "note": SHARED_BOX_NOTE,
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "loadavg_before": [round(x, 2) for x in load_before],
        },
        "params": {
            "sizes": sizes,
            "requests": args.requests,
            "rounds": args.rounds,
            "concurrency": CONCURRENCY,
            "model": MODEL,
            "pairs": len(PAIRS),
            "real_prompts": len(real_prompts),
            "sidecar_log_level": args.log_level,
            "sweep_interval_s": args.sweep_interval,
        },
        "sizes": [],
    }
    with tempfile.TemporaryDirectory(prefix="latency-bench-") as tmp:
        workdir = Path(tmp)
        try:
            _, sim_url = start_simulator(procs, workdir)
            for size in sizes:
                report["sizes"].append(
                    bench_size(size, args, procs, sim_url, real_prompts, real_vectors, workdir)
                )
        finally:
            procs.close()
    backends = {s["embedding_backend_server"] for s in report["sizes"]}
    report["embedding_backend_server"] = ", ".join(sorted(str(b) for b in backends))
    report["host"]["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    report["total_s"] = round(time.perf_counter() - started, 1)

    write_results(args.out, report, markdown(report))
    print(f"wrote {args.out} and its .md in {report['total_s']:.0f} s total")
    return 0


if __name__ == "__main__":
    sys.exit(main())
