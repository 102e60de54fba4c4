"""The requests `.ci/container.sh` sends a freshly started container: wait for /readyz, then
the same chat completion twice through the official openai SDK, whose X-Cache headers must be
the expected ones (a first start: MISS, HIT; after a restart on the same /data volume: HIT,
HIT). Prints the measured figures (and adds them to a JSON file with --results, under
--label); exits 1 if the container never gets ready or the headers differ."""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from openai import OpenAI

PROMPT = "How do I reset my password?"


def wait_ready(base: str, started: float, timeout_s: float) -> tuple[float, dict[str, object]]:
    """Seconds from `podman run` to the first 200 from /readyz, and that body. Refused
    connections and 503s (model loading, index rebuilding) are retried."""
    while time.time() - started < timeout_s:
        try:
            with urllib.request.urlopen(f"{base}/readyz", timeout=2) as r:
                body: dict[str, object] = json.load(r)
                return time.time() - started, body
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.2)
    raise SystemExit(f"not ready within {timeout_s:.0f} s")


def ask(client: OpenAI) -> tuple[str, float, str]:
    """One completion: its X-Cache header, its latency in ms and the answer's first words."""
    t0 = time.perf_counter()
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": PROMPT}]
    )
    ms = (time.perf_counter() - t0) * 1000
    answer = raw.parse().choices[0].message.content or ""
    return raw.headers.get("x-cache", "(none)"), ms, answer[:60]


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--base", required=True, help="the container's published address")
    p.add_argument("--started", type=float, required=True, help="epoch seconds of `run`")
    p.add_argument("--build-s", type=float, default=None)
    p.add_argument("--image-bytes", type=int, default=None)
    p.add_argument("--timeout-s", type=float, default=180)
    p.add_argument("--expect", default="MISS,HIT", help="the two X-Cache headers expected")
    p.add_argument("--results", type=Path, default=None)
    p.add_argument("--label", default="start", help="this run's key in the results file")
    args = p.parse_args()

    ready_s, readyz = wait_ready(args.base, args.started, args.timeout_s)
    print(f"ready {ready_s:.1f} s after run: {json.dumps(readyz)}")
    # The simulated upstream takes any key; a real one would get the caller's key passed on.
    client = OpenAI(base_url=f"{args.base}/v1", api_key="sk-container-check", max_retries=0)
    calls = [ask(client) for _ in range(2)]
    for i, (x_cache, ms, answer) in enumerate(calls, 1):
        print(f"request {i}: X-Cache {x_cache}, {ms:.0f} ms, {answer!r}")

    figures = {
        "build_s": args.build_s,
        "image_bytes": args.image_bytes,
        "start_to_ready_s": round(ready_s, 2),
        "readyz": readyz,
        "x_cache": [c[0] for c in calls],
        "latency_ms": [round(c[1], 1) for c in calls],
    }
    if args.results:
        recorded = json.loads(args.results.read_text()) if args.results.exists() else {}
        recorded[args.label] = figures
        args.results.write_text(json.dumps(recorded, indent=2) + "\n")
    if [c[0] for c in calls] != args.expect.split(","):
        print(f"expected X-Cache {args.expect}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
