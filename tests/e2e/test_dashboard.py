"""The dashboard in a real browser: Debian's chromium, driven by Playwright (pointed at that
executable; no browser download), against the real sidecar process after known traffic."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from cache_service.report.text import waited
from tests.e2e.test_openai_sdk import Upstream, free_port, process, sidecar

pytestmark = pytest.mark.e2e

sync_api = pytest.importorskip("playwright.sync_api")
CHROMIUM = shutil.which("chromium")
ADMIN_KEY = "dash-admin"
ADMIN = {"X-Admin-Key": ADMIN_KEY}


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    port = free_port()
    with process(["simulate-upstream", "--port", str(port)], f"http://127.0.0.1:{port}/healthz"):
        yield Upstream(f"http://127.0.0.1:{port}")


def chat(base: str, content: str, namespace: str, model: str = "gpt-4o-mini") -> str:
    r = httpx.post(
        f"{base}/v1/chat/completions",
        json={"model": model, "messages": [{"role": "user", "content": content}]},
        headers={"Authorization": "Bearer sk-test", "X-Cache-Namespace": namespace},
        timeout=30,
    )
    r.raise_for_status()
    match: str = r.headers.get("x-cache-match", "")
    return r.headers["x-cache"] + ":" + match


def stats(base: str, **params: str) -> dict[str, Any]:
    total: dict[str, Any] = full_stats(base, **params)["total"]
    return total


def full_stats(base: str, **params: str) -> dict[str, Any]:
    r = httpx.get(f"{base}/v1/cache/stats", params=params, headers=ADMIN)
    r.raise_for_status()
    body: dict[str, Any] = r.json()
    return body


def sizes_when(base: str, ok: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """The size history once `ok` holds of it (the sweep adds a sample every 0.2 s)."""
    for _ in range(150):
        history: dict[str, Any] = full_stats(base)["size_history"]
        if ok(history):
            return history
        time.sleep(0.1)
    raise AssertionError(f"size history never got there: {history}")


def cards(page: Any) -> dict[str, str]:
    values: dict[str, str] = page.eval_on_selector_all(
        ".card",
        "cards => Object.fromEntries(cards.map(c => "
        "[c.id.slice(5), c.querySelector('.v').dataset.value]))",
    )
    return values


def wait_for_requests(page: Any, n: int) -> None:
    page.wait_for_function(
        "n => { const v = document.querySelector('#card-requests .v');"
        " return v && v.dataset.value === String(n); }",
        arg=n,
        timeout=15_000,
    )


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (make chromium)")
def test_dashboard_shows_the_stats_and_filters_them(upstream: Upstream, tmp_path: Path) -> None:
    with sidecar(
        upstream,
        tmp_path,
        admin_key=ADMIN_KEY,
        admin_only_ops="true",
        total_daily_budget_usd="5",
        sweep_interval_s="0.2",
    ) as base:
        # A few sweeps of an empty store first: the size chart then shows it filling.
        sizes_when(base, lambda h: len(h["samples"]) >= 3)
        assert chat(base, "How do I reset my password?", "alpha") == "MISS:"
        assert chat(base, "How do I reset my password?", "alpha") == "HIT:exact"
        assert chat(base, "How can I reset my password?", "alpha") == "HIT:semantic"
        assert chat(base, "What is the capital of France?", "beta", "gpt-4o") == "MISS:"
        assert chat(base, "Explain TCP slow start.", "beta", "gpt-4o") == "MISS:"
        total = stats(base)
        assert (total["requests"], total["hits"], total["misses"]) == (5, 2, 3)
        # Both hits are of gpt-4o-mini, whose miss went upstream: both are estimated.
        assert total["time_saved_ms"] > 0 and total["hits_unestimated"] == 0
        # The three misses' answers are stored, and the sweep has seen them.
        sizes_when(base, lambda h: h["samples"][-1]["entries"] == 3)
        # Without the admin key the page itself is refused (admin_only_ops).
        assert httpx.get(f"{base}/dashboard").status_code == 401

        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True)
            try:
                # The admin key as a browser gives it: HTTP Basic, asked for by the page's
                # 401, then sent with the page's own requests.
                context = browser.new_context(
                    http_credentials={"username": "admin", "password": ADMIN_KEY}
                )
                page = context.new_page()
                errors: list[str] = []
                page.on("pageerror", lambda e: errors.append(str(e)))
                # Console errors include Content-Security-Policy refusals.
                page.on(
                    "console",
                    lambda m: errors.append(m.text) if m.type == "error" else None,
                )
                outside: list[str] = []
                page.on(
                    "request",
                    lambda r: None if r.url.startswith(base) else outside.append(r.url),
                )
                page.goto(f"{base}/dashboard")
                wait_for_requests(page, 5)
                shown = cards(page)
                for key in ("requests", "exact_hits", "semantic_hits", "misses", "hit_rate"):
                    assert float(shown[key]) == total[key], key
                for key in ("dollars_saved", "dollars_spent"):
                    assert float(shown[key]) == pytest.approx(total[key]), key
                tokens = total["prompt_tokens_saved"] + total["completion_tokens_saved"]
                assert int(shown["tokens_saved"]) == tokens
                assert page.text_content("#card-hit_rate .v") == f"{total['hit_rate']:.1%}"
                # Time saved: the stats' figure, written as a duration, its method on hover.
                assert float(shown["time_saved_ms"]) == pytest.approx(total["time_saved_ms"])
                card = page.locator("#card-time_saved_ms")
                assert "median latency of the last 200 misses" in card.get_attribute("title")
                assert card.locator(".v").inner_text() == waited(total["time_saved_ms"])
                # The size and eviction charts: one point per sample the stats returned.
                page.wait_for_function(
                    "() => document.querySelector('#span-size').dataset.entries === '3'"
                )
                drawn, samples = page.evaluate(
                    "() => [document.querySelector('#spark-size polyline')"
                    ".getAttribute('points').split(' ').length,"
                    " Number(document.querySelector('#span-size').dataset.samples)]"
                )
                assert drawn == samples >= 4
                assert page.text_content("#span-size").startswith("(3 now, ")
                assert page.get_attribute("#span-evicted", "data-evicted") == "0"
                assert page.locator("#spark-evicted polyline").count() == 1
                page.wait_for_selector("#recent-table tbody tr")
                assert page.locator("#recent-table tbody tr").count() == 5
                outcomes = page.locator("#recent-table tbody tr td:nth-child(2)").all_inner_texts()
                assert outcomes == ["miss", "miss", "semantic_hit", "exact_hit", "miss"]
                top = page.locator("#top-entries-table tbody tr td:nth-child(2)")
                assert top.all_inner_texts() == ["2"]
                reasons = page.locator("#miss-reasons-table tbody tr td:nth-child(2)")
                assert sum(int(n) for n in reasons.all_inner_texts()) == 3
                assert page.locator("#status").get_attribute("class") != "bad"
                budget = page.locator("#quota-table tbody tr", has_text="budget/day").first
                cells = budget.locator("td").all_inner_texts()
                assert cells[0] == "global total" and cells[3] == "$5.00", cells
                spent = total["dollars_spent"]
                assert cells[2] == (f"${spent:.2f}" if spent >= 1 else f"${spent:.6f}")
                if shot := os.environ.get("DASHBOARD_SCREENSHOT"):
                    page.screenshot(path=shot, full_page=True)  # the README's picture

                # A namespace filter: the figures become that namespace's alone.
                alpha = next(n for n in httpx.get(
                    f"{base}/v1/cache/stats", headers=ADMIN
                ).json()["by_namespace"] if n.endswith("/alpha"))  # fmt: skip
                page.fill("#f-namespace", alpha)
                page.click("#apply")
                wait_for_requests(page, 3)
                expected = stats(base, namespace=alpha)
                shown = cards(page)
                assert int(shown["requests"]) == expected["requests"] == 3
                assert int(shown["misses"]) == expected["misses"] == 1
                assert float(shown["hit_rate"]) == expected["hit_rate"]
                page.wait_for_function(
                    "() => document.querySelectorAll('#recent-table tbody tr').length === 3"
                )

                # A model filter instead.
                page.fill("#f-namespace", "")
                page.fill("#f-model", "gpt-4o")
                page.click("#apply")
                wait_for_requests(page, 2)
                assert float(cards(page)["hit_rate"]) == stats(base, model="gpt-4o")["hit_rate"]

                # A time range goes through the outcome log and agrees with the counters.
                page.fill("#f-model", "")
                page.select_option("#f-range", "1h")
                wait_for_requests(page, 5)
                assert float(cards(page)["dollars_saved"]) == pytest.approx(total["dollars_saved"])
                assert errors == [] and outside == []
            finally:
                browser.close()
