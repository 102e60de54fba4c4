"""Soak: a mixed load at a fixed rate for a fixed time against a real `serve` process (in
front of the simulated upstream process), reporting per window throughput, p50/p99 latency,
5xx answers, the sidecar's open file descriptors and resident memory.

The mix (per request, drawn with a fixed seed): exact repeats of a warm set, paraphrases of
it, never-seen prompts (misses, stored), streamed requests, and a few injected upstream
faults (queued in the simulator's `/_sim/faults`: a 500 storm outlasting the retries, a
dropped stream; whichever miss reaches the upstream next gets them). A designed answer to a
fault (the upstream's error relayed after retries: it carries `X-Upstream`; or the
sidecar's own 502/504 naming the upstream) is counted apart from an unexpected 5xx, which
must stay 0. Requests are sent open-loop: each at its scheduled time whatever
the previous ones did, so an overloaded sidecar shows as latency, not as a lower rate.

    .venv/bin/python benchmarks/soak.py [--rate 100] [--minutes 15] [--window-s 60]
        [--out benchmarks/results/soak.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.latency import PAIRS, ROOT, Procs, free_port, pct, rss_mib, wait_http

MIX = (("exact", 0.45), ("paraphrase", 0.2), ("miss", 0.2), ("stream", 0.13), ("fault", 0.02))
FAULTS = ("500", "drop")


def fds(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def body(prompt: str, *, stream: bool = False) -> dict[str, Any]:
    b: dict[str, Any] = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": prompt}],
    }
    if stream:
        b["stream"] = True
    return b


class Window:
    def __init__(self, start: float) -> None:
        self.start = start
        self.latencies: list[float] = []
        self.by_kind: dict[str, int] = {}
        self.unexpected_5xx = 0
        self.designed_errors = 0
        self.client_errors = 0
        self.samples: list[str] = []

    def row(self, pid: int, length_s: float) -> dict[str, Any]:
        n = len(self.latencies)
        return {
            "t_s": round(self.start, 1),
            "requests": n,
            "req_per_s": round(n / length_s, 1),
            "p50_ms": round(pct(self.latencies, 50) or 0, 2),
            "p99_ms": round(pct(self.latencies, 99) or 0, 2),
            "unexpected_5xx": self.unexpected_5xx,
            "designed_errors": self.designed_errors,
            "client_errors": self.client_errors,
            "unexpected_samples": self.samples,
            "fds": fds(pid),
            "rss_mib": rss_mib(pid),
            "loadavg_1m": round(os.getloadavg()[0], 2),
            "by_kind": dict(self.by_kind),
        }


def designed(r: httpx.Response) -> bool:
    """A 5xx the sidecar means: an upstream's error relayed, or its own upstream error."""
    if "x-upstream" in r.headers:
        return True
    try:
        code = r.json()["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return False
    return str(code).startswith("upstream")


async def one(
    client: httpx.AsyncClient,
    sim: httpx.AsyncClient,
    kind: str,
    i: int,
    rng: random.Random,
    window: Window,
    slots: asyncio.Semaphore,
) -> None:
    headers: dict[str, str] = {}
    original, paraphrase = PAIRS[rng.randrange(len(PAIRS))]
    if kind == "exact":
        payload = body(original)
    elif kind == "paraphrase":
        payload = body(paraphrase)
    elif kind == "miss":
        payload = body(f"soak question {i}: {original}")
    elif kind == "stream":
        payload = body(original if rng.random() < 0.5 else f"soak stream {i}", stream=True)
    else:
        fault = FAULTS[i % len(FAULTS)]
        storm = [fault] * 4 if fault == "500" else [fault]  # the call and its 3 retries
        await sim.post("/_sim/faults", json={"faults": storm})
        payload = body(f"soak fault {i}", stream=fault == "drop")
        headers["Cache-Control"] = "no-store"
    t0 = time.perf_counter()
    failure = ""
    try:
        async with slots:
            r = await client.post("/v1/chat/completions", json=payload, headers=headers)
    except httpx.HTTPError as e:
        r = None  # the connection itself failed: never designed
        failure = type(e).__name__
    window.latencies.append((time.perf_counter() - t0) * 1000)
    window.by_kind[kind] = window.by_kind.get(kind, 0) + 1
    if r is None or r.status_code >= 500:
        if r is not None and designed(r):
            window.designed_errors += 1
        else:
            window.unexpected_5xx += 1
            if len(window.samples) < 5:  # what they were, for the log and the README
                what = failure if r is None else f"{r.status_code} {r.text[:160]}"
                window.samples.append(f"{kind}: {what}")
    elif r.status_code >= 400:
        window.client_errors += 1


async def drive(
    base: str, sim_url: str, pid: int, rate: float, seconds: float, window_s: float
) -> list[Any]:
    rng = random.Random(7)
    kinds = [kind for kind, _ in MIX]
    weights = [weight for _, weight in MIX]
    # The driver must not be what melts: httpx's pool costs O(connections x queued) per
    # request, so a backlog inside it saturated the driver's own loop (100 % CPU) and its
    # latency read as the sidecar's. Requests queue on a semaphore instead (the wait still
    # counts: the clock starts before it), in front of a pool that never queues.
    concurrency = 32
    # Expire idle connections before the sidecar's keep-alive timeout (5 s) does: at equal
    # timeouts a request sent on a connection the server is closing fails with a ReadError
    # (one in ~30,000 in the soak of 2026-11-30), a race of the client's making.
    limits = httpx.Limits(
        max_connections=concurrency, max_keepalive_connections=concurrency, keepalive_expiry=4
    )
    slots = asyncio.Semaphore(concurrency)
    rows: list[dict[str, Any]] = []
    pending: set[asyncio.Task[None]] = set()
    async with (
        httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as client,
        httpx.AsyncClient(base_url=sim_url, timeout=10) as sim,
    ):
        # Warm the exact set so "exact" and "paraphrase" have something to hit.
        for original, _ in PAIRS:
            await client.post("/v1/chat/completions", json=body(original))
        rows.append({"t_s": 0.0, "fds": fds(pid), "rss_mib": rss_mib(pid), "note": "warm"})
        start = time.perf_counter()
        window = Window(0.0)
        i = 0
        while (now := time.perf_counter() - start) < seconds:
            # Always yield, even when behind schedule: the requests in flight run on this
            # same loop, and a driver that only creates tasks would stop sending them.
            await asyncio.sleep(max(0.0, i / rate - now))
            if time.perf_counter() - start - window.start >= window_s:
                rows.append(window.row(pid, window_s))
                print(json.dumps(rows[-1]), flush=True)
                window = Window(window.start + window_s)
            kind = rng.choices(kinds, weights)[0]
            task = asyncio.create_task(one(client, sim, kind, i, rng, window, slots))
            pending.add(task)
            task.add_done_callback(pending.discard)
            i += 1
        await asyncio.gather(*pending)
        rows.append(window.row(pid, max(1e-9, time.perf_counter() - start - window.start)))
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rate", type=float, default=100.0)
    p.add_argument("--minutes", type=float, default=15.0)
    p.add_argument("--window-s", type=float, default=60.0)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/soak.json")
    args = p.parse_args(argv)
    procs = Procs()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        try:
            sim_port, port = free_port(), free_port()
            env = {**os.environ, "HF_HUB_OFFLINE": "1"}
            sim = procs.start(
                ["simulate-upstream", "--port", str(sim_port), "--latency-ms", "0"],
                work / "sim.log",
                env,
            )
            wait_http(f"http://127.0.0.1:{sim_port}/healthz", sim, 60, work / "sim.log")
            sidecar_env = {
                **env,
                "CACHE_EMBEDDER_BACKEND": "onnx",
                "CACHE_MODEL_DIR": str(ROOT / "models"),
                "CACHE_BACKOFF_BASE_S": "0.01",
            }
            cmd = ["serve", "--port", str(port), "--data-dir", str(work / "data")]
            cmd += ["--upstream", f"http://127.0.0.1:{sim_port}/v1", "--log-level", "WARNING"]
            sidecar = procs.start(cmd, work / "sidecar.log", sidecar_env)
            base = f"http://127.0.0.1:{port}"
            wait_http(f"{base}/readyz", sidecar, 600, work / "sidecar.log")
            rows = asyncio.run(
                drive(
                    base,
                    f"http://127.0.0.1:{sim_port}",
                    sidecar.pid,
                    args.rate,
                    args.minutes * 60,
                    args.window_s,
                )
            )
        finally:
            procs.close()
    report = {
        "rate_per_s": args.rate,
        "minutes": args.minutes,
        "mix": dict(MIX),
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "windows": rows,
        "unexpected_5xx": sum(r.get("unexpected_5xx", 0) for r in rows),
    }
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}: {report['unexpected_5xx']} unexpected 5xx")
    return 0 if report["unexpected_5xx"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
