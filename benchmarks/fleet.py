"""Fleet mode (issue 11): what a shared Redis costs and what it sustains, on one run.

1. Over HTTP, an exact hit, a semantic hit and a miss in embedded mode (one sidecar on
   diskcache) and in Redis mode (one sidecar with --redis-url), both up at once on ~1k
   identical entries and asked alternately, so load from neighbours hits both alike. The
   miss uses never-seen prompts against the simulated upstream at 0 ms; each is also sent
   straight to the upstream, so "added" is what the sidecar adds. Per mode: the sidecar's
   CPU per request, Redis's CPU per request, and each stage's median from the sidecar's
   request log (`stages_ms`).
2. RedisLedger reserve and settle round trips (3 scopes, rpm + tpm + daily budget).
3. Propagation between two replicas on one Redis over HTTP: store via A (a miss), then
   (a) ask B the same request until it is an exact hit; (b) poll B's /v1/cache/stats until
   its index holds the new vector, then ask B the paraphrase, which must be a semantic hit.
   B is not polled with the paraphrase itself: a miss there would be forwarded and stored by
   B, and the next poll would be an exact hit on B's own entry.
4. A replica's replay (IndexFeed.bootstrap into a fresh FAISS index) over 100k entries in
   Redis, Redis used_memory per entry and the replica process's RSS delta.
5. Admissions per second one Redis sustains: 4 processes x 16 asyncio tasks doing reserve +
   settle over 3 scopes for 5 s (limits that never deny), with Redis's CPU over the window.

The background training job (`benchmarks.verifier.train`), if any, is paused (SIGSTOP) for
the run and resumed (SIGCONT) whatever happens; the run waits for any pytest to finish.
Every timing carries the 1-minute load average read beside it.

    .venv/bin/python benchmarks/fleet.py [--requests 300] [--trials 30] [--entries 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing as mp
import os
import platform
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import httpx
import numpy as np
import redis
import redis.asyncio

from benchmarks.latency import (
    DIM,
    MODEL,
    PAIRS,
    ROOT,
    SYSTEM_PROMPT,
    Procs,
    chat_body,
    cpu_s,
    embed_real,
    extra_real_prompts,
    make_client,
    miss_prompts,
    post,
    prefill,
    rnd,
    rss_mib,
    server_backend,
    start_sidecar,
    start_simulator,
    summary,
    write_results,
)
from benchmarks.redis_store import entry as random_entry
from cache_service.backends.faiss_index import FaissIndex
from cache_service.backends.redis_store import RedisEntryStore
from cache_service.backends.store import DiskCacheStore
from cache_service.cache.guards import AcceptConfig
from cache_service.cache.index_feed import IndexFeed
from cache_service.cache.semantic import SemanticCache
from cache_service.protocols import SystemClock
from cache_service.quota.ledger import Held
from cache_service.quota.limits import Limits
from cache_service.quota.redis_ledger import RedisLedger
from cache_service.settings import load_settings
from tests.redis_server import RedisServer

PYTEST = r"(-m pytest|bin/pytest)( |$)"
"""A test run (not this script's own --max-wait-pytest, nor a sidecar a test started)."""
SCOPES = (("project", "default"), ("upstream", "primary"), ("global", "total"))
NEVER_DENY = Limits(rpm=10**9, tpm=10**12, daily_budget_usd=10**6)


def load1() -> float:
    return round(os.getloadavg()[0], 2)


# ------------------------------------------------------------------------- the quiet box


def pgrep(pattern: str) -> list[int]:
    out = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout
    mine = (os.getpid(), os.getppid())
    return [int(p) for p in out.split() if int(p) not in mine]


def wait_no_pytest(max_wait_s: float) -> bool:
    """True once no pytest runs; False if one still runs after max_wait_s."""
    deadline = time.monotonic() + max_wait_s
    while pids := pgrep(PYTEST):
        if time.monotonic() > deadline:
            return False
        print(f"waiting for pytest {pids} to finish...", flush=True)
        time.sleep(10)
    return True


@contextlib.contextmanager
def training_paused() -> Iterator[list[int]]:
    pids = pgrep("benchmarks.verifier.train")
    previous = signal.getsignal(signal.SIGTERM)

    def _term(signum: int, frame: Any) -> None:
        raise SystemExit(143)

    signal.signal(signal.SIGTERM, _term)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGSTOP)
    try:
        yield pids
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def env(**values: str) -> Iterator[None]:
    """start_sidecar copies os.environ: the fleet settings go to the child through it."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def redis_info(client: redis.Redis, section: str) -> dict[str, Any]:
    # redis-py types every reply as "maybe awaitable"; a sync client's never is.
    return cast("dict[str, Any]", client.info(section))


def redis_cpu_s(client: redis.Redis) -> float:
    cpu = redis_info(client, "cpu")
    return float(cpu["used_cpu_sys"]) + float(cpu["used_cpu_user"])


# ------------------------------------------------------------------ 1. HTTP, both modes


def body_with(system: str, prompt: str) -> dict[str, Any]:
    body = chat_body(prompt)
    body["messages"][0]["content"] = system
    return body


def stats(client: httpx.Client, base: str) -> dict[str, Any]:
    out: dict[str, Any] = client.get(f"{base}/v1/cache/stats").json()
    return out


def wait_vectors(client: httpx.Client, base: str, want: int, timeout_s: float = 120) -> int:
    deadline = time.monotonic() + timeout_s
    while True:
        n = int(stats(client, base)["cache"]["vectors"])
        if n >= want or time.monotonic() > deadline:
            return n
        time.sleep(0.2)


def interleaved(
    sides: dict[str, tuple[httpx.Client, str]],
    bodies: list[dict[str, Any]],
    accept: Any,
    rclient: redis.Redis,
    pids: dict[str, int],
    background_cpu_s_per_s: float | None = None,
) -> dict[str, Any]:
    """Each body goes to every side, the order rotating per body; `accept(name, resp)` says
    whether a response counts. Returns per side: latency summary, rejects, CPU per request."""
    names = list(sides)
    lat: dict[str, list[float]] = {n: [] for n in names}
    rejected: dict[str, dict[str, int]] = {n: {} for n in names}
    rclient.config_resetstat()
    load0, r0, t0 = load1(), redis_cpu_s(rclient), time.perf_counter()
    c0 = {n: cpu_s(pid) for n, pid in pids.items()}
    for i, body in enumerate(bodies):
        order = names[i % len(names) :] + names[: i % len(names)]
        for name in order:
            client, url = sides[name]
            ms, resp = post(client, url, body)
            why = accept(name, resp)
            if why is None:
                lat[name].append(ms)
            else:
                rejected[name][why] = rejected[name].get(why, 0) + 1
    n = len(bodies)
    out: dict[str, Any] = {
        name: {
            **summary(lat[name]),
            "rejected": rejected[name],
            **(
                {"sidecar_cpu_ms_per_req": rnd((cpu_s(pids[name]) - c0[name]) * 1000 / n, 2)}
                if name in pids
                else {}
            ),
        }
        for name in names
    }
    out["redis_cpu_ms_per_req"] = rnd((redis_cpu_s(rclient) - r0) * 1000 / n, 3)
    if background_cpu_s_per_s is not None:
        idle = background_cpu_s_per_s * (time.perf_counter() - t0)
        out["redis_cpu_ms_per_req_net"] = rnd((redis_cpu_s(rclient) - r0 - idle) * 1000 / n, 3)
    out["redis_commands_per_req"] = commands_per(rclient, n)
    out["wall_s"] = round(time.perf_counter() - t0, 2)
    out["loadavg_1m"] = [load0, load1()]
    return out


def commands_per(rclient: redis.Redis, n: float) -> dict[str, dict[str, float]]:
    """Redis's own account (INFO commandstats since the last CONFIG RESETSTAT): calls and
    CPU µs per request (or per second), busiest first."""
    stats = redis_info(rclient, "commandstats")
    rows = {
        k.removeprefix("cmdstat_"): {
            "calls": round(v["calls"] / n, 3),
            "cpu_us": round(v["usec"] / n, 1),
        }
        for k, v in stats.items()
        if k not in ("cmdstat_config", "cmdstat_info")
    }
    return dict(sorted(rows.items(), key=lambda kv: -kv[1]["cpu_us"]))


def redis_background(rclient: redis.Redis, seconds: float) -> dict[str, Any]:
    """Redis's CPU while the replicas idle (index feeds' blocking reads, heartbeats,
    leases): subtracted from the per-request figures."""
    rclient.config_resetstat()
    c0, t0 = redis_cpu_s(rclient), time.perf_counter()
    time.sleep(seconds)
    wall = time.perf_counter() - t0
    return {
        "seconds": round(wall, 2),
        "cpu_s_per_s": round((redis_cpu_s(rclient) - c0) / wall, 5),
        "commands_per_s": commands_per(rclient, wall),
    }


def script_names() -> dict[str, str]:
    """sha1 -> name of every Lua script the fleet code registers, to read MONITOR's EVALSHA."""
    import hashlib
    import importlib

    names: dict[str, str] = {}
    for module in (
        "cache_service.backends.redis_store",
        "cache_service.quota.redis_scripts",
        "cache_service.quota.redis_limits",
        "cache_service.proxy.fleet_flight",
        "cache_service.fleet",
        "cache_service.cache.feedback_feed",
    ):
        with contextlib.suppress(ImportError):
            mod = importlib.import_module(module)
            for attr, value in vars(mod).items():
                if isinstance(value, str) and "redis.call" in value:
                    sha = hashlib.sha1(value.encode()).hexdigest()
                    names[sha] = f"{module.rsplit('.', 1)[1]}.{attr}"
    return names


def trace(
    server: RedisServer, client: httpx.Client, url: str, bodies: dict[str, dict[str, Any]]
) -> dict[str, list[str]]:
    """The Redis commands each request sends (MONITOR), background ones left out: blocking
    reads, heartbeats and stats publication of the idle replicas."""
    import threading

    names = script_names()
    out: dict[str, list[str]] = {}
    mon_client = redis.Redis(port=server.port)
    with mon_client.monitor() as monitor:  # type: ignore[no-untyped-call]  # redis-py leaves it unannotated
        seen: list[str] = []
        stop = threading.Event()

        def listen() -> None:
            for cmd in monitor.listen():
                if stop.is_set():
                    return
                seen.append(cmd["command"])

        thread = threading.Thread(target=listen, daemon=True)
        thread.start()
        time.sleep(0.3)
        for kind, body in bodies.items():
            seen.clear()
            time.sleep(0.05)
            seen.clear()
            post(client, url, body)
            time.sleep(0.2)
            rows = []
            for cmd in list(seen):
                words = cmd.split()
                if not words or words[0].upper() in ("XREAD", "XINFO", "PING", "INFO"):
                    continue
                if words[0].upper() == "EVALSHA" and len(words) > 1:
                    words[1] = names.get(words[1], words[1][:8])
                rows.append(" ".join(w[:40] for w in words[:5]))
            out[kind] = rows
        stop.set()
        with contextlib.suppress(Exception):
            redis.Redis(port=server.port).ping()
    mon_client.close()
    return out


def request_stages(log_path: Path) -> dict[str, dict[str, float]]:
    """Median of each stage (and of the whole request) per outcome, from the JSON log."""
    per: dict[str, dict[str, list[float]]] = {}
    for line in log_path.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            rec = json.loads(line)
            if not isinstance(rec, dict) or rec.get("event") != "request":
                continue
            row = per.setdefault(str(rec.get("outcome")), {})
            row.setdefault("total", []).append(float(rec["ms"]))
            for stage, ms in (rec.get("stages_ms") or {}).items():
                row.setdefault(stage, []).append(float(ms))
    return {
        outcome: {k: round(statistics.median(v), 3) for k, v in row.items()}
        | {"n": len(row["total"])}
        for outcome, row in per.items()
    }


def copy_to_redis(data_dir: Path, url: str) -> int:
    settings = load_settings(data_dir=data_dir)
    disk = DiskCacheStore(settings.store_dir, settings.store_size_limit_bytes)
    shared = RedisEntryStore.from_url(url, origin="prefill")
    try:
        n = 0
        for e in disk.iter_entries():
            shared.put(e)
            n += 1
        return n
    finally:
        disk.close()
        shared.close()


def http_section(
    args: argparse.Namespace, workdir: Path, server: RedisServer, procs: Procs
) -> dict[str, Any]:
    real_prompts = [orig for orig, _ in PAIRS] + extra_real_prompts()
    t = time.perf_counter()
    vectors = embed_real(real_prompts)
    print(f"embedded {len(real_prompts)} real prompts in {time.perf_counter() - t:.1f} s")
    dir_e, dir_r, dir_b = workdir / "embedded", workdir / "redis-a", workdir / "redis-b"
    ids, fill_s = prefill(dir_e, args.size, real_prompts, vectors, seed=11)
    copied = copy_to_redis(dir_e, server.url)
    print(f"prefilled {args.size} entries ({fill_s:.1f} s), {copied} copied to Redis")

    _, sim_url = start_simulator(procs, workdir)
    ns = argparse.Namespace(log_level="INFO", sweep_interval=3600.0)
    side_e = start_sidecar(dir_e, ns, procs, sim_url, workdir / "embedded.log")
    with env(CACHE_REDIS_URL=server.url, CACHE_REPLICA_ID="replica-a"):
        side_r = start_sidecar(dir_r, ns, procs, sim_url, workdir / "redis-a.log")
    with env(CACHE_REDIS_URL=server.url, CACHE_REPLICA_ID="replica-b"):
        side_b = start_sidecar(dir_b, ns, procs, sim_url, workdir / "redis-b.log")
    ce, cr, cb, cd = make_client(), make_client(), make_client(), make_client()
    rclient = redis.Redis.from_url(server.url)
    try:
        ready = {
            name: wait_vectors(c, s.base, args.size)
            for name, c, s in (("embedded", ce, side_e), ("redis", cr, side_r), ("b", cb, side_b))
        }
        backends = {
            n: server_backend(s.log_path)
            for n, s in (("embedded", side_e), ("redis", side_r), ("b", side_b))
        }
        print(f"sidecars ready: vectors {ready}, embedders {backends}")
        sides = {
            "embedded": (ce, f"{side_e.base}/v1/chat/completions"),
            "redis": (cr, f"{side_r.base}/v1/chat/completions"),
        }
        pids = {"embedded": side_e.proc.pid, "redis": side_r.proc.pid}
        n = args.requests

        def match_is(want: str, entry_of: dict[str, str] | None = None) -> Any:
            def accept(name: str, resp: httpx.Response) -> str | None:
                got = resp.headers.get("x-cache-match") or resp.headers.get("x-cache", "?")
                if got != want:
                    return f"{got}:{resp.headers.get('x-cache-rejected-by')}"
                if entry_of is not None:
                    para = json.loads(resp.request.content)["messages"][1]["content"]
                    if resp.headers.get("x-cache-entry") != entry_of[para]:
                        return "wrong_entry"
                return None

            return accept

        def miss(name: str, resp: httpx.Response) -> str | None:
            if name == "direct":
                return None
            if resp.headers.get("x-cache") != "MISS":
                return str(resp.headers.get("x-cache"))
            return None if resp.headers.get("x-cache-stored") == "true" else "not_stored"

        exact_body = chat_body(PAIRS[0][0])
        # Warm-up: connections, scripts, the embedder's first calls.
        interleaved(sides, [exact_body] * 20, match_is("exact"), rclient, pids)
        entry_of = {para: ids[orig] for orig, para in PAIRS}
        semantic_bodies = [chat_body(PAIRS[i % len(PAIRS)][1]) for i in range(n)]
        interleaved(sides, semantic_bodies[:20], match_is("semantic"), rclient, pids)
        background = redis_background(rclient, 5.0)
        bg = background["cpu_s_per_s"]
        print("measuring exact, semantic, miss (interleaved)...", flush=True)
        out: dict[str, Any] = {
            "entries": args.size,
            "embedders": backends,
            "prefill_s": round(fill_s, 1),
            "redis_background": background,
        }
        out["exact"] = interleaved(sides, [exact_body] * n, match_is("exact"), rclient, pids, bg)
        out["semantic"] = interleaved(
            sides, semantic_bodies, match_is("semantic", entry_of), rclient, pids, bg
        )
        prompts = miss_prompts(n, "fleet", random.Random(7))
        out["miss"] = interleaved(
            {**sides, "direct": (cd, f"{sim_url}/chat/completions")},
            [chat_body(p) for p in prompts],
            miss,
            rclient,
            pids,
            bg,
        )
        try:
            out["redis_commands_traced"] = trace(
                server,
                cr,
                sides["redis"][1],
                {
                    "exact": exact_body,
                    "semantic": semantic_bodies[0],
                    "miss": chat_body(miss_prompts(1, "trace", random.Random(9))[0]),
                },
            )
        except Exception as exc:  # a diagnostic: the figures stand without it
            print(f"MONITOR trace failed: {exc!r}")
        d = out["miss"]["direct"]
        for mode in ("embedded", "redis"):
            m = out["miss"][mode]
            m["added_p50_ms"] = rnd(m["p50_ms"] - d["p50_ms"])
            m["added_p99_ms"] = rnd(m["p99_ms"] - d["p99_ms"])
        out["stages_ms"] = {
            "embedded": request_stages(side_e.log_path),
            "redis": request_stages(side_r.log_path),
        }
        print(json.dumps({k: out[k] for k in ("exact", "semantic", "miss")}, indent=1))
        out["propagation"] = propagation(args, cr, side_r.base, cb, side_b.base)
        return out
    finally:
        for c in (ce, cr, cb, cd):
            c.close()
        rclient.close()
        procs.close()


# ---------------------------------------------------------------- 3. propagation over HTTP


def propagation(
    args: argparse.Namespace, ca: httpx.Client, base_a: str, cb: httpx.Client, base_b: str
) -> dict[str, Any]:
    url_a, url_b = f"{base_a}/v1/chat/completions", f"{base_b}/v1/chat/completions"
    good: list[tuple[str, str]] = []
    for k, (orig, para) in enumerate(PAIRS):  # which pairs hit within one replica
        system = f"{SYSTEM_PROMPT} (pair check {k})"
        post(ca, url_a, body_with(system, orig))
        _, r = post(ca, url_a, body_with(system, para))
        if r.headers.get("x-cache-match") == "semantic":
            good.append((orig, para))
    print(f"{len(good)}/{len(PAIRS)} paraphrase pairs hit semantically within replica A")
    exact_ms: list[float] = []
    exact_polls: list[int] = []
    index_ms: list[float] = []
    semantic_ms: list[float] = []
    stats_polls: list[int] = []
    failures: dict[str, int] = {}
    load0 = load1()
    for k in range(args.trials * 2):
        orig, para = good[k % len(good)]
        system = f"{SYSTEM_PROMPT} (propagation trial {k})"
        if k % 2 == 0:  # exact: ask B the very request until it is an exact hit
            _, r = post(ca, url_a, body_with(system, orig))
            t0 = time.perf_counter()
            assert r.headers.get("x-cache") == "MISS", r.headers
            for polls in range(1, 500):
                _, r = post(cb, url_b, body_with(system, orig))
                if r.headers.get("x-cache-match") == "exact":
                    exact_ms.append((time.perf_counter() - t0) * 1000)
                    exact_polls.append(polls)
                    break
            else:
                failures["exact"] = failures.get("exact", 0) + 1
            continue
        before = int(stats(cb, base_b)["cache"]["vectors"])
        _, r = post(ca, url_a, body_with(system, orig))
        t0 = time.perf_counter()
        assert r.headers.get("x-cache") == "MISS", r.headers
        deadline = t0 + 5
        polls = 0
        while time.perf_counter() < deadline:
            polls += 1
            if int(stats(cb, base_b)["cache"]["vectors"]) > before:
                index_ms.append((time.perf_counter() - t0) * 1000)
                stats_polls.append(polls)
                break
        else:
            failures["index"] = failures.get("index", 0) + 1
            continue
        _, r = post(cb, url_b, body_with(system, para))
        if r.headers.get("x-cache-match") == "semantic":
            semantic_ms.append((time.perf_counter() - t0) * 1000)
        else:
            got = f"{r.headers.get('x-cache')}:{r.headers.get('x-cache-rejected-by')}"
            failures[got] = failures.get(got, 0) + 1

    def pm(values: list[float]) -> dict[str, Any]:
        s = summary(values)
        return {"n": s["n"], "p50_ms": s["p50_ms"], "max_ms": s["max_ms"]}

    return {
        "pairs_hitting_in_one_replica": len(good),
        "exact_hit_on_b": pm(exact_ms) | {"polls_max": max(exact_polls, default=None)},
        "vector_in_b_index": pm(index_ms) | {"stats_polls_max": max(stats_polls, default=None)},
        "semantic_hit_on_b": pm(semantic_ms),
        "failures": failures,
        "loadavg_1m": [load0, load1()],
    }


# ------------------------------------------------------------------------ 2. the ledger


async def ledger_round_trips(url: str, n: int) -> dict[str, Any]:
    client = redis.asyncio.Redis.from_url(url)
    ledger = RedisLedger(client, prefix="bench-ledger", replica_id="bench")
    try:
        for scope in SCOPES:
            await ledger.configure(*scope, NEVER_DENY)
        for _ in range(200):  # warm-up: scripts loaded, connection open
            held = await ledger.reserve(SCOPES, 500, 0.001)
            assert isinstance(held, Held), held
            await ledger.settle(held, 420, 0.0008)
        reserve: list[float] = []
        settle: list[float] = []
        load0 = load1()
        await client.config_resetstat()
        sync = redis.Redis.from_url(url)
        c0 = redis_cpu_s(sync)
        for _ in range(n):
            t0 = time.perf_counter()
            held = await ledger.reserve(SCOPES, 500, 0.001)
            t1 = time.perf_counter()
            assert isinstance(held, Held), held
            await ledger.settle(held, 420, 0.0008)
            t2 = time.perf_counter()
            reserve.append((t1 - t0) * 1000)
            settle.append((t2 - t1) * 1000)
        cpu = redis_cpu_s(sync) - c0
        sync.close()
        evalsha = (await client.info("commandstats")).get("cmdstat_evalsha", {})
        return {
            "scopes": len(SCOPES),
            "reserve": summary(reserve),
            "settle": summary(settle),
            "redis_cpu_us_per_script_call": evalsha.get("usec_per_call"),
            "redis_cpu_ms_per_reserve_settle": rnd(cpu * 1000 / n, 3),
            "loadavg_1m": [load0, load1()],
        }
    finally:
        await ledger.close()


# -------------------------------------------------------------- 5. admissions per second


def admit_worker(url: str, index: int, tasks: int, start_at: float, seconds: float, q: Any) -> None:
    async def run() -> int:
        client = redis.asyncio.Redis.from_url(url, max_connections=tasks + 2)
        ledger = RedisLedger(client, prefix="bench-admit", replica_id=f"admit-{index}")
        count = 0
        try:
            for _ in range(20):  # warm-up
                held = await ledger.reserve(SCOPES, 500, 0.001)
                assert isinstance(held, Held), held
                await ledger.settle(held, 420, 0.0008)
            await asyncio.sleep(max(0.0, start_at - time.time()))
            stop = start_at + seconds

            async def one() -> None:
                nonlocal count
                while time.time() < stop:
                    held = await ledger.reserve(SCOPES, 500, 0.001)
                    assert isinstance(held, Held), held
                    await ledger.settle(held, 420, 0.0008)
                    count += 1

            await asyncio.gather(*(one() for _ in range(tasks)))
            return count
        finally:
            await ledger.close()

    q.put(asyncio.run(run()))


def admissions(url: str, processes: int, tasks: int, seconds: float) -> dict[str, Any]:
    async def configure() -> None:
        ledger = RedisLedger(
            redis.asyncio.Redis.from_url(url), prefix="bench-admit", replica_id="cfg"
        )
        try:
            for scope in SCOPES:
                await ledger.configure(*scope, NEVER_DENY)
        finally:
            await ledger.close()

    asyncio.run(configure())
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    start_at = time.time() + 8  # spawn + imports on 2 loaded cores
    workers = [
        ctx.Process(target=admit_worker, args=(url, i, tasks, start_at, seconds, q))
        for i in range(processes)
    ]
    for w in workers:
        w.start()
    client = redis.Redis.from_url(url)
    time.sleep(max(0.0, start_at - time.time()))
    load0, c0, t0 = load1(), redis_cpu_s(client), time.time()
    time.sleep(seconds)
    cpu, wall = redis_cpu_s(client) - c0, time.time() - t0
    counts = [q.get(timeout=120) for _ in workers]
    for w in workers:
        w.join(30)
    client.close()
    total = sum(counts)
    return {
        "processes": processes,
        "tasks_per_process": tasks,
        "seconds": seconds,
        "admissions": total,
        "admissions_per_s": round(total / seconds, 1),
        "redis_cpu_s": round(cpu, 3),
        "redis_cpu_share_of_one_core": round(cpu / wall, 3),
        "redis_cpu_us_per_admission": rnd(cpu * 1e6 / total, 1) if total else None,
        "loadavg_1m": [load0, load1()],
    }


# --------------------------------------------------------------- 4. replay at 100k entries


def fill(url: str, prefix: str, n: int) -> float:
    """n entries (random unit vectors, ~1 KB answers) through RedisEntryStore.put's own
    script and arguments, sent 1000 to a pipeline."""
    client = redis.Redis.from_url(url)
    maker = SemanticCache(
        RedisEntryStore(client, prefix=prefix, origin="fill"),
        FaissIndex(DIM),
        SystemClock(),
        AcceptConfig(),
    )
    rng = np.random.default_rng(3)
    t = time.perf_counter()
    for start in range(0, n, 1000):
        pipe = client.pipeline(transaction=False)
        store = RedisEntryStore(pipe, prefix=prefix, origin="fill")
        for i in range(start, min(n, start + 1000)):
            store.put(random_entry(maker, i, rng))
        pipe.execute()
    client.close()
    return time.perf_counter() - t


def replay_worker(url: str, prefix: str, q: Any) -> None:
    rss0 = rss_mib(os.getpid())
    store = RedisEntryStore.from_url(url, prefix=prefix, origin="replayer", timeout_s=30)
    cache = SemanticCache(store, FaissIndex(DIM), SystemClock(), AcceptConfig())
    feed = IndexFeed(cache, store)
    load0 = load1()
    t = time.perf_counter()
    loaded = feed.bootstrap()
    seconds = time.perf_counter() - t
    q.put(
        {
            "loaded": loaded,
            "bootstrap_s": round(seconds, 2),
            "rss_before_mib": rss0,
            "rss_after_mib": rss_mib(os.getpid()),
            "vectors": len(cache.index),
            "loadavg_1m": [load0, load1()],
        }
    )
    store.close()


def replay(url: str, n: int) -> dict[str, Any]:
    client = redis.Redis.from_url(url)
    prefix = "bench-replay"
    mem0 = int(redis_info(client, "memory")["used_memory"])
    load0 = load1()
    fill_s = fill(url, prefix, n)
    mem1 = int(redis_info(client, "memory")["used_memory"])
    stream = cast("int | None", client.memory_usage("{" + prefix + "}:events", samples=0)) or 0
    length = client.xlen("{" + prefix + "}:events")
    print(f"filled {n} entries in {fill_s:.1f} s; used_memory +{(mem1 - mem0) / 1e6:.0f} MB")
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    worker = ctx.Process(target=replay_worker, args=(url, prefix, q))
    worker.start()
    out: dict[str, Any] = q.get(timeout=600)
    worker.join(30)
    client.close()
    rss_delta = out["rss_after_mib"] - out["rss_before_mib"]
    return {
        "entries": n,
        "fill_s": round(fill_s, 1),
        "fill_loadavg_1m": [load0, load1()],
        "used_memory_delta_mb": round((mem1 - mem0) / 1e6, 1),
        "used_memory_per_entry_bytes": round((mem1 - mem0) / n),
        "of_which_event_stream_bytes_per_entry": round(stream / n),
        "event_stream_length": length,
        **out,
        "replica_rss_delta_mib": round(rss_delta, 1),
        "replica_rss_per_entry_bytes": round(rss_delta * 1024 * 1024 / n),
    }


# ------------------------------------------------------------------------------ report


def fmt(x: Any, nd: int = 2) -> str:
    return "–" if x is None else f"{x:.{nd}f}"


def markdown(r: dict[str, Any]) -> str:
    h = r["http"]
    lines = [
        f"Fleet mode benchmark, {r['started_utc']}, {r['host']['cpus']} cores "
        f"(load average 1 min before: {r['host']['loadavg_before'][0]}). {r['note']}",
        "",
        f"**1. Over HTTP at {h['entries']} entries** ({r['params']['requests']} requests per "
        "kind and mode, embedded and Redis sidecars up at once and asked alternately):",
        "",
        "| request | embedded p50 / p99 ms | Redis p50 / p99 ms | Redis − embedded p50 / p99 ms "
        "| sidecar CPU ms/req emb / Redis | Redis CPU ms/req (net of idle) "
        "| load 1m (start → end) |",
        "|---|---|---|---|---|---|---|",
    ]
    for kind in ("exact", "semantic", "miss"):
        k = h[kind]
        e, rd = k["embedded"], k["redis"]
        extra = ""
        if kind == "miss":
            extra = (
                f" (added over the upstream: {fmt(e['added_p50_ms'])} / {fmt(e['added_p99_ms'])}"
                f" vs {fmt(rd['added_p50_ms'])} / {fmt(rd['added_p99_ms'])})"
            )
        lines.append(
            f"| {kind}{extra} | {fmt(e['p50_ms'])} / {fmt(e['p99_ms'])} "
            f"| {fmt(rd['p50_ms'])} / {fmt(rd['p99_ms'])} "
            f"| {fmt(rd['p50_ms'] - e['p50_ms'])} / {fmt(rd['p99_ms'] - e['p99_ms'])} "
            f"| {fmt(e['sidecar_cpu_ms_per_req'])} / {fmt(rd['sidecar_cpu_ms_per_req'])} "
            f"| {fmt(k.get('redis_cpu_ms_per_req_net'), 3)} "
            f"| {k['loadavg_1m'][0]} → {k['loadavg_1m'][1]} |"
        )
    bg = h["redis_background"]
    idle = ", ".join(f"{c} {v['calls']}/s" for c, v in list(bg["commands_per_s"].items())[:4])
    lines += [
        "",
        f"Redis's CPU while the three replicas idle: {bg['cpu_s_per_s'] * 1000:.2f} ms/s "
        f"({idle}). Redis commands per request in Redis mode (INFO commandstats, both replicas' "
        "background included; calls, CPU µs), busiest first:",
        "",
    ]
    for kind in ("exact", "semantic", "miss"):
        top = list(h[kind]["redis_commands_per_req"].items())[:6]
        cmds = ", ".join(f"{c} {v['calls']} × = {v['cpu_us']} µs" for c, v in top)
        lines.append(f"- {kind}: {cmds}")
    for kind, cmds in h.get("redis_commands_traced", {}).items():
        calls = [c.split()[1] if c.startswith("EVALSHA") else c.split()[0] for c in cmds]
        scripts = [c for c in calls if "." in c]
        lines.append(
            f"- {kind}, one request under MONITOR (the idle replicas' feed reads and "
            f"heartbeats may fall inside): {len(cmds)} commands, scripts "
            f"{', '.join(scripts) or 'none'}"
        )
    lines += ["", "Median stage times from the sidecars' request logs (ms):", ""]
    lines += ["| mode | outcome | n | total | stages |", "|---|---|---|---|---|"]
    for mode, per in h["stages_ms"].items():
        for outcome, row in sorted(per.items()):
            st = ", ".join(f"{k} {v}" for k, v in row.items() if k not in ("n", "total"))
            lines.append(f"| {mode} | {outcome} | {row['n']} | {row['total']} | {st} |")
    p = h["propagation"]
    lines += [
        "",
        f"**3. Propagation A → B over HTTP** ({p['pairs_hitting_in_one_replica']} of "
        f"{len(PAIRS)} paraphrase pairs hit within one replica; load 1m "
        f"{p['loadavg_1m'][0]} → {p['loadavg_1m'][1]}), from A's miss response:",
        "",
        "| what | n | p50 ms | max ms |",
        "|---|---|---|---|",
    ]
    for key, label in (
        ("exact_hit_on_b", "exact hit on B (response received)"),
        ("vector_in_b_index", "vector in B's index (/v1/cache/stats)"),
        ("semantic_hit_on_b", "paraphrase answered semantic by B (response received)"),
    ):
        s = p[key]
        lines.append(f"| {label} | {s['n']} | {fmt(s['p50_ms'])} | {fmt(s['max_ms'])} |")
    if p["failures"]:
        lines.append(f"\nFailures: {p['failures']}")
    ledger = r["ledger"]
    lines += [
        "",
        f"**2. RedisLedger round trips** ({ledger['scopes']} scopes, rpm + tpm + daily budget, "
        f"{ledger['reserve']['n']} each; load 1m {ledger['loadavg_1m'][0]} → "
        f"{ledger['loadavg_1m'][1]}): reserve p50 {fmt(ledger['reserve']['p50_ms'], 3)} / p99 "
        f"{fmt(ledger['reserve']['p99_ms'], 3)} ms; settle p50 "
        f"{fmt(ledger['settle']['p50_ms'], 3)} / p99 {fmt(ledger['settle']['p99_ms'], 3)} ms; "
        f"Redis CPU {ledger['redis_cpu_us_per_script_call']} µs per script call.",
    ]
    rp = r["replay"]
    lines += [
        "",
        f"**4. Replay at {rp['entries']} entries** (load 1m {rp['loadavg_1m'][0]} → "
        f"{rp['loadavg_1m'][1]}): IndexFeed.bootstrap {rp['bootstrap_s']} s "
        f"({rp['loaded']} loaded); Redis used_memory +{rp['used_memory_delta_mb']} MB = "
        f"{rp['used_memory_per_entry_bytes']} B per entry (event stream "
        f"{rp['of_which_event_stream_bytes_per_entry']} B of it, {rp['event_stream_length']} "
        f"events); replica RSS +{rp['replica_rss_delta_mib']} MiB = "
        f"{rp['replica_rss_per_entry_bytes']} B per entry. Fill (pipelined puts): "
        f"{rp['fill_s']} s.",
    ]
    a = r["admissions"]
    lines += [
        "",
        f"**5. Admissions one Redis sustains** ({a['processes']} processes × "
        f"{a['tasks_per_process']} tasks, reserve + settle over 3 scopes, {a['seconds']} s; "
        f"load 1m {a['loadavg_1m'][0]} → {a['loadavg_1m'][1]}): {a['admissions_per_s']} "
        f"admissions/s; Redis CPU {a['redis_cpu_share_of_one_core']} of one core, "
        f"{a['redis_cpu_us_per_admission']} µs per admission.",
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=1000)
    p.add_argument("--requests", type=int, default=300)
    p.add_argument("--trials", type=int, default=30)
    p.add_argument("--ledger-n", type=int, default=2000)
    p.add_argument("--entries", type=int, default=100_000)
    p.add_argument("--processes", type=int, default=4)
    p.add_argument("--tasks", type=int, default=16)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--max-wait-pytest", type=float, default=1800)
    p.add_argument("--smoke", action="store_true", help="a trial run: don't wait for pytest")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/fleet.json")
    p.add_argument("--render", type=Path, help="only re-render the markdown from a JSON result")
    args = p.parse_args()
    if args.render:
        args.render.with_suffix(".md").write_text(markdown(json.loads(args.render.read_text())))
        return 0
    waited = time.perf_counter()
    if not args.smoke and not wait_no_pytest(args.max_wait_pytest):
        print("pytest still running: not measuring", file=sys.stderr)
        return 2
    started = time.perf_counter()
    report: dict[str, Any] = {
        "note": (
            "A shared 2-core box: client, sidecars, upstream simulator and Redis share the "
            "2 cores; the background training job was paused (SIGSTOP) for the run."
        ),
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "redis_server": subprocess.run(
                ["redis-server", "--version"], capture_output=True, text=True
            ).stdout.strip(),
        },
        "waited_for_pytest_s": round(time.perf_counter() - waited, 1),
        "pytest_running_at_start": bool(pgrep(PYTEST)),
        "params": {k: v for k, v in vars(args).items() if k not in ("out", "render")}
        | {"model": MODEL},
    }
    with training_paused() as paused, tempfile.TemporaryDirectory(prefix="fleet-bench-") as tmp:
        report["host"]["paused_training_pids"] = paused
        report["host"]["loadavg_before"] = [round(x, 2) for x in os.getloadavg()]
        workdir = Path(tmp)
        server = RedisServer(workdir / "redis")
        server.start()
        procs = Procs()
        try:
            report["http"] = http_section(args, workdir, server, procs)
            print("ledger round trips...", flush=True)
            report["ledger"] = asyncio.run(ledger_round_trips(server.url, args.ledger_n))
            print(json.dumps(report["ledger"]))
            print("admissions per second...", flush=True)
            report["admissions"] = admissions(server.url, args.processes, args.tasks, args.seconds)
            print(json.dumps(report["admissions"]))
            print(f"replay at {args.entries} entries...", flush=True)
            report["replay"] = replay(server.url, args.entries)
            print(json.dumps(report["replay"]))
        finally:
            procs.close()
            server.stop()
        report["host"]["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
        report["pytest_running_at_end"] = bool(pgrep(PYTEST))
    report["total_s"] = round(time.perf_counter() - started, 1)
    write_results(args.out, report, markdown(report))
    print(f"wrote {args.out} and its .md in {report['total_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
