"""A sidecar killed with SIGKILL in the middle of traffic restarts with every entry it had
confirmed as stored, and serves nothing half-written."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest

from tests.e2e.test_openai_sdk import ROOT, Upstream, free_port, sidecar, upstream, wait_http

pytestmark = pytest.mark.e2e
__all__ = ["upstream"]  # the module-scoped simulated upstream fixture


def ask(base: str, i: int) -> httpx.Response:
    return httpx.post(
        f"{base}/v1/chat/completions",
        json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"crash q {i}"}]},
        headers={"X-Cache-Namespace": "crash"},
        timeout=30,
    )


def spawn(upstream: Upstream, data: Path, **env: str) -> tuple[subprocess.Popen[bytes], str]:
    """A sidecar process to kill (the `sidecar` helper only ever stops one gracefully)."""
    port = free_port()
    args = ["serve", "--port", str(port), "--upstream", f"{upstream.url}/v1"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "cache_service", *args, "--data-dir", str(data)],
        cwd=ROOT,
        env={**os.environ, "CACHE_BACKOFF_BASE_S": "0.01", **env},
    )
    return proc, f"http://127.0.0.1:{port}"


def test_sigkill_mid_traffic_loses_no_confirmed_entry(upstream: Upstream, tmp_path: Path) -> None:
    data = tmp_path / "data"
    proc, base = spawn(upstream, data)
    confirmed: list[int] = []
    try:
        wait_http(f"{base}/readyz", proc=proc)
        for i in range(20):
            assert ask(base, i).headers["x-cache-stored"] == "true"
            confirmed.append(i)

        def hammer(start: int) -> None:
            for i in range(start, start + 200):
                try:
                    r = ask(base, i)
                except httpx.HTTPError:
                    return
                if r.headers.get("x-cache-stored") == "true":
                    confirmed.append(i)

        threads = [threading.Thread(target=hammer, args=(1000 * k,)) for k in (1, 2, 3)]
        for t in threads:
            t.start()
        threading.Event().wait(1.5)
        proc.send_signal(signal.SIGKILL)
        for t in threads:
            t.join(30)
    finally:
        proc.kill()
        proc.wait()

    with sidecar(upstream, data) as url:
        calls_before = upstream.calls()
        for i in confirmed:
            r = ask(url, i)
            assert r.status_code == 200
            assert r.headers["x-cache"] == "HIT", i
            assert r.json()["choices"][0]["message"]["content"]
        assert upstream.calls() == calls_before


def spent_today(base: str) -> float:
    quota = httpx.get(f"{base}/v1/quota", timeout=10).json()
    total = next(s for s in quota["scopes"] if s["kind"] == "global")
    used: float = total["daily_budget"]["used"]
    return used


def test_sigkill_loses_no_spend(upstream: Upstream, tmp_path: Path) -> None:
    """With snapshots an hour apart, every charge before the kill is only in the journal."""
    data = tmp_path / "data"
    proc, base = spawn(upstream, data, CACHE_SPEND_SNAPSHOT_INTERVAL_S="3600")
    try:
        wait_http(f"{base}/readyz", proc=proc)
        for i in range(5):
            assert ask(base, 5000 + i).status_code == 200
        before = spent_today(base)
        assert before > 0
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert not (data / "spend.json").exists()  # nothing was snapshotted: the journal has it
    with sidecar(upstream, data) as url:
        assert spent_today(url) == pytest.approx(before)
    with sidecar(upstream, data) as url:  # and recovering twice does not count twice
        assert spent_today(url) == pytest.approx(before)
