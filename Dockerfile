# The sidecar image: slim Python, CPU torch, the bundled MiniLM exported to ONNX at build
# time, a non-root user. Install steps mirror the Makefile's `setup`, which CI exercises.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    OMP_NUM_THREADS=1 \
    CACHE_HOST=0.0.0.0 \
    CACHE_PORT=8080 \
    CACHE_DATA_DIR=/data

WORKDIR /app
RUN useradd --create-home --uid 10001 cache && mkdir -p /data && chown cache /data

# CPU wheel explicitly: an unpinned torch resolves to a multi-GB CUDA build.
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu

COPY pyproject.toml README.md ./
COPY .ci/requirements.lock ./requirements.lock
COPY cache_service ./cache_service
COPY models/manifest.json ./models/manifest.json
RUN pip install -c requirements.lock . && python -m cache_service export-model --model-dir /app/models

ENV CACHE_MODEL_DIR=/app/models
USER cache
VOLUME ["/data"]
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=3s --start-period=30s --retries=3 \
    CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2).status == 200 else 1)"

CMD ["python", "-m", "cache_service", "serve"]
