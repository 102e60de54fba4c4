"""Interleaved A/B of sidecar builds beside the trivial HTTP floor: exact and semantic hits,
and what a miss adds over calling the upstream directly.

Each side is a `serve` process from a source tree (a `git worktree` of another commit, or
this one) over a copy of one prefilled data dir, in front of one simulated upstream. Blocks
of requests (exact hits, semantic hits, then a quarter block of misses) go to each side in
turn, the order reversed every round, so a box that slows down mid-run slows every side
alike; a side's figure is the median of its blocks' p50s. The server's CPU per request
comes from /proc.

    git worktree add /tmp/base HEAD~1
    python -m benchmarks.ab --side base=/tmp/base --side new=. --out results/ab.json

Two sides may be one tree with different settings (`--env NAME:CACHE_KEY=VALUE`). Each round
also sends a block of semantic hits from `--clients` concurrent clients (hits/s and their
p50), where the event loop and the model thread compete for the GIL and the two cores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import types
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import latency as L


def _start_side(
    name: str,
    tree: Path,
    env: dict[str, str],
    data: Path,
    procs: L.Procs,
    sim_url: str,
    workdir: Path,
) -> Any:
    copy = workdir / f"data-{name}"
    shutil.copytree(data, copy)
    args = argparse.Namespace(sweep_interval=3600.0, log_level="INFO")
    log = workdir / f"{name}.log"
    # A lookup shed under the concurrent block's load goes upstream and its paraphrase is
    # stored as an exact entry, which later rounds would then hit exactly: a deadline no
    # block reaches keeps every round's semantic hits semantic.
    env = {"CACHE_EMBED_TIMEOUT_MS": "10000", **env}
    return L.start_sidecar(copy, args, procs, sim_url, log, cwd=tree.resolve(), env_extra=env)


def _start_floor(procs: L.Procs, workdir: Path) -> Any:
    port = L.free_port()
    log = workdir / "trivial.log"
    proc = procs.start(
        ["trivial", "--port", str(port)], log, dict(os.environ), module="benchmarks.gptcache_server"
    )
    L.wait_http(f"http://127.0.0.1:{port}/healthz", proc, 60, log)
    return types.SimpleNamespace(base=f"http://127.0.0.1:{port}", proc=proc)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--side", action="append", required=True, help="NAME=TREE")
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--block", type=int, default=400, help="requests per block")
    p.add_argument("--size", type=int, default=1000, help="entries prefilled")
    p.add_argument("--env", action="append", default=[], help="NAME:KEY=VALUE for one side")
    p.add_argument("--clients", type=int, default=32, help="clients of the concurrent block")
    p.add_argument("--out", type=Path)
    a = p.parse_args(argv)
    procs = L.Procs()
    workdir = Path(tempfile.mkdtemp(prefix="ab-"))
    try:
        _, sim_url = L.start_simulator(procs, workdir)
        upstream = sim_url + "/chat/completions"
        real = [o for o, _ in L.PAIRS] + L.extra_real_prompts()
        ids, _ = L.prefill(workdir / "data", a.size, real, L.embed_real(real), 7)
        sides: list[tuple[str, Any]] = [("floor", _start_floor(procs, workdir))]
        envs = _side_envs(a.env)
        for spec in a.side:
            name, _, tree = spec.partition("=")
            side = _start_side(
                name, Path(tree), envs.get(name, {}), workdir / "data", procs, sim_url, workdir
            )
            sides.append((name, side))
        queries = [para for orig, para in L.PAIRS if orig in ids]
        exact_body = L.chat_body(real[0])
        blocks: dict[str, dict[str, list[float]]] = {n: {} for n, _ in sides}
        with L.make_client() as c, L.make_client() as direct:
            for name, side in sides:  # warm each side up: the first requests load things
                url = side.base + "/v1/chat/completions"
                for _ in range(100):
                    L.post(c, url, exact_body)
                if name != "floor":
                    for q in queries[:50]:
                        L.post(c, url, L.chat_body(q))
            for r in range(a.rounds):
                for name, side in sides if r % 2 == 0 else sides[::-1]:
                    _block(c, name, side, exact_body, queries, a.block, blocks[name])
                    if name != "floor":
                        # The same prompts for every side (each stores in its own copy):
                        # a side's name in them would make its prompts longer or shorter.
                        misses = L.miss_prompts(a.block // 4, f"r{r}", random.Random(r))
                        _miss_block(c, direct, upstream, side, misses, blocks[name])
                        _concurrent_block(side, queries, a.block, a.clients, blocks[name])
        report = {
            "load_avg": os.getloadavg(),
            "commits": {spec.partition("=")[0]: _commit(spec.partition("=")[2]) for spec in a.side},
            "rounds": a.rounds,
            "block": a.block,
            "size": a.size,
            "clients": a.clients,
            "env": a.env,
            "sides": {
                name: {k: round(statistics.median(v), 3) for k, v in got.items()}
                | {"blocks": {k: [round(x, 3) for x in v] for k, v in got.items()}}
                for name, got in blocks.items()
            },
        }
        print(json.dumps(report, indent=1))
        if a.out is not None:
            a.out.write_text(json.dumps(report, indent=1) + "\n")
    finally:
        procs.close()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


def _side_envs(specs: Sequence[str]) -> dict[str, dict[str, str]]:
    """`NAME:KEY=VALUE` options as each side's extra environment."""
    envs: dict[str, dict[str, str]] = {}
    for spec in specs:
        name, _, assignment = spec.partition(":")
        key, sep, value = assignment.partition("=")
        if not (name and key and sep):
            raise SystemExit(f"--env wants NAME:KEY=VALUE, got {spec!r}")
        envs.setdefault(name, {})[key] = value
    return envs


def _commit(tree: str) -> str:
    """The tree's commit, with "+dirty" when it has changes not committed."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", tree, *args], capture_output=True, text=True, check=True
        ).stdout.strip()

    return git("rev-parse", "--short", "HEAD") + ("+dirty" if git("status", "--porcelain") else "")


def _block(
    c: Any,
    name: str,
    side: Any,
    exact_body: dict[str, Any],
    queries: list[str],
    n: int,
    out: dict[str, list[float]],
) -> None:
    url, pid = side.base + "/v1/chat/completions", side.proc.pid
    cpu = L.cpu_s(pid)
    lat = [L.post(c, url, exact_body)[0] for _ in range(n)]
    out.setdefault("exact_p50_ms", []).append(statistics.median(lat))
    out.setdefault("exact_server_cpu_ms", []).append((L.cpu_s(pid) - cpu) * 1000 / n)
    if name == "floor":
        return
    cpu, lat, sent = L.cpu_s(pid), [], 0
    while len(lat) < n // 2:
        ms, r = L.post(c, url, L.chat_body(queries[sent % len(queries)]))
        sent += 1
        if r.headers.get("x-cache-match") == "semantic":
            lat.append(ms)
    out.setdefault("semantic_p50_ms", []).append(statistics.median(lat))
    out.setdefault("semantic_server_cpu_ms", []).append((L.cpu_s(pid) - cpu) * 1000 / sent)


def _miss_block(
    c: Any, direct: Any, upstream: str, side: Any, prompts: list[str], out: dict[str, list[float]]
) -> None:
    """What a miss adds over calling the upstream directly, each prompt sent both ways in
    turn (latency.py's `run_miss`, as `compare.py` measures it)."""
    added = L.run_miss(direct, c, upstream, side.base + "/v1/chat/completions", prompts)
    if added["added"]["p50_ms"] is not None:
        out.setdefault("miss_added_p50_ms", []).append(added["added"]["p50_ms"])


def _concurrent_block(
    side: Any, queries: list[str], n: int, clients: int, out: dict[str, list[float]]
) -> None:
    """Semantic hits from `clients` clients at once (latency.py's `run_concurrent`, as
    `compare.py` measures hits/s): what a busy event loop costs the model thread."""
    bodies = [L.chat_body(queries[i % len(queries)]) for i in range(n)]
    got = asyncio.run(
        L.run_concurrent(side.base + "/v1/chat/completions", bodies, "semantic", clients)
    )
    hits = len(bodies) - got["not_wanted_match"]
    out.setdefault("concurrent_not_semantic", []).append(got["not_wanted_match"])
    out.setdefault(f"semantic_hits_per_s_{clients}", []).append(hits / got["timed_s"])
    if got["latency"]["p50_ms"] is not None:
        out.setdefault(f"semantic_p50_ms_{clients}", []).append(got["latency"]["p50_ms"])


if __name__ == "__main__":
    raise SystemExit(main())
