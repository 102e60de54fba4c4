"""python -m cache_service serve | simulate-upstream | export-model"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path


def _thread_defaults() -> None:
    # Before torch, FAISS or onnxruntime load: on 2 cores every pool must be 1 thread, or
    # the embedder, FAISS and the event loop oversubscribe the CPU (measured 3x slower).
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _wait_for_port(host: str, port: int, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex((host, port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"simulated upstream did not start on {host}:{port}")


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def _start_simulated(host: str, port: int) -> str:
    """The bundled simulated upstream in a background thread, so `serve` works out of the
    box on a machine with no API key and no network."""
    import uvicorn

    from cache_service.simulator.app import create_simulated_app
    from cache_service.simulator.state import SimConfig

    port = port or _free_port(host)
    server = uvicorn.Server(
        uvicorn.Config(create_simulated_app(SimConfig()), host=host, port=port, log_level="warning")
    )
    threading.Thread(target=server.run, name="simulated-upstream", daemon=True).start()
    _wait_for_port(host, port)
    return f"http://{host}:{port}/v1"


def cmd_serve(args: argparse.Namespace) -> int:
    from cache_service import logs
    from cache_service.app import create_app
    from cache_service.serving import serve
    from cache_service.settings import ConfigError, load_settings

    logs.configure(args.log_level)
    try:
        settings = load_settings(
            args.config,
            host=args.host,
            port=args.port,
            upstream_url=args.upstream,
            data_dir=args.data_dir,
        )
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if settings.upstream_url is None:
        url = _start_simulated(settings.host, settings.simulated_upstream_port)
        print(f"no upstream configured: using the simulated upstream at {url}", file=sys.stderr)
        settings = settings.model_copy(update={"upstream_url": url})
    app = create_app(settings)
    print(
        f"cache sidecar on http://{settings.host}:{settings.port}/v1 -> {settings.upstream_url}",
        file=sys.stderr,
    )
    serve(app, settings)
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from cache_service.simulator.app import run_simulated
    from cache_service.simulator.state import SimConfig

    run_simulated(
        args.host,
        args.port,
        SimConfig(latency_ms=args.latency_ms, stream_chunk_delay_ms=args.chunk_delay_ms),
    )
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from cache_service.backends.embedder import export_onnx

    target = export_onnx(Path(args.model_dir))
    print(f"ONNX model ready at {target}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from cache_service.report.cli import run_cli
    from cache_service.settings import ConfigError, load_settings

    data_dir = args.data_dir
    if data_dir is None:
        try:
            data_dir = load_settings(args.config).data_dir
        except ConfigError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    return run_cli(
        Path(data_dir) / "outcomes.sqlite3", since=args.since, fmt=args.format, out=args.out
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m cache_service")
    sub = p.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the caching sidecar")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument(
        "--upstream", help="OpenAI-compatible base URL, e.g. https://api.openai.com/v1"
    )
    serve.add_argument("--data-dir", type=Path)
    serve.add_argument("--config", type=Path, help="YAML config file (also CACHE_CONFIG)")
    serve.add_argument("--log-level", default="INFO")
    serve.set_defaults(func=cmd_serve)

    sim = sub.add_parser("simulate-upstream", help="run the simulated OpenAI-compatible upstream")
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--port", type=int, default=8081)
    sim.add_argument("--latency-ms", type=float, default=0.0)
    sim.add_argument("--chunk-delay-ms", type=float, default=0.0)
    sim.set_defaults(func=cmd_simulate)

    from cache_service.report.cli import add_arguments

    rep = sub.add_parser("report", help="hit rate, savings and latency from the outcome log")
    add_arguments(rep)
    rep.set_defaults(func=cmd_report)

    export = sub.add_parser("export-model", help="export the bundled model to ONNX under models/")
    export.add_argument("--model-dir", default="models")
    export.set_defaults(func=cmd_export)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    _thread_defaults()
    args = build_parser().parse_args(argv)
    rc: int = args.func(args)
    return rc


if __name__ == "__main__":
    sys.exit(main())
