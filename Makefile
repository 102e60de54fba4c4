# The two README commands: `make run` (sidecar + simulated upstream) and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
ONNX   := models/all-MiniLM-L6-v2-onnx/onnx/model.onnx

.PHONY: setup redis-server chromium run test lint prices image deploy-examples bench bench-compare bench-quality train-verifier bench-verifier clean

setup: $(STAMP) $(ONNX)

# torch is pinned and installed first: pip then takes the CPU wheel on this machine's disk
# instead of resolving a multi-GB CUDA build for sentence-transformers.
$(STAMP): pyproject.toml .ci/requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -c .ci/requirements.lock -e '.[dev]'
	touch $@

# Exported once from the bundled weights; serving then loads this file, never the hub.
$(ONNX): $(STAMP) models/manifest.json
	HF_HUB_OFFLINE=1 $(PY) -m cache_service export-model

run: setup
	$(PY) -m cache_service serve $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

# Rewrites the shipped price table (cache_service/data/prices.json) from the latest litellm
# wheel's (pip downloads the wheel alone, installs nothing); review the diff, then commit it.
# Offline: make prices ARGS="--from path/to/litellm.whl" (or its JSON).
prices: $(STAMP)
	$(PY) -m cache_service prices refresh $(ARGS)

# The suite runs a real Redis (tests/redis_server.py starts it on a free port): Debian's
# package, installed here when missing (sudo when not root), never started as a service.
redis-server:
	@command -v redis-server >/dev/null || { \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get install -y -q redis-server >/dev/null 2>&1 || \
		{ $$SUDO apt-get update -q && $$SUDO apt-get install -y -q redis-server; }; }

# The dashboard's browser test drives Debian's chromium through Playwright (pointed at that
# executable: no browser download, never `playwright install`), installed here when missing.
chromium:
	@command -v chromium >/dev/null || { \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get install -y -q chromium >/dev/null 2>&1 || \
		{ $$SUDO apt-get update -q && $$SUDO apt-get install -y -q chromium; }; }

test: setup lint redis-server chromium
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q $(PYTEST_ARGS)

# The container image, built, started and sent real requests (.ci/container.sh). Not part of
# `test` or CI: it needs podman or docker and minutes of downloads. Where no image registry and
# no PyTorch index are reachable: `make image LOCAL_BASE=1 WHEELS=/dir/with/torch-cpu-wheel`.
image: setup
	PYTHON=$(PY) .ci/container.sh

# cache_service/deploy's Kubernetes and compose examples run with podman (kube play,
# podman-compose) on the images `make image LOCAL_BASE=1` leaves, each checked from its app.
deploy-examples: setup
	$(PY) .ci/kube_play.py
	$(PY) .ci/compose_up.py

bench: setup
	$(PY) benchmarks/latency.py

# Sidecar vs GPTCache (installed here by the bench extra, under the lock), one run, floors
# included: benchmarks/results/compare.{json,md}. Not in CI. Sizes 1k, 100k and 1M by default
# (COMPARE_ARGS='--sizes 1000,10000' for a ~6 min run); the default takes ~65 min on 2
# cores and needs ~11 GB of free disk and ~9 GB of RAM at 1M (benchmarks/README.md).
bench-compare: setup
	$(PY) -m pip install -q -c .ci/requirements.lock -e '.[bench]'
	HF_HUB_OFFLINE=1 $(PY) benchmarks/compare.py $(COMPARE_ARGS)

bench-quality: setup
	$(PY) -m pip install -q -c .ci/requirements.lock -e '.[bench]'
	$(PY) -m benchmarks.quality.run

# Not in CI and not at setup: ~20-40 min on 2 cores. Rebuilds models/verifier from the bundled
# MiniLM weights and ../shared/data (training split), then calibrates its threshold on the
# calibration split; `bench-verifier` measures it on the evaluation split.
train-verifier: setup
	$(PY) -m benchmarks.verifier.train --out models/verifier
	$(PY) -m benchmarks.verifier.evaluate calibrate --model models/verifier
	$(PY) -m benchmarks.verifier.evaluate write --model models/verifier

bench-verifier: setup
	$(PY) -m benchmarks.verifier.evaluate measure --model models/verifier

clean:
	rm -rf $(VENV) data models/all-MiniLM-L6-v2-onnx
