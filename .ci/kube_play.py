"""Run `cache_service/deploy/kubernetes.yaml` with `podman kube play`, for a machine without a
cluster, then check it from inside the Pod's app container: /readyz and the same chat
completion twice over 127.0.0.1:8080 (MISS, HIT), /metrics refused without the admin key and
served with the one from the Secret, and the fleet's stats naming the Pod as its replica (so
Redis is in use). Exits 1 if any of that differs.

The manifest is changed only where this machine differs from a cluster: local images (those
`.ci/container.sh` builds with LOCAL_BASE=1, and a Redis built here from Debian's package), the
simulated upstream (no real API is reachable), Redis as a third container of the Pod (there is
no Service named `redis`), Secrets created as podman secrets, one replica.

Usage: python .ci/kube_play.py [--image localhost/cache-service:dev]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = ROOT / "cache_service" / "deploy" / "kubernetes.yaml"
BASE = "localhost/debian-python:3.11"
REDIS = "localhost/redis:7"
REDIS_CONTAINERFILE = f"""FROM {BASE}
RUN apt-get update -q && apt-get install -y -q --no-install-recommends redis-server \\
    && rm -rf /var/lib/apt/lists/*
CMD ["redis-server", "--appendonly", "yes", "--maxmemory-policy", "noeviction", "--dir", "/tmp"]
"""
SECRETS = {"cache-sidecar": {"admin-key": "local-admin-key"}, "openai": {"api-key": "sk-local"}}
# As on the podman lines of .ci/container.sh: no raising the open-files limit here, and runc.
CONTAINERS_CONF = """[containers]
default_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]
[engine]
runtime = "runc"
"""

# Runs in the app container (the bare base image: no SDK, so urllib), argv[1] = play's start.
CHECK = """
import json, sys, time, urllib.error, urllib.request
B, t0 = "http://127.0.0.1:8080", float(sys.argv[1])
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
    time.sleep(0.5)
out = {"ready_s": round(time.time() - t0, 1)}
msg = {"role": "user", "content": "How do I reset my password?"}
q = {"model": "gpt-4o-mini", "messages": [msg]}
out["x_cache"] = [get("/v1/chat/completions", body=json.dumps(q).encode())[1] for _ in range(2)]
out["metrics_status"] = [get("/metrics")[0], get("/metrics", "local-admin-key")[0]]
stats = json.loads(get("/v1/cache/stats?scope=fleet", "local-admin-key")[2])
out["replicas"] = [r["replica"] for r in stats["replicas"]]
print(json.dumps(out))
"""


def podman(*args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["podman", *args], check=True, text=True, **kw)


def localize(image: str) -> dict[str, Any]:
    docs = [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d]
    (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
    deployment["spec"]["replicas"] = 1
    spec = deployment["spec"]["template"]["spec"]
    spec["hostAliases"] = [{"ip": "127.0.0.1", "hostnames": ["redis"]}]
    for c in spec["containers"]:
        if c["name"] == "cache-sidecar":
            c["image"] = image
            for e in c["env"]:
                if e["name"] == "CACHE_UPSTREAM_URL":
                    e["value"] = ""  # empty: the simulated upstream
        elif c["name"] == "app":
            c["image"], c["command"] = BASE, ["sleep", "infinity"]
    spec["containers"].append({"name": "redis", "image": REDIS})
    return dict(deployment)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--image", default="localhost/cache-service:dev")
    args = p.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        (d / "Containerfile").write_text(REDIS_CONTAINERFILE)
        podman(
            "build", "--format", "docker", "--isolation", "chroot", "--network", "host",
            "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096",
            "-q", "-t", REDIS, str(d),
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        played = d / "played.yaml"
        played.write_text(yaml.safe_dump(localize(args.image), sort_keys=False))
        (d / "containers.conf").write_text(CONTAINERS_CONF)
        # podman 4.3 reads a secretKeyRef from a podman secret holding the Secret's data as
        # JSON, key to base64 value (a Secret document in the played file it cannot parse).
        for name, data in SECRETS.items():
            encoded = {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}
            podman("secret", "create", name, "-", input=json.dumps(encoded), capture_output=True)
        try:
            started = time.time()
            env = {**os.environ, "CONTAINERS_CONF": str(d / "containers.conf")}
            podman("kube", "play", str(played), env=env, capture_output=True)
            pod = localize(args.image)["metadata"]["name"] + "-pod-0"
            out = podman(
                "exec", f"{pod}-app", "python3", "-c", CHECK, str(started), capture_output=True
            ).stdout
        finally:
            subprocess.run(["podman", "kube", "down", str(played)], capture_output=True)
            subprocess.run(["podman", "secret", "rm", *SECRETS], capture_output=True)
    result = json.loads(out)
    print(json.dumps(result))
    expected = {"x_cache": ["MISS", "HIT"], "metrics_status": [401, 200], "replicas": [pod]}
    wrong = {k: result[k] for k, v in expected.items() if result[k] != v}
    if wrong:
        print(f"differs from {expected}: {wrong}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
