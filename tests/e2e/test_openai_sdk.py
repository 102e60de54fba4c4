"""End to end: the real sidecar process (real MiniLM, FAISS, diskcache) in front of the
simulated upstream process, driven by the official openai SDK over real HTTP."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_http(
    url: str, timeout_s: float = 90.0, proc: subprocess.Popen[bytes] | None = None
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} answered")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(url)


@contextmanager
def process(args: list[str], ready_url: str, env: dict[str, str] | None = None) -> Iterator[None]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "cache_service", *args],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )
    try:
        wait_http(ready_url, proc=proc)
        yield
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Upstream:
    def __init__(self, url: str) -> None:
        self.url = url

    def calls(self) -> int:
        n: int = httpx.get(f"{self.url}/_sim/stats").json()["requests"]
        return n

    def fault(self, *faults: str) -> None:
        httpx.post(f"{self.url}/_sim/faults", json={"faults": list(faults)}).raise_for_status()


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    port = free_port()
    with process(["simulate-upstream", "--port", str(port)], f"http://127.0.0.1:{port}/healthz"):
        yield Upstream(f"http://127.0.0.1:{port}")


@contextmanager
def sidecar(upstream: Upstream, data_dir: Path, **env: str) -> Iterator[str]:
    port = free_port()
    settings_env = {f"CACHE_{k.upper()}": v for k, v in env.items()}
    with process(
        [
            "serve",
            "--port",
            str(port),
            "--upstream",
            f"{upstream.url}/v1",
            "--data-dir",
            str(data_dir),
        ],
        f"http://127.0.0.1:{port}/readyz",
        env={"CACHE_UPSTREAM_TIMEOUT_S": "1.5", "CACHE_BACKOFF_BASE_S": "0.01", **settings_env},
    ):
        yield f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def base(upstream: Upstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with sidecar(upstream, tmp_path_factory.mktemp("data")) as url:
        yield url


_clients: list[openai.OpenAI] = []


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    # A client left to the garbage collector leaves its pooled sockets open, and their
    # ResourceWarning fails whichever test happens to run at that moment.
    yield
    while _clients:
        _clients.pop().close()


def client(base: str, **headers: str) -> openai.OpenAI:
    c = openai.OpenAI(base_url=f"{base}/v1", api_key="sk-test", default_headers=headers)
    _clients.append(c)
    return c


def ask(c: openai.OpenAI, content: str, **kw: Any) -> tuple[str, dict[str, str]]:
    messages = kw.pop("messages", None) or [{"role": "user", "content": content}]
    raw = c.chat.completions.with_raw_response.create(
        model=kw.pop("model", "gpt-4o-mini"), messages=messages, **kw
    )
    completion = raw.parse()
    return completion.choices[0].message.content or "", dict(raw.headers)


def test_paraphrase_is_served_from_cache(base: str, upstream: Upstream) -> None:
    c = client(base, **{"X-Cache-Namespace": "paraphrase"})
    before = upstream.calls()
    answer, h1 = ask(c, "How do I reset my password?")
    assert h1["x-cache"] == "MISS"
    again, h2 = ask(c, "How can I reset my password?")
    assert h2["x-cache"] == "HIT", h2
    assert h2["x-cache-match"] == "semantic"
    assert again == answer
    assert upstream.calls() == before + 1


def test_unrelated_and_role_swapped_prompts_miss(base: str) -> None:
    c = client(base, **{"X-Cache-Namespace": "guards"})
    ask(c, "What is the capital of France?")
    _, h = ask(c, "How do I bake sourdough bread?")
    assert h["x-cache"] == "MISS"
    ask(c, "Cheapest flights from Paris to London in May")
    _, h = ask(c, "Cheapest flights from London to Paris in May")
    assert h["x-cache"] == "MISS"


@pytest.mark.parametrize(
    "change",
    [
        {"model": "gpt-4o"},
        {
            "messages": [
                {"role": "system", "content": "You are a pirate."},
                {"role": "user", "content": "Which plan includes priority support?"},
            ]
        },
        {
            "messages": [
                {"role": "user", "content": "I am on the Team plan."},
                {"role": "assistant", "content": "Noted."},
                {"role": "user", "content": "Which plan includes priority support?"},
            ]
        },
        {"temperature": 1.7},
        {"namespace": "someone-else"},
    ],
)
def test_scope_changes_miss(base: str, change: dict[str, Any]) -> None:
    c = client(base, **{"X-Cache-Namespace": "scope"})
    ask(c, "Which plan includes priority support?")
    _, h = ask(c, "Which plan includes priority support?")
    assert h["x-cache"] == "HIT"
    change = dict(change)
    ns = change.pop("namespace", None)
    c2 = client(base, **{"X-Cache-Namespace": ns}) if ns else c
    _, h = ask(c2, "Which plan includes priority support?", **change)
    assert h["x-cache"] == "MISS"


def test_streaming_miss_then_streaming_hit(base: str) -> None:
    c = client(base, **{"X-Cache-Namespace": "stream"})
    q = "Explain what a token bucket rate limiter does."

    def stream_text() -> tuple[str, str]:
        raw = c.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": q}], stream=True
        )
        text = "".join(
            (chunk.choices[0].delta.content or "") for chunk in raw.parse() if chunk.choices
        )
        return text, raw.headers["x-cache"]

    first, state1 = stream_text()
    second, state2 = stream_text()
    assert (state1, state2) == ("MISS", "HIT")
    assert first and second == first
    plain, h = ask(c, q)
    assert h["x-cache"] == "HIT"
    assert plain == first


def test_ttl_expiry(base: str) -> None:
    c = client(base, **{"X-Cache-Namespace": "ttl", "X-Cache-TTL": "1"})
    ask(c, "What is the refund window?")
    _, h = ask(c, "What is the refund window?")
    assert h["x-cache"] == "HIT"
    time.sleep(1.3)
    _, h = ask(c, "What is the refund window?")
    assert h["x-cache"] == "MISS"


def test_upstream_500_is_never_cached(base: str, upstream: Upstream) -> None:
    c = client(base, **{"X-Cache-Namespace": "errors"}).with_options(max_retries=0)
    upstream.fault("500", "500", "500", "500")  # the call and its three retries
    with pytest.raises(openai.InternalServerError):
        ask(c, "Is the status page green?")
    answer, h = ask(c, "Is the status page green?")
    assert h["x-cache"] == "MISS"
    assert answer


def test_upstream_timeout_is_504(base: str, upstream: Upstream) -> None:
    c = client(base, **{"X-Cache-Namespace": "timeouts"}).with_options(max_retries=0)
    upstream.fault(*["timeout:3"] * 4)
    with pytest.raises(openai.APIStatusError) as e:
        ask(c, "Will this time out?")
    assert e.value.status_code == 504


def test_other_endpoints_pass_through(base: str) -> None:
    models = client(base).models.list()
    assert "gpt-4o-mini" in {m.id for m in models.data}


def test_bad_request_is_openai_style(base: str) -> None:
    c = client(base).with_options(max_retries=0)
    with pytest.raises(openai.BadRequestError) as e:
        c.chat.completions.create(model="gpt-4o-mini", messages=[])
    assert "messages" in str(e.value)


def test_restart_keeps_entries(upstream: Upstream, tmp_path: Path) -> None:
    data = tmp_path / "data"
    with sidecar(upstream, data) as url:
        c = client(url, **{"X-Cache-Namespace": "restart"})
        answer, h = ask(c, "Where do I download my invoices?")
        assert h["x-cache"] == "MISS"
    with sidecar(upstream, data) as url:
        ready = httpx.get(f"{url}/readyz").json()
        assert ready["entries_indexed"] >= 1
        c = client(url, **{"X-Cache-Namespace": "restart"})
        again, h = ask(c, "Where can I download my invoices?")
        assert h["x-cache"] == "HIT"
        assert again == answer
