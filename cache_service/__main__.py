"""python -m cache_service serve | simulate-upstream | report | export-model | quantize-model |
reembed | prices refresh"""

from __future__ import annotations

import argparse
import os
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


def _start_simulated(host: str, port: int) -> str:
    """The bundled simulated upstream in a background thread, so `serve` works out of the
    box on a machine with no API key and no network. Its socket is bound here, first: a
    taken port is a refusal to start, never a silent fallback to whoever holds it."""
    import uvicorn

    from cache_service.preflight import StartupError, listen_socket
    from cache_service.simulator.app import create_simulated_app
    from cache_service.simulator.state import SimConfig

    sock = listen_socket(host, port, "the simulated upstream")
    bound_host, bound_port = sock.getsockname()[:2]
    server = uvicorn.Server(uvicorn.Config(create_simulated_app(SimConfig()), log_level="warning"))
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="simulated-upstream", daemon=True
    )
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise StartupError(f"the simulated upstream did not start on {host}:{bound_port}")
        time.sleep(0.02)
    return f"http://{bound_host}:{bound_port}/v1"


def cmd_serve(args: argparse.Namespace) -> int:
    from cache_service import logs
    from cache_service.app import create_app
    from cache_service.model_identity import claim_local
    from cache_service.preflight import (
        StartupError,
        check_data_dir,
        check_model,
        check_verifier,
        config_warnings,
        listen_socket,
        lock_data_dir,
    )
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
            redis_url=args.redis_url,
        )
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        # Everything that can refuse does so here, before the model loads.
        check_model(settings)
        check_verifier(settings)
        check_data_dir(settings.data_dir)
        held = lock_data_dir(settings.data_dir)
        claim_local(settings)  # held: no other sidecar records another model meanwhile
        sock = listen_socket(settings.host, settings.port, "the sidecar")
        if settings.upstream_url is None and not settings.upstreams:
            url = _start_simulated(settings.host, settings.simulated_upstream_port)
            print(f"no upstream configured: using the simulated upstream at {url}", file=sys.stderr)
            settings = settings.model_copy(update={"upstream_url": url})
    except StartupError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for warning in config_warnings(settings, os.environ):
        print(f"warning: {warning}", file=sys.stderr)
    app = create_app(settings)
    targets = [u.base_url for u in settings.upstreams] or [str(settings.upstream_url)]
    print(
        f"cache sidecar on http://{settings.host}:{settings.port}/v1 -> {', '.join(targets)}",
        file=sys.stderr,
    )
    try:
        started = serve(app, settings, sock)
    finally:
        held.close()
    # uvicorn's own code for a failed startup (a fleet replica of another model, say): a
    # supervisor must not read it as a clean stop.
    return 0 if started else 3


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


def cmd_quantize(args: argparse.Namespace) -> int:
    from cache_service.backends.quantize import quantize_model

    out = quantize_model(Path(args.model_dir), Path(args.out))
    print(
        f"int8 model ready at {out}: serve it with CACHE_MODEL_DIR={out}; a data dir the float32"
        ' model filled needs `reembed` first (README, "An int8 embedder")'
    )
    return 0


def cmd_reembed(args: argparse.Namespace) -> int:
    from cache_service.backends.embedder import load_embedder
    from cache_service.model_identity import ModelIdentity
    from cache_service.preflight import StartupError, check_data_dir, check_model, lock_data_dir
    from cache_service.reembed import reembed
    from cache_service.settings import ConfigError, load_settings

    try:
        settings = load_settings(args.config, data_dir=args.data_dir)
        if settings.redis_url is not None:
            raise StartupError("a fleet's entries are in Redis: reembed moves a data dir only")
        check_model(settings)
        check_data_dir(settings.data_dir)
        held = lock_data_dir(settings.data_dir)
        target = ModelIdentity.of_model_dir(settings.model_dir)
    except (ConfigError, StartupError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        embedder = load_embedder(settings.model_dir, settings.embedder_backend)
        last = [-1]

        def progress(done: int, total: int) -> None:
            tenth = done * 10 // max(total, 1)
            if tenth != last[0]:
                last[0] = tenth
                print(f"{done}/{total} entries", file=sys.stderr)

        counts = reembed(settings, embedder, target, progress=progress)
    finally:
        held.close()
    print(
        f"{counts.entries} entries embedded again by {target} "
        f"({counts.exact_only} matched exactly only, left as they were)"
    )
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from cache_service.report.cli import run_cli
    from cache_service.settings import ConfigError, load_settings

    # The config gives data_dir, the projects' budget limits and the similarity threshold.
    # With --data-dir a broken config costs only the sections it would have given.
    settings = None
    try:
        settings = load_settings(args.config)
    except ConfigError as e:
        print(f"{'warning' if args.data_dir else 'error'}: {e}", file=sys.stderr)
    if args.data_dir is not None:
        data_dir = args.data_dir
    elif settings is not None:
        data_dir = settings.data_dir
    else:
        return 2
    return run_cli(
        Path(data_dir) / "outcomes.sqlite3",
        since=args.since,
        fmt=args.format,
        out=args.out,
        settings=settings,
        threshold=args.threshold,
    )


def cmd_prices_refresh(args: argparse.Namespace) -> int:
    from cache_service.price_refresh import DATA_FILE, run

    return run(args.source, args.out or DATA_FILE)


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
    serve.add_argument(
        "--redis-url", help="share quota and cache with other replicas (also CACHE_REDIS_URL)"
    )
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

    quant = sub.add_parser(
        "quantize-model", help="write an int8 copy of the model (faster, a little less recall)"
    )
    quant.add_argument("--model-dir", default="models")
    quant.add_argument("--out", required=True, help="the copy's model directory")
    quant.set_defaults(func=cmd_quantize)

    again = sub.add_parser(
        "reembed", help="embed a data dir's stored prompts again with the configured model"
    )
    again.add_argument("--config", help="the sidecar's config file (its data_dir, model_dir)")
    again.add_argument("--data-dir", help="the data dir to move (default: the config's)")
    again.set_defaults(func=cmd_reembed)

    prices = sub.add_parser("prices", help="the shipped price table")
    prices_sub = prices.add_subparsers(dest="prices_command", required=True)
    refresh = prices_sub.add_parser(
        "refresh", help="rewrite cache_service/data/prices.json from LiteLLM's price table"
    )
    refresh.add_argument(
        "--from",
        dest="source",
        type=Path,
        help="a litellm wheel or its model_prices_and_context_window JSON "
        "(default: pip download the latest wheel)",
    )
    refresh.add_argument("--out", type=Path, help="where to write (default: the shipped file)")
    refresh.set_defaults(func=cmd_prices_refresh)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    _thread_defaults()
    args = build_parser().parse_args(argv)
    rc: int = args.func(args)
    return rc


if __name__ == "__main__":
    sys.exit(main())
