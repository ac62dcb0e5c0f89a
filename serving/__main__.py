"""``python -m serving``: run the gateway (HTTP + gRPC) on a model repository."""

from __future__ import annotations

import argparse
import logging

from serving.settings import Settings


def parse_args(argv: list[str] | None = None) -> Settings:
    """Flags override ``KILN_*`` environment variables, which override the defaults."""
    parser = argparse.ArgumentParser(prog="python -m serving", description=__doc__)
    parser.add_argument("--model-repository", help="Triton model repository (default: model_repository)")
    parser.add_argument("--http-port", type=int, help="HTTP port (default: 8000)")
    parser.add_argument("--grpc-port", type=int, help="gRPC port, 0 disables it (default: 8001)")
    parser.add_argument("--backend", choices=["onnxruntime", "triton"], help="default: onnxruntime")
    parser.add_argument("--triton-url", help="Triton address for --backend triton (default: 127.0.0.1:8001)")
    parser.add_argument(
        "--triton-translate",
        choices=["scheduler", "triton"],
        help="with --backend triton: Triton's own <name> python model (triton, default: measured faster) "
        "or the gateway's batched beam search over Triton's encoder/decoder (scheduler)",
    )
    parser.add_argument("--host", help="interface to bind (default: 127.0.0.1)")
    parser.add_argument("--intra-op-threads", type=int, help="ONNX Runtime intra-op threads per session")
    parser.add_argument(
        "--lone-request-threads",
        type=int,
        help="intra-op threads for a lone request (one item, nothing waiting); default: all cores; 0: off",
    )
    parser.add_argument(
        "--spin-us",
        type=int,
        help="microseconds an idle ONNX Runtime intra-op thread spins before it sleeps (default 20; 0: never)",
    )
    parser.add_argument(
        "--lone-spin-us",
        type=int,
        help="microseconds the lone-request session's idle threads spin (default 1000; 0: never)",
    )
    parser.add_argument("--max-queue-size", type=int, help="waiting requests per model before 429")
    parser.add_argument("--request-timeout-s", type=float, help="per-request deadline in seconds")
    parser.add_argument("--log-level", help="debug, info, warning, error")
    parser.add_argument("--workers", type=int, help="gateway processes sharing the ports (default: 1)")
    parser.add_argument("--reuse-port", action="store_true", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--worker-board", help=argparse.SUPPRESS)
    parser.add_argument("--worker-index", type=int, help=argparse.SUPPRESS)
    given = {k: v for k, v in vars(parser.parse_args(argv)).items() if v is not None}
    return Settings(**given)


def main(argv: list[str] | None = None) -> None:
    import sys

    import uvicorn

    from serving.app import create_app

    settings = parse_args(argv)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if not settings.model_repository.is_dir():
        raise SystemExit(f"model repository {settings.model_repository} is not a directory")
    if settings.workers > 1:
        if not settings.http_port or not settings.grpc_port:
            raise SystemExit("--workers > 1 needs fixed --http-port and --grpc-port (not 0)")
        from serving.workers import run_workers

        raise SystemExit(run_workers(sys.argv[1:] if argv is None else argv, settings.workers))
    config = uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.http_port,
        log_level=settings.log_level.lower(),
        # Access lines are INFO: above that level they are never printed, so do not build them at all.
        access_log=settings.log_level.lower() in {"trace", "debug", "info"},
        timeout_graceful_shutdown=int(settings.shutdown_grace_s) or None,
        timeout_keep_alive=settings.keep_alive_s,
    )
    if settings.reuse_port:
        from serving.workers import reuse_port_socket

        uvicorn.Server(config).run(sockets=[reuse_port_socket(settings.host, settings.http_port)])
    else:
        uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
