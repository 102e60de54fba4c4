"""Resident memory of a `serve` process around large prompts: does it come back down?

Starts the simulated upstream and a real `python -m cache_service serve` (real model, store,
index) as subprocesses, then reads the sidecar's RSS (/proc/PID/status, Linux only):

1. after start and one small warm-up request,
2. after ten distinct prompts of ~4 MB each (just under the default max_body_bytes),
3. after a short idle,

once per variant (the glibc allocator settings the process starts with). Prompts that long
are matched exactly only (semantic_max_chars), so this measures the body's path: reading,
parsing, token counting, forwarding, storing, recording.

    .venv/bin/python benchmarks/memory.py [--prompts 10] [--mb 4] [--idle 5]
        [--variants default,arena2] [--out benchmarks/results/memory.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import socket
import string
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {
    "default": {},
    "arena2": {"MALLOC_ARENA_MAX": "2"},
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def wait_http(url: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1).status_code == 200:
                return
        time.sleep(0.2)
    raise TimeoutError(url)


@contextlib.contextmanager
def started(args: list[str], ready: str, env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "cache_service", *args],
        cwd=ROOT,
        env={**os.environ, "HF_HUB_OFFLINE": "1", **env},
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_http(ready)
        yield proc
    finally:
        proc.terminate()
        proc.wait(30)


def prompt(mb: float, seed: int) -> str:
    rng = random.Random(seed)
    words = ["".join(rng.choices(string.ascii_lowercase, k=rng.randint(2, 9))) for _ in range(500)]
    text: list[str] = []
    size, target = 0, int(mb * 1024 * 1024) - 2048  # room for the JSON around it
    while size < target:
        w = rng.choice(words)
        text.append(w)
        size += len(w) + 1
    return " ".join(text)[:target]


def run_variant(
    name: str, env: dict[str, str], n: int, mb: float, idle_s: float
) -> dict[str, float]:
    sim_port, port = free_port(), free_port()
    with (
        tempfile.TemporaryDirectory() as data,
        started(
            ["simulate-upstream", "--port", str(sim_port)],
            f"http://127.0.0.1:{sim_port}/healthz",
            {},
        ),
        started(
            [
                "serve",
                "--port",
                str(port),
                "--upstream",
                f"http://127.0.0.1:{sim_port}/v1",
                "--data-dir",
                data,
                "--log-level",
                "WARNING",
            ],
            f"http://127.0.0.1:{port}/readyz",
            env,
        ) as proc,
        httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as client,
    ):

        def chat(content: str) -> None:
            body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": content}]}
            r = client.post("/v1/chat/completions", json=body)
            r.raise_for_status()

        chat("warm-up: a small prompt")
        time.sleep(1)
        out = {"start_mb": rss_mb(proc.pid)}
        peak = 0.0
        started_at = time.monotonic()
        for i in range(n):
            chat(prompt(mb, seed=i))
            peak = max(peak, rss_mb(proc.pid))
        out["requests_s"] = time.monotonic() - started_at
        out["after_mb"] = rss_mb(proc.pid)
        out["peak_sampled_mb"] = max(peak, out["after_mb"])
        time.sleep(idle_s)
        out["idle_mb"] = rss_mb(proc.pid)
        print(name, json.dumps({k: round(v, 1) for k, v in out.items()}), flush=True)
        return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--prompts", type=int, default=10)
    p.add_argument("--mb", type=float, default=4.0)
    p.add_argument("--idle", type=float, default=5.0)
    p.add_argument("--variants", default="default,arena2")
    p.add_argument("--out", type=Path)
    a = p.parse_args()
    results = {
        "load_average_start": os.getloadavg()[0],
        "variants": {
            v: run_variant(v, VARIANTS[v], a.prompts, a.mb, a.idle) for v in a.variants.split(",")
        },
        "load_average_end": os.getloadavg()[0],
    }
    print(json.dumps(results, indent=2))
    if a.out:
        a.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
