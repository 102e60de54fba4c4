"""The CLI as a person runs it: out of the box, with a broken config, and the report."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import openai
import pytest
import redis

from tests.e2e.test_openai_sdk import ROOT, free_port, process

pytestmark = pytest.mark.e2e


def test_serve_without_upstream_starts_the_simulated_one(tmp_path: Path) -> None:
    port = free_port()
    env = {"CACHE_SIMULATED_UPSTREAM_PORT": "0"}
    args = ["serve", "--port", str(port), "--data-dir", str(tmp_path / "data")]
    with (
        process(args, f"http://127.0.0.1:{port}/readyz", env=env),
        openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="sk-demo") as c,
    ):
        first = c.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "Hello there?"}]
        )
        assert first.headers["x-cache"] == "MISS"
        assert first.parse().choices[0].message.content
        again = c.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "Hello there?"}]
        )
        assert again.headers["x-cache"] == "HIT"
        # A caller's report shows its own tenant's requests: ask as the same caller.
        report = httpx.get(
            f"http://127.0.0.1:{port}/v1/cache/report?format=md",
            headers={"Authorization": "Bearer sk-demo"},
        ).text
        assert "| requests | 2 |" in report

    out = tmp_path / "report.html"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "cache_service",
            "report",
            "--data-dir",
            str(tmp_path / "data"),
            "--format",
            "html",
            "--out",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "data:image/png;base64," in out.read_text()


@pytest.mark.parametrize(
    ("yaml_text", "needle"),
    [
        ("similarity_threshold: 2\n", "similarity_threshold"),
        ("on_limit: sometimes\n", "on_limit"),
        ("projects:\n  - name: p\n    rpm: -1\n", "projects.0.rpm"),
        ("no_such_key: 1\n", "no_such_key"),
        ("- just\n- a list\n", "mapping"),
    ],
)
def test_bad_config_stops_with_a_message_naming_the_key(
    tmp_path: Path, yaml_text: str, needle: str
) -> None:
    config = tmp_path / "cache.yaml"
    config.write_text(yaml_text)
    done = subprocess.run(
        [sys.executable, "-m", "cache_service", "serve", "--config", str(config)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert needle in done.stderr


def _serve_refuses(tmp_path: Path, extra: list[str], env: dict[str, str]) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "cache_service", "serve", "--data-dir", str(tmp_path / "d"), *extra],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **env},
    )
    assert done.returncode == 2, done.stderr
    return done.stderr


def test_serve_refuses_to_start_when_a_port_it_needs_is_taken(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        # Its own port.
        err = _serve_refuses(tmp_path, ["--port", port], {"CACHE_SIMULATED_UPSTREAM_PORT": "0"})
        assert f"the sidecar cannot listen on 127.0.0.1:{port}" in err
        # The simulated upstream's: before, misses (and the caller's key) went to whoever
        # held it.
        err = _serve_refuses(
            tmp_path, ["--port", str(free_port())], {"CACHE_SIMULATED_UPSTREAM_PORT": port}
        )
        assert f"the simulated upstream cannot listen on 127.0.0.1:{port}" in err


def test_serve_refuses_to_start_without_its_model_or_a_writable_data_dir(
    tmp_path: Path,
) -> None:
    port = ["--port", str(free_port())]
    err = _serve_refuses(tmp_path, port, {"CACHE_MODEL_DIR": str(tmp_path / "nowhere")})
    assert "embedding model" in err and "nowhere" in err
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    err = _serve_refuses(blocker, port, {})  # its data dir would be a-file/d
    assert "not writable" in err


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cache_service", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, **(env or {})},
    )


def _ask(port: int, content: str) -> dict[str, str]:
    with openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="sk-demo") as c:
        answer = c.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": content}]
        )
    return dict(answer.headers)


def test_a_data_dir_moves_to_the_int8_copy_of_the_model_with_reembed(tmp_path: Path) -> None:
    done = _run("quantize-model", "--out", str(tmp_path / "m8"))
    assert done.returncode == 0, done.stderr
    data = str(tmp_path / "d")
    int8 = {"CACHE_SIMULATED_UPSTREAM_PORT": "0", "CACHE_MODEL_DIR": str(tmp_path / "m8")}
    # An answer cached by the float32 model.
    port = free_port()
    with process(["serve", "--port", str(port), "--data-dir", data], f"http://127.0.0.1:{port}/readyz",
                 env={"CACHE_SIMULATED_UPSTREAM_PORT": "0"}):  # fmt: skip
        assert _ask(port, "How do I reset my password?")["x-cache"] == "MISS"
    # The int8 copy may not score its vector...
    err = _serve_refuses(tmp_path, ["--port", str(free_port()), "--data-dir", data], int8)
    assert "were embedded by" in err and "int8" in err
    # ...until the stored prompts are embedded again by it.
    moved = _run("reembed", "--data-dir", data, env=int8)
    assert moved.returncode == 0, moved.stderr
    assert "1 entries embedded again" in moved.stdout
    port = free_port()
    with process(["serve", "--port", str(port), "--data-dir", data], f"http://127.0.0.1:{port}/readyz",
                 env=int8):  # fmt: skip
        para = _ask(port, "how do i reset my password")
        assert para["x-cache"] == "HIT" and para["x-cache-match"] == "semantic", para
    assert "int8" in json.loads((tmp_path / "d" / "model.json").read_text())["revision"]
    # And now the float32 model is the stranger.
    err = _serve_refuses(tmp_path, ["--port", str(free_port()), "--data-dir", data], {})
    assert "were embedded by" in err and "int8" in err


def test_serve_refuses_a_data_dir_whose_vectors_another_model_made(tmp_path: Path) -> None:
    # `model_identity.py`: the stored vectors would be scored against another model's.
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "model.json").write_text(
        json.dumps({"name": "all-MiniLM-L6-v2", "revision": "an int8 copy", "dimension": 384})
    )
    err = _serve_refuses(tmp_path, ["--port", str(free_port())], {})
    assert "were embedded by all-MiniLM-L6-v2 (an int8 copy; 384-d)" in err


def test_a_replica_of_another_model_fails_to_start_and_says_why(
    tmp_path: Path, redis_url: str
) -> None:
    # The fleet's record, as a replica of an int8 copy would have left it.
    record = {"name": "all-MiniLM-L6-v2", "revision": "an int8 copy", "dimension": 384}
    redis.Redis.from_url(redis_url).set("llmcache:model", json.dumps(record))
    done = subprocess.run(
        [sys.executable, "-m", "cache_service", "serve", "--port", str(free_port()),
         "--data-dir", str(tmp_path / "d"), "--redis-url", redis_url],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "CACHE_SIMULATED_UPSTREAM_PORT": "0"},
    )  # fmt: skip
    # uvicorn's code for a failed startup: not 0, which a supervisor reads as a clean stop.
    assert done.returncode == 3, done.stderr
    assert "were embedded by all-MiniLM-L6-v2 (an int8 copy; 384-d)" in done.stderr


def test_serve_refuses_a_data_dir_another_sidecar_holds(tmp_path: Path) -> None:
    # One process owns a data directory (its journals are replayed at start, its exact keys
    # and latest hits are kept in memory): a second on it would serve what the first deleted.
    env = {"CACHE_SIMULATED_UPSTREAM_PORT": "0"}
    port = free_port()
    args = ["serve", "--port", str(port), "--data-dir", str(tmp_path / "d")]
    with process(args, f"http://127.0.0.1:{port}/readyz", env=env):
        err = _serve_refuses(tmp_path, ["--port", str(free_port())], env)
        assert "in use by another sidecar (pid" in err and "--data-dir" in err
    # Once it is gone, the directory is free again.
    with process(args, f"http://127.0.0.1:{port}/readyz", env=env):
        pass
