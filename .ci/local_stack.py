"""What `.ci/kube_play.py` and `.ci/compose_up.py` share to run the deployment examples with
podman on a machine that reaches no image registry: a Redis image built from Debian's package,
the containers.conf these machines need, and the check run from inside the app's container."""

from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "cache_service" / "deploy"
BASE = "localhost/debian-python:3.11"  # made by `.ci/container.sh` with LOCAL_BASE=1
REDIS = "localhost/redis:7"
ADMIN_KEY = "local-admin-key"

# Like the official image: data in /data (writable by any uid: the Pod runs every container as
# 10001), and protected mode off (that image builds Redis with it off; Debian's, given no
# config file, refuses every client not on loopback, which the sidecar logged as "Connection
# lost" while it served degraded).
REDIS_CONTAINERFILE = f"""FROM {BASE}
RUN apt-get update -q && apt-get install -y -q --no-install-recommends redis-server \\
    && rm -rf /var/lib/apt/lists/* && mkdir -m 1777 /data \\
    && printf '#!/bin/sh\\nexec "$@" --protected-mode no\\n' > /entrypoint && chmod +x /entrypoint
WORKDIR /data
ENTRYPOINT ["/entrypoint"]
CMD ["redis-server", "--appendonly", "yes", "--maxmemory-policy", "noeviction"]
"""

# As on the podman lines of .ci/container.sh: no raising the open-files limit here, and runc.
CONTAINERS_CONF = """[containers]
default_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]
[engine]
runtime = "runc"
"""

# Runs in the app's container (the bare base image: no SDK, so urllib). argv: the sidecar's
# base URL, and when the stack was started (epoch seconds).
CHECK = """
import json, sys, time, urllib.error, urllib.request
B, t0 = sys.argv[1], float(sys.argv[2])
def get(path, key=None, body=None):
    h = {"Content-Type": "application/json", "Authorization": f"Bearer {key or 'sk-local'}"}
    req = urllib.request.Request(B + path, body, h if key or body else {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.headers.get("X-Cache"), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, None, ""
while True:
    try:
        if get("/readyz")[0] == 200:
            break
    except OSError:
        pass
    if time.time() - t0 > 180:
        sys.exit("not ready within 180 s")
    time.sleep(0.5)
out = {"ready_s": round(time.time() - t0, 1)}
msg = {"role": "user", "content": "How do I reset my password?"}
q = {"model": "gpt-4o-mini", "messages": [msg]}
out["x_cache"] = [get("/v1/chat/completions", body=json.dumps(q).encode())[1] for _ in range(2)]
out["metrics_status"] = [get("/metrics")[0], get("/metrics", "%s")[0]]
stats = json.loads(get("/v1/cache/stats?scope=fleet", "%s")[2])
out["replicas"] = [r["replica"] for r in stats["replicas"]]
print(json.dumps(out))
""" % (ADMIN_KEY, ADMIN_KEY)  # noqa: UP031 (the code above is full of braces)


def podman(*args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["podman", *args], check=True, text=True, **kw)


def build_redis() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "Containerfile").write_text(REDIS_CONTAINERFILE)
        podman(
            "build", "--format", "docker", "--isolation", "chroot", "--network", "host",
            "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096",
            "-q", "-t", REDIS, tmp,
            stdout=subprocess.DEVNULL,
        )  # fmt: skip


def check_from(container: str, sidecar_url: str, started: float) -> dict[str, Any]:
    """Runs CHECK in `container` against `sidecar_url`; its figures."""
    out = podman(
        "exec", container, "python3", "-c", CHECK, sidecar_url, str(started), capture_output=True
    ).stdout
    result: dict[str, Any] = json.loads(out)
    return result


def verdict(result: dict[str, Any], replicas: list[str] | None = None) -> int:
    """0 if the check saw what a working stack shows, else 1 (and what differed). Without
    `replicas`, any one replica (one named by default, after its host and pid)."""
    print(json.dumps(result))
    if replicas is None and len(result["replicas"]) == 1:
        replicas = result["replicas"]
    expected = {"x_cache": ["MISS", "HIT"], "metrics_status": [401, 200], "replicas": replicas}
    wrong = {k: result[k] for k, v in expected.items() if result[k] != v}
    if wrong:
        print(f"differs from {expected}: {wrong}")
        return 1
    return 0
