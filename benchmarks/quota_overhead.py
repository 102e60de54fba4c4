"""The added cost of the quota path per forwarded request (issue #3 target: < 100 µs).

Times, per request: the pure QuotaManager reserve + settle against three scopes (project,
upstream, global) with rpm, tpm and budgets set; the token estimate with the real tokenizer;
and UpstreamChain.send plus settling its hold, end to end through the local quota ledger
(journal on) against an upstream that answers instantly, minus the same upstream called
directly. Run: python benchmarks/quota_overhead.py
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cache_service.backends.embedder import load_token_counter
from cache_service.backends.journal import SpendJournal
from cache_service.backends.jsonfile import JsonFile
from cache_service.flavors import OPENAI_CHAT
from cache_service.pricing import PriceTable, Usage
from cache_service.protocols import SystemClock, UpstreamResponse
from cache_service.quota.limits import Limits
from cache_service.quota.local import LocalLedger
from cache_service.quota.manager import QuotaManager
from cache_service.quota.projects import Projects
from cache_service.resilience import CircuitBreaker
from cache_service.settings import load_settings
from cache_service.telemetry.metrics import Metrics
from cache_service.upstream.chain import Slot, UpstreamChain

N = 20_000
BODY = {
    "model": "gpt-4o-mini",
    "messages": [
        {"role": "system", "content": "You are a helpful support assistant for Acme."},
        {"role": "user", "content": "How do I reset my password if I lost access to my email?"},
    ],
}
ANSWER = UpstreamResponse(200, {}, b"{}")


class InstantUpstream:
    async def send(
        self, path: str, body: dict[str, Any], headers: dict[str, str], auth: Any
    ) -> Any:
        return ANSWER

    async def stream(
        self, path: str, body: dict[str, Any], headers: dict[str, str], auth: Any
    ) -> Any:
        raise NotImplementedError

    async def raw(self, *args: Any) -> Any:
        raise NotImplementedError

    async def aclose(self) -> None:
        return None


def per_call_us(fn: Any, n: int = N) -> float:
    runs = []
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(n):
            fn()
        runs.append((time.perf_counter() - t) / n * 1e6)
    return statistics.median(runs)


async def chain_us(data_dir: Path) -> tuple[float, float]:
    settings = load_settings(
        None,
        data_dir=data_dir,
        projects=[{"name": "default", "rpm": 10**9, "tpm": 10**12, "daily_budget_usd": 1e9}],
        total_daily_budget_usd=1e9,
    )
    clock = SystemClock()
    up = InstantUpstream()
    # As served: every hold and settlement is journalled before the request goes on.
    ledger = LocalLedger(
        clock, snapshot_file=JsonFile(data_dir / "spend.json"), journal=SpendJournal(data_dir)
    )
    projects = Projects(settings, ledger)
    await projects.configure_all()
    chain = UpstreamChain(
        settings,
        [Slot("primary", up, ["*"], CircuitBreaker(clock))],
        ledger=ledger,
        projects=projects,
        prices=PriceTable.with_overrides(None),
        count_tokens=load_token_counter(),
        metrics=Metrics(),
        clock=clock,
    )

    async def via() -> None:
        call = await chain.send(OPENAI_CHAT, BODY, {}, "default")
        await call.hold.settle(Usage(30, 60))

    async def direct() -> None:
        await up.send("chat/completions", BODY, {}, "bearer")

    async def time_it(fn: Any) -> float:
        runs = []
        for _ in range(5):
            t = time.perf_counter()
            for _ in range(5000):
                await fn()
            runs.append((time.perf_counter() - t) / 5000 * 1e6)
        return statistics.median(runs)

    return await time_it(via), await time_it(direct)


def main() -> None:
    clock = SystemClock()
    manager = QuotaManager(clock)
    scopes = [("project", "default"), ("upstream", "primary"), ("global", "total")]
    for kind, name in scopes:
        manager.configure(kind, name, Limits(rpm=10**9, tpm=10**12, daily_budget_usd=1e9))

    def reserve_settle() -> None:
        r = manager.reserve(scopes, 300, 0.0002)
        manager.settle(r, 90, 0.0001)  # type: ignore[arg-type]

    count = load_token_counter()
    text = json.dumps(BODY["messages"])
    arithmetic = per_call_us(reserve_settle)
    estimate = per_call_us(lambda: count(text))
    with tempfile.TemporaryDirectory() as tmp:
        via, direct = asyncio.run(chain_us(Path(tmp)))
    result = {
        "reserve_plus_settle_us": round(arithmetic, 1),
        "token_estimate_us": round(estimate, 1),
        "chain_send_us": round(via, 1),
        "direct_call_us": round(direct, 1),
        "added_per_request_us": round(via - direct, 1),
    }
    print(json.dumps(result, indent=2))
    out = Path(__file__).parent / "results" / "quota_overhead.json"
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
