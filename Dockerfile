# The sidecar image: slim Python, CPU torch, the bundled MiniLM exported to ONNX at build
# time, a non-root user. Install steps mirror the Makefile's `setup`, which CI exercises.
#
# Built and run for real with podman on a machine that reaches no image registry and no
# PyTorch index (README, "Running in a container"; `.ci/container.sh` does every step):
# BASE_IMAGE then names a Python image made locally with debootstrap, and torch's CPU wheel
# comes from a directory mounted into the build (PIP_FIND_LINKS) instead of TORCH_INDEX_URL.
# A single stage on purpose: every dependency is a wheel, so there is no compiler or build
# tree that a second stage would leave behind.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

# Where torch's CPU wheel comes from. Empty: only the ordinary index (plus PIP_FIND_LINKS),
# which must then offer the `+cpu` build the lock names, or the install stops (PyPI's Linux
# torch is the CUDA build with gigabytes of dependencies; the lock refuses it).
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# Build-time only, for networks that intercept TLS or machines that keep wheels on disk: a
# CA bundle and a wheel directory mounted into the build. Neither ends up in the image.
ARG PIP_CERT
ARG PIP_FIND_LINKS

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    OMP_NUM_THREADS=1 \
    CACHE_HOST=0.0.0.0 \
    CACHE_PORT=8080 \
    CACHE_DATA_DIR=/data

WORKDIR /app
RUN useradd --create-home --uid 10001 cache && mkdir -p /data && chown cache /data

# torch first and under the lock, whose `torch==2.13.0+cpu` only a CPU wheel satisfies: an
# unpinned torch resolves to a multi-GB CUDA build. Its own layer: it is most of the image
# and changes least often.
COPY .ci/requirements.lock ./requirements.lock
RUN pip install -c requirements.lock torch==2.13.0 \
        ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}

COPY pyproject.toml README.md ./
COPY cache_service ./cache_service
COPY models/manifest.json ./models/manifest.json
RUN pip install -c requirements.lock . && python -m cache_service export-model --model-dir /app/models

ENV CACHE_MODEL_DIR=/app/models
USER cache
VOLUME ["/data"]
EXPOSE 8080
# Liveness, not readiness: /healthz answers once the model is loaded (the server accepts
# connections only after that), while /readyz stays 503 until the index is rebuilt from the
# store, which with a large store can outlast any start period. Docker's one health state also
# decides restarts (Swarm), and a sidecar restarted mid-rebuild would never finish it; exact
# hits and misses are served meanwhile. Orchestrators with a readiness gate use /readyz
# (cache_service/deploy/kubernetes.yaml).
HEALTHCHECK --interval=15s --timeout=3s --start-period=60s --retries=3 \
    CMD python -c "import os,sys,urllib.request as u; p=os.environ.get('CACHE_PORT','8080'); sys.exit(0 if u.urlopen(f'http://127.0.0.1:{p}/healthz', timeout=2).status == 200 else 1)"

CMD ["python", "-m", "cache_service", "serve"]
