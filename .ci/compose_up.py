"""Run `cache_service/deploy/docker-compose.yml` with podman-compose, then check it from inside
the app's container over the compose network (http://sidecar:8080): /readyz, the same chat
completion twice (MISS, HIT), /metrics refused without the admin key and served with it, and
one replica in the fleet's stats (so Redis is in use). Exits 1 if any of that differs.

The compose file is used as it is, with an override only where this machine differs: the app
is the bare base image sleeping (the check runs in it), the sidecar uses its simulated
upstream (no real API is reachable). Its three images are local ones tagged with the names the
file uses (the sidecar's from `.ci/container.sh` with LOCAL_BASE=1, Redis built here from
Debian's package); the tags are removed afterwards.

Usage: python .ci/compose_up.py [--image localhost/cache-service:dev]
(needs `apt-get install podman-compose golang-github-containernetworking-plugin-dnsname`)
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

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

PROJECT = "cachecheck"
OVERRIDE = """services:
  app:
    command: ["sleep", "infinity"]
  sidecar:
    environment:
      CACHE_UPSTREAM_URL: ""
"""


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--image", default="localhost/cache-service:dev")
    args = p.parse_args()

    build_redis()
    tags = {
        BASE: "localhost/your-app:latest",
        args.image: "localhost/cache-service:latest",
        REDIS: "docker.io/library/redis:7",
    }
    for image, tag in tags.items():
        podman("tag", image, tag)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "override.yml").write_text(OVERRIDE)
        (Path(tmp) / "containers.conf").write_text(CONTAINERS_CONF)
        compose = ["podman-compose", "-p", PROJECT, "-f", str(DEPLOY / "docker-compose.yml")]
        compose += ["-f", str(Path(tmp) / "override.yml")]
        env = {
            **os.environ,
            "CONTAINERS_CONF": str(Path(tmp) / "containers.conf"),
            "OPENAI_API_KEY": "sk-local",
            "CACHE_ADMIN_KEY": ADMIN_KEY,
        }
        try:
            started = time.time()
            subprocess.run([*compose, "up", "-d"], env=env, check=True, capture_output=True)
            result = check_from(f"{PROJECT}_app_1", "http://sidecar:8080", started)
        finally:
            subprocess.run([*compose, "down", "-v"], env=env, capture_output=True)
            subprocess.run(["podman", "network", "rm", f"{PROJECT}_default"], capture_output=True)
            for tag in tags.values():  # this name only (with no name, untag removes all)
                subprocess.run(["podman", "untag", tag, tag], capture_output=True)
    return verdict(result)


if __name__ == "__main__":
    sys.exit(main())
