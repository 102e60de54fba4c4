"""Run `cache_service/deploy/kubernetes.yaml` with `podman kube play`, for a machine without a
cluster, then check it from inside the Pod's app container: /readyz and the same chat
completion twice over 127.0.0.1:8080 (MISS, HIT), /metrics refused without the admin key and
served with the one from the Secret, and the fleet's stats naming the Pod as its replica (so
Redis is in use). Exits 1 if any of that differs.

The manifest is changed only where this machine differs from a cluster: local images (those
`.ci/container.sh` builds with LOCAL_BASE=1, and a Redis built here from Debian's package), the
simulated upstream (no real API is reachable), Redis as a third container of the Pod (there is
no Service named `redis`), Secrets created as podman secrets, one replica.

Usage: python .ci/kube_play.py [--image localhost/cache-service:dev] (from a Python with PyYAML)
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
from local_stack import (
    ADMIN_KEY,
    BASE,
    CONTAINERS_CONF,
    DEPLOY,
    REDIS,
    build_redis,
    check_from,
    podman,
    verdict,
)

SECRETS = {"cache-sidecar": {"admin-key": ADMIN_KEY}, "openai": {"api-key": "sk-local"}}


def localize(image: str) -> dict[str, Any]:
    docs = [d for d in yaml.safe_load_all((DEPLOY / "kubernetes.yaml").read_text()) if d]
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

    build_redis()
    deployment = localize(args.image)
    pod = deployment["metadata"]["name"] + "-pod-0"
    with tempfile.TemporaryDirectory() as tmp:
        played = Path(tmp) / "played.yaml"
        played.write_text(yaml.safe_dump(deployment, sort_keys=False))
        (Path(tmp) / "containers.conf").write_text(CONTAINERS_CONF)
        # podman 4.3 reads a secretKeyRef from a podman secret holding the Secret's data as
        # JSON, key to base64 value (a Secret document in the played file it cannot parse).
        for name, data in SECRETS.items():
            encoded = {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}
            podman("secret", "create", name, "-", input=json.dumps(encoded), capture_output=True)
        try:
            started = time.time()
            env = {**os.environ, "CONTAINERS_CONF": str(Path(tmp) / "containers.conf")}
            podman("kube", "play", str(played), env=env, capture_output=True)
            result = check_from(f"{pod}-app", "http://127.0.0.1:8080", started)
        finally:
            subprocess.run(["podman", "kube", "down", str(played)], capture_output=True)
            subprocess.run(["podman", "secret", "rm", *SECRETS], capture_output=True)
    return verdict(result, [pod])


if __name__ == "__main__":
    sys.exit(main())
