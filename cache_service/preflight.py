"""What `serve` checks before it loads anything: the ports it must listen on, the model files
and a writable data directory that no other sidecar holds.

A sidecar that came up half-built is worse than one that refused: with its simulated
upstream's port taken, the old `serve` logged the bind error and then forwarded every miss,
the caller's API key included, to whichever process held that port. So each check fails
with one line naming the component and the fix, before the seconds it takes to load the
model, and the sockets are bound here and handed to the servers, never re-bound later.
"""

from __future__ import annotations

import fcntl
import os
import socket
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import IO

from cache_service.settings import Settings


class StartupError(Exception):
    """A component `serve` depends on is unavailable; the message says which and why."""


def listen_socket(host: str, port: int, what: str) -> socket.socket:
    """A bound, listening TCP socket (port 0: any free one), or a StartupError."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # asyncio: TCP_NODELAY
    # As uvicorn does: a restart may rebind while old connections sit in TIME_WAIT.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as e:
        sock.close()
        reason = e.strerror or str(e)
        raise StartupError(
            f"{what} cannot listen on {host}:{port}: {reason} "
            "(another process holds the port? choose another with --port or the config)"
        ) from e
    sock.set_inheritable(True)
    return sock


def check_model(settings: Settings) -> None:
    """The embedding model's files are where settings say (they are made at setup, never
    downloaded at run time)."""
    manifest = settings.model_dir / "manifest.json"
    if not manifest.is_file():
        raise StartupError(
            f"embedding model: no {manifest} (set CACHE_MODEL_DIR to the repository's "
            "models/ directory, or run `make setup`)"
        )
    if settings.embedder_backend == "onnx":
        from cache_service.backends.embedder import onnx_file

        graph = onnx_file(settings.model_dir)
        if not graph.is_file():
            raise StartupError(
                f"embedding model: backend onnx but no {graph} "
                "(run `python -m cache_service export-model` or `make setup`)"
            )


def check_data_dir(data_dir: Path) -> None:
    """The store, journal and logs can be written: the directory exists (or can be made) and
    a file can be created in it."""
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=data_dir):
            pass
    except OSError as e:
        raise StartupError(f"data directory {data_dir} is not writable: {e.strerror or e}") from e


def lock_data_dir(data_dir: Path) -> IO[str]:
    """Hold the data directory for this process's life (keep the returned file open), or a
    StartupError naming the sidecar that holds it. One process owns a data directory: at
    start it replays the entry and spend journals it finds there, and it keeps the store's
    exact keys and latest hits in memory, so a second process on the same directory would
    replay the first's journals and serve entries the first has deleted. An flock is
    dropped by the kernel when its process ends, however it ends: no stale lock to clear."""
    handle = (data_dir / "sidecar.lock").open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        handle.seek(0)
        holder = handle.read().strip()
        handle.close()
        by = f" (pid {holder})" if holder.isdigit() else ""
        raise StartupError(
            f"data directory {data_dir} is in use by another sidecar{by}: "
            "give each sidecar its own --data-dir"
        ) from e
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def check_verifier(settings: Settings) -> None:
    """With `verifier: on`, or `auto` and a manifest present (the operator shipped a model),
    the verifier's files are complete and its manifest gives a threshold and a floor (or the
    settings do). Checked before anything loads, so a broken model directory is one line at
    start, not a sidecar silently matching without its verifier."""
    if settings.verifier == "off":
        return
    model_dir = settings.verifier_dir
    manifest_file = model_dir / "manifest.json"
    if settings.verifier == "auto" and not manifest_file.is_file():
        return  # off: nothing shipped
    what = f"verifier model ({model_dir})"
    if not manifest_file.is_file():
        raise StartupError(
            f"{what}: verifier is on but there is no {manifest_file} "
            "(set CACHE_VERIFIER_DIR, or CACHE_VERIFIER=auto/off)"
        )
    from cache_service.backends.pair_scorer import read_manifest

    try:
        manifest = read_manifest(model_dir)
    except (OSError, ValueError) as e:
        raise StartupError(f"{what}: unreadable manifest.json: {e}") from e
    for name in ("tokenizer.json", str(manifest.get("onnx_file", "model.onnx"))):
        if not (model_dir / name).is_file():
            raise StartupError(f"{what}: no {model_dir / name}")
    from cache_service.cache.cross_encoder import choose_floor, choose_threshold

    try:
        threshold = choose_threshold(
            manifest,
            error_bound=settings.verifier_error_bound,
            override=settings.verifier_threshold,
        )
        floor = choose_floor(manifest, settings.verifier_floor)
    except (KeyError, TypeError, ValueError) as e:
        raise StartupError(
            f"{what}: manifest.json lacks a usable threshold, calibration or floor ({e!r}); "
            "set verifier_threshold and verifier_floor"
        ) from e
    if not (0 <= threshold <= 1 and 0 < floor <= 1):
        raise StartupError(
            f"{what}: threshold {threshold} must be in [0, 1] and floor {floor} in (0, 1]"
        )


def config_warnings(settings: Settings, environ: Mapping[str, str]) -> list[str]:
    """What is configured but will not work as the operator probably expects; `serve`
    prints these at start and runs anyway (a key may be injected by the caller instead)."""
    from cache_service.pricing import PriceTable

    warnings = []
    for u in settings.upstreams:
        if u.api_key_env and not environ.get(u.api_key_env) and not settings.upstream_api_key:
            warnings.append(
                f"upstream {u.name!r}: ${u.api_key_env} is not set; callers' own keys are "
                "passed through to it"
            )
    if settings.default_price is None:
        table = PriceTable.with_overrides({k: v.model_dump() for k, v in settings.prices.items()})
        named = {m for u in settings.upstreams for m in u.models if "*" not in m and "?" not in m}
        named |= {p.downgrade.model for p in settings.projects if p.downgrade is not None}
        for model in sorted(named):
            if table.get(model) is None:
                warnings.append(
                    f"model {model!r} has no price: it costs $0 against budgets "
                    "(add it under prices:, or set default_price)"
                )
    return warnings
