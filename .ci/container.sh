#!/usr/bin/env bash
# Build the sidecar's image, start it, and send it real requests: /readyz, then one chat
# completion twice through the openai SDK against the simulated upstream (MISS, then HIT).
# `make image` runs it. Not part of `make test` or CI: it needs podman or docker, root for the
# local base image, and minutes of downloads.
#
# Settings (environment):
#   ENGINE      podman or docker (default: podman when installed, else docker)
#   IMAGE       the tag built (default localhost/cache-service:dev)
#   LOCAL_BASE  1: build FROM a Debian Python image made here with debootstrap, for machines
#               that reach no image registry (default 0: python:3.11-slim from a registry)
#   WHEELS      a directory of wheels mounted into the build as PIP_FIND_LINKS, with
#               TORCH_INDEX_URL emptied: how torch's CPU wheel gets in where PyTorch's index
#               is unreachable (default: none, PyTorch's CPU index)
#   HOST_PORT   where the container's port 8080 is published (default 18080)
#   PYTHON      a Python with the openai SDK, for the requests (default .venv/bin/python)
#   RESULTS     where the measured figures are written as JSON (default: not written)
#   KEEP        1: leave the container running afterwards
set -euo pipefail
cd "$(dirname "$0")/.."

ENGINE=${ENGINE:-$(command -v podman >/dev/null && echo podman || echo docker)}
IMAGE=${IMAGE:-localhost/cache-service:dev}
LOCAL_BASE=${LOCAL_BASE:-0}
WHEELS=${WHEELS:-}
HOST_PORT=${HOST_PORT:-18080}
PYTHON=${PYTHON:-.venv/bin/python}
NAME=cache-service-check
BASE=localhost/debian-python:3.11
MIRROR=${MIRROR:-http://deb.debian.org/debian}

build_args=()
run_args=()
if [ "$ENGINE" = podman ]; then
    # On these machines crun cannot set rlimits and refuses hybrid cgroups; runc with explicit
    # ulimits (no raising past the hard limits the session has) works, and builds run their
    # steps with chroot isolation on the host's network (README, "Running in a container").
    # Docker's image format: podman's default (OCI) drops HEALTHCHECK, with only a warning.
    limits=(--ulimit nofile=1024:1024 --ulimit nproc=4096:4096)
    build_args+=(--format docker --isolation chroot --network host "${limits[@]}")
    run_args+=(--runtime runc "${limits[@]}")
fi

make_local_base() {
    # A stand-in for python:3.11-slim from Debian's own packages: bookworm's Python is 3.11.
    # A venv first on PATH gives `python` and a pip that installs without touching Debian's.
    if "$ENGINE" image inspect "$BASE" >/dev/null 2>&1; then return; fi
    local root
    root=$(mktemp -d /var/tmp/cache-base.XXXXXX)
    debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
        bookworm "$root" "$MIRROR"
    chroot "$root" python3 -m venv /opt/py
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
    tar -C "$root" -c . | "$ENGINE" import \
        --change 'ENV PATH=/opt/py/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'CMD ["python3"]' - "$BASE"
    rm -rf "$root"
}

if [ "$LOCAL_BASE" = 1 ]; then
    t0=$(date +%s)
    make_local_base
    echo "base image $BASE ready in $(($(date +%s) - t0)) s"
    build_args+=(--build-arg "BASE_IMAGE=$BASE")
fi
if [ "$ENGINE" != podman ] && [ -n "$WHEELS" ]; then
    echo "WHEELS needs podman: docker build cannot mount a directory into the build" >&2
    exit 2
fi
if [ -n "$WHEELS" ]; then
    build_args+=(--build-arg TORCH_INDEX_URL= --build-arg PIP_FIND_LINKS=/wheels
                 --volume "$(realpath "$WHEELS"):/wheels:ro")
fi
# pip in the build trusts what this machine trusts (a TLS-intercepting proxy's CA included).
if [ "$ENGINE" = podman ] && [ -n "${PIP_CERT:-}" ] && [ -f "$PIP_CERT" ]; then
    build_args+=(--build-arg PIP_CERT=/etc/host-ca.crt --volume "$PIP_CERT:/etc/host-ca.crt:ro")
fi

t0=$(date +%s)
"$ENGINE" build "${build_args[@]}" -t "$IMAGE" -f Dockerfile .
build_s=$(($(date +%s) - t0))
size=$("$ENGINE" image inspect --format '{{.Size}}' "$IMAGE")
echo "built $IMAGE in ${build_s} s, $((size / 1000000)) MB"

"$ENGINE" rm -f "$NAME" >/dev/null 2>&1 || true
[ "${KEEP:-0}" = 1 ] || trap '"$ENGINE" rm -f --volumes "$NAME" >/dev/null 2>&1 || true' EXIT

check() {  # check LABEL EXPECTED STARTED [more args]: ready, then the two requests
    local label=$1 expect=$2 started=$3
    shift 3
    if ! "$PYTHON" .ci/container_requests.py --base "http://127.0.0.1:$HOST_PORT" \
            --label "$label" --expect "$expect" --started "$started" \
            ${RESULTS:+--results "$RESULTS"} "$@"; then
        "$ENGINE" logs "$NAME" 2>&1 | tail -40
        exit 1
    fi
}

# A first start on an empty /data volume: the repeat is answered from the cache.
started=$(date +%s.%N)
"$ENGINE" run -d --name "$NAME" "${run_args[@]}" -p "127.0.0.1:$HOST_PORT:8080" "$IMAGE" >/dev/null
check start MISS,HIT "$started" --build-s "$build_s" --image-bytes "$size"

# The image's HEALTHCHECK, run once by hand: podman schedules it with systemd timers, which a
# machine without systemd does not have (docker runs it itself).
if [ "$ENGINE" = podman ]; then
    if ! "$ENGINE" healthcheck run "$NAME"; then echo "healthcheck: unhealthy" >&2; exit 1; fi
    echo "healthcheck: healthy"
else
    sleep 16 && "$ENGINE" inspect --format 'healthcheck: {{.State.Health.Status}}' "$NAME"
fi

# Stopped (SIGTERM: the index snapshot is saved) and started on the same volume: the entry
# stored before the restart is a hit at once.
started=$(date +%s.%N)
"$ENGINE" restart "$NAME" >/dev/null
check restart HIT,HIT "$started"

# The int8 copy of the model, made by the image's own user as an operator would, onto the
# data volume: the float32 export under /app is root's, and nothing may be written beside it.
if ! "$ENGINE" exec "$NAME" python -m cache_service quantize-model --out /data/model-int8; then
    echo "quantize-model failed in the image" >&2
    exit 1
fi
