"""Three `serve` processes on one real Redis, in front of one simulated upstream that counts
its calls: quota, budgets, the cache and single flight hold for the fleet as a whole, a
replica killed mid-call has its holds reaped, and a Redis that goes away costs no 5xx and
no acknowledged entry."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.test_openai_sdk import ROOT, Upstream, free_port, upstream, wait_http
from tests.redis_server import RedisServer, running_redis

pytestmark = pytest.mark.e2e
__all__ = ["upstream"]  # the module-scoped simulated upstream fixture

PROJECTS = [
    {"name": "burst", "rpm": 10},
    # gpt-4o-mini with max_tokens 1000: each request holds about $0.0006 until it settles
    # (the simulator answers in a few dozen tokens); 3 ledgers would admit 3x this.
    {"name": "budget", "daily_budget_usd": 0.003},
]


@dataclass
class Replica:
    proc: subprocess.Popen[bytes]
    url: str

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_replicas(
    n: int, upstream: Upstream, redis_url: str, data: Path, **env: str
) -> list[Replica]:
    """`n` sidecars started at once (each loads its model for seconds), ready when returned."""
    replicas = []
    for i in range(n):
        port = free_port()
        proc = subprocess.Popen(
            [
                sys.executable, "-m", "cache_service", "serve",
                "--port", str(port),
                "--upstream", f"{upstream.url}/v1",
                "--data-dir", str(data / f"replica{i}"),
                "--redis-url", redis_url,
            ],
            cwd=ROOT,
            env={
                **os.environ,
                "CACHE_REPLICA_ID": f"r{i}-{port}",
                "CACHE_BACKOFF_BASE_S": "0.01",
                "CACHE_MAX_RETRIES": "0",
                "CACHE_ON_LIMIT": "reject",
                "CACHE_PROJECTS": json.dumps(PROJECTS),
                "CACHE_REDIS_LEASE_S": "2",
                **env,
            },
        )  # fmt: skip
        replicas.append(Replica(proc, f"http://127.0.0.1:{port}"))
    try:
        for r in replicas:
            wait_http(f"{r.url}/readyz", proc=r.proc)
    except BaseException:
        for r in replicas:
            r.kill()
        raise
    return replicas


@pytest.fixture(scope="module")
def redis_srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A Redis of this module's own: some tests stop and restart it."""
    with running_redis(tmp_path_factory.mktemp("fleet-redis")) as server:
        yield server


@pytest.fixture(scope="module")
def fleet(
    upstream: Upstream, redis_srv: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[Replica]]:
    replicas = start_replicas(3, upstream, redis_srv.url, tmp_path_factory.mktemp("fleet"))
    yield replicas
    for r in replicas:
        r.stop()


def chat(base: str, content: str, *, project: str = "default", **extra: Any) -> httpx.Response:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": content}], **extra}
    return httpx.post(
        f"{base}/v1/chat/completions",
        json=body,
        headers={"X-Project-Id": project, "X-Cache-Namespace": "fleet"},
        timeout=30,
    )


def spread(fleet: list[Replica], n: int, ask: Callable[[str, int], httpx.Response]) -> list[int]:
    """`n` requests at once, round-robin over the replicas; their status codes."""
    with ThreadPoolExecutor(32) as pool:
        futures = [pool.submit(ask, fleet[i % len(fleet)].url, i) for i in range(n)]
        return [f.result().status_code for f in futures]


def eventually(check: Callable[[], bool], within_s: float) -> bool:
    deadline = time.monotonic() + within_s
    while True:
        if check():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)


def test_a_burst_over_three_replicas_reaches_upstream_at_most_rpm_times(
    fleet: list[Replica], upstream: Upstream
) -> None:
    before = upstream.calls()
    codes = spread(fleet, 60, lambda url, i: chat(url, f"burst question {i}", project="burst"))
    assert codes.count(200) == 10, codes
    assert set(codes) == {200, 429}
    assert upstream.calls() - before == 10


def test_a_dollar_budget_holds_across_replicas(fleet: list[Replica], upstream: Upstream) -> None:
    codes = spread(
        fleet,
        45,
        lambda url, i: chat(url, f"budget question {i}", project="budget", max_tokens=1000),
    )
    assert 0 < codes.count(200) < 45 and set(codes) == {200, 429}, codes
    for r in fleet:  # every replica reads the same, fleet-wide figures
        quota = httpx.get(f"{r.url}/v1/quota", timeout=10).json()
        scope = next(s for s in quota["scopes"] if s["name"] == "budget")
        assert scope["daily_budget"]["used"] <= 0.003
        assert scope["daily_requests"]["used"] == codes.count(200)


def test_an_answer_stored_by_one_replica_is_a_hit_on_the_others_within_a_second(
    fleet: list[Replica], upstream: Upstream
) -> None:
    a, b, c = fleet
    assert chat(a.url, "How do I reset my password?").headers["x-cache"] == "MISS"
    stored = time.monotonic()
    calls = upstream.calls()
    assert eventually(
        lambda: chat(b.url, "How do I reset my password?").headers["x-cache"] == "HIT", 1.0
    )
    # A miss here would be stored and then hit exactly: only a semantic match counts.
    assert eventually(
        lambda: (
            chat(c.url, "How can I reset my password?").headers.get("x-cache-match") == "semantic"
        ),
        max(0.1, 1.0 - (time.monotonic() - stored)),
    )
    assert upstream.calls() == calls


def test_identical_misses_on_three_replicas_make_one_upstream_call(
    fleet: list[Replica], upstream: Upstream
) -> None:
    httpx.post(f"{upstream.url}/_sim/config", json={"latency_ms": 800}).raise_for_status()
    try:
        before = upstream.calls()
        codes = spread(fleet, 12, lambda url, _i: chat(url, "one flight for the whole fleet"))
    finally:
        httpx.post(f"{upstream.url}/_sim/config", json={"latency_ms": 0}).raise_for_status()
    assert codes == [200] * 12
    assert upstream.calls() - before == 1


def test_a_replica_killed_mid_call_has_its_holds_reaped_and_its_entries_served(
    upstream: Upstream, redis_srv: RedisServer, tmp_path: Path
) -> None:
    victim, survivor = start_replicas(2, upstream, redis_srv.url, tmp_path)
    try:
        assert chat(victim.url, "stored before the kill").status_code == 200
        httpx.post(f"{upstream.url}/_sim/config", json={"latency_ms": 5000}).raise_for_status()
        pool = ThreadPoolExecutor(4)
        for i in range(4):
            pool.submit(chat, victim.url, f"in flight at the kill {i}")

        def in_flight() -> int:
            n: int = httpx.get(f"{survivor.url}/v1/quota", timeout=10).json()["in_flight"]
            return n

        assert eventually(lambda: in_flight() == 4, 3.0)
        victim.kill()
        pool.shutdown(wait=True)
        httpx.post(f"{upstream.url}/_sim/config", json={"latency_ms": 0}).raise_for_status()
        # The lease is 2 s: the holds are counted as spent, at their estimate, then gone.
        assert eventually(lambda: in_flight() == 0, 6.0)
        quota = httpx.get(f"{survivor.url}/v1/quota", timeout=10).json()
        project = next(s for s in quota["scopes"] if s["kind"] == "project")
        assert project["daily_requests"]["settled"] >= 5
        assert chat(survivor.url, "stored before the kill").headers["x-cache"] == "HIT"
    finally:
        httpx.post(f"{upstream.url}/_sim/config", json={"latency_ms": 0})
        victim.kill()
        survivor.stop()


def test_redis_away_costs_no_5xx_and_sharing_resumes_when_it_returns(
    fleet: list[Replica], redis_srv: RedisServer, upstream: Upstream
) -> None:
    a, b, _ = fleet
    assert chat(a.url, "acknowledged before the outage").status_code == 200
    assert eventually(
        lambda: chat(b.url, "acknowledged before the outage").headers["x-cache"] == "HIT", 1.0
    )
    spent_before = default_requests_today(a)
    redis_srv.stop()
    try:
        codes = spread(fleet, 30, lambda url, i: chat(url, f"asked during the outage {i}"))
        assert all(code < 500 for code in codes), codes
        assert codes.count(200) == 30  # the default project has no limits: all admitted
        assert all(metric(r, "llm_cache_quota_local") == 1.0 for r in fleet)
    finally:
        redis_srv.start()
    # Without a restart of any replica: shared hits again, and nothing acknowledged lost.
    assert eventually(
        lambda: chat(b.url, "acknowledged before the outage").headers["x-cache"] == "HIT", 5.0
    )
    assert chat(a.url, "stored after the outage").status_code == 200
    assert eventually(
        lambda: chat(b.url, "stored after the outage").headers["x-cache"] == "HIT", 2.0
    )
    # What each replica charged alone was booked into Redis once it answered again (the
    # outage's 30, and any miss a replica admitted alone before it retried Redis).
    assert eventually(
        lambda: (
            all(metric(r, "llm_cache_quota_local") == 0.0 for r in fleet)
            and sum(metric(r, "llm_cache_quota_booked_total") for r in fleet) >= 30
        ),
        5.0,
    )
    # The spend acknowledged before the restart is still there, and the outage's is added.
    assert default_requests_today(b) >= spent_before + 30


def default_requests_today(replica: Replica) -> int:
    quota = httpx.get(f"{replica.url}/v1/quota", timeout=10).json()
    scope = next(s for s in quota["scopes"] if (s["kind"], s["name"]) == ("project", "default"))
    n: int = scope["daily_requests"]["used"]
    return n


def metric(replica: Replica, name: str) -> float:
    for line in httpx.get(f"{replica.url}/metrics", timeout=10).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


def test_stats_for_the_fleet_add_up_every_replicas_own(fleet: list[Replica]) -> None:
    def total(url: str, scope: str) -> int:
        stats = httpx.get(f"{url}/v1/cache/stats", params={"scope": scope}, timeout=10).json()
        n: int = stats["total"]["requests"]
        return n

    time.sleep(1.5)  # every replica has published what it counted so far
    before = [total(r.url, "fleet") for r in fleet]
    own_before = [total(r.url, "replica") for r in fleet]
    for i, r in enumerate(fleet):
        chat(r.url, f"counted once on replica {i}")
    assert [total(r.url, "replica") - n for r, n in zip(fleet, own_before, strict=True)] == [
        1,
        1,
        1,
    ]
    # Each replica publishes its counters with its heartbeat (every second): all three
    # requests show in every replica's view of the fleet.
    assert eventually(
        lambda: (
            [total(r.url, "fleet") - n for r, n in zip(fleet, before, strict=True)] == [3, 3, 3]
        ),
        3.0,
    )
    replicas = httpx.get(f"{fleet[0].url}/v1/cache/stats?scope=fleet", timeout=10).json()
    assert len(replicas["replicas"]) >= 3


def test_a_limit_changed_at_run_time_outlives_a_replicas_restart(
    upstream: Upstream, redis_srv: RedisServer, tmp_path: Path
) -> None:
    """Each replica writes its config file's limits to Redis as it starts: a rolling restart
    must not undo an operator's change made through the admin API, while a config file
    changed by a deploy still wins."""
    env = {"CACHE_REDIS_PREFIX": "limits-restart", "CACHE_ADMIN_KEY": "operator-key"}

    def burst_rpm(replica: Replica) -> int:
        quota = httpx.get(f"{replica.url}/v1/quota", timeout=10).json()
        scope = next(s for s in quota["scopes"] if (s["kind"], s["name"]) == ("project", "burst"))
        rpm: int = scope["limits"]["rpm"]
        return rpm

    (a,) = start_replicas(1, upstream, redis_srv.url, tmp_path / "a", **env)
    (b,) = start_replicas(1, upstream, redis_srv.url, tmp_path / "b", **env)
    try:
        changed = httpx.put(
            f"{a.url}/v1/admin/limits",
            headers={"authorization": "Bearer operator-key"},
            json={"kind": "project", "name": "burst", "rpm": 3},
            timeout=10,
        )
        assert changed.status_code == 200, changed.text
        b.stop()
        (b,) = start_replicas(1, upstream, redis_srv.url, tmp_path / "b", **env)
        assert burst_rpm(a) == burst_rpm(b) == 3
        b.stop()
        deployed = [{**p, "rpm": 7} if p["name"] == "burst" else p for p in PROJECTS]
        (b,) = start_replicas(
            1, upstream, redis_srv.url, tmp_path / "b", CACHE_PROJECTS=json.dumps(deployed), **env
        )
        assert burst_rpm(a) == burst_rpm(b) == 7
    finally:
        a.stop()
        b.stop()


def test_a_verdict_naming_the_request_reaches_the_replica_that_did_not_serve_it(
    fleet: list[Replica],
) -> None:
    """Behind a load balancer a verdict seldom comes back to the replica that served the hit;
    named by its request id, any replica must find it."""
    a, b, c = fleet
    question = "Which replica served this answer about verdicts?"
    assert chat(a.url, question).headers["x-cache"] == "MISS"
    served = chat(a.url, question)
    assert served.headers["x-cache"] == "HIT"

    def judged() -> httpx.Response:
        return httpx.post(
            f"{b.url}/v1/cache/feedback",
            json={"request_id": served.headers["x-request-id"], "correct": False},
            headers={"X-Cache-Namespace": "fleet"},
            timeout=10,
        )

    # Told to the fleet within a tenth of a second of the hit.
    assert eventually(lambda: judged().status_code == 200, 2.0)
    assert chat(c.url, question).headers["x-cache"] == "MISS"  # invalidated fleet-wide
