"""``causalclip serve DETECTOR``: the detection API and web page (FastAPI + uvicorn; the ``serve`` extra)."""

from __future__ import annotations

import argparse
import math
import os
import signal
import sys
import threading
from typing import Any

from ..serve.auth import API_KEY_ENV, AuthConfigError, resolve_api_key
from ..serve.limits import (
    DEFAULT_DEADLINE_S,
    DEFAULT_MAX_FILES,
    DEFAULT_MAX_QUEUED_IMAGES,
    DEFAULT_MAX_REQUEST_BYTES,
    DEFAULT_MAX_UPLOAD_BYTES,
    DEFAULT_SHUTDOWN_GRACE_S,
    MIB,
)
from .detect import add_engine_arguments, engine_options


def default_threads() -> int:
    """Torch threads for serving on CPU: every core but one. The other core decodes uploads and runs the HTTP
    server; giving torch all cores made its threads wait on each other (3.3 vs 11.9 requests/s on 2 cores,
    docs/reports/serving-load.md)."""
    return max(1, (os.cpu_count() or 2) - 1)


def run_server(app: Any, *, host: str, port: int, log_level: str, grace_s: float) -> None:
    """uvicorn until SIGTERM or Ctrl+C, then a graceful shutdown: the app stops admitting work at once (its
    readiness turns to "draining"), uvicorn closes the listening socket and lets the requests in flight finish for
    up to ``grace_s`` seconds (then cancels them), and this returns normally after SIGTERM so the command exits 0.
    """
    import uvicorn

    class DrainingServer(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            app.state.admission.close()
            super().handle_exit(sig, frame)

    config = uvicorn.Config(
        app, host=host, port=port, log_level=log_level, workers=1, timeout_graceful_shutdown=grace_s
    )
    server = DrainingServer(config)
    if threading.current_thread() is not threading.main_thread():  # no signals here (tests, embedding)
        server.run()
        return
    # After a graceful shutdown uvicorn raises the signal again under the previous handler: for SIGTERM that
    # would end the process with -15 after all; a no-op handler makes a drained SIGTERM an ordinary exit 0.
    previous = signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        server.run()
    finally:
        signal.signal(signal.SIGTERM, previous)


def _cmd_serve(args: argparse.Namespace) -> int:
    try:
        import uvicorn  # noqa: F401  (checked here, used by run_server)

        from ..serve.app import create_app
    except ImportError as exc:
        print(
            f"causalclip serve: error: serving needs the 'serve' extra ({exc.name} is missing): "
            "pip install 'causalclip[serve]'",
            file=sys.stderr,
        )
        return 2
    try:  # before the model loads: a missing key should not cost a minute of loading
        api_key = resolve_api_key(host=args.host, key_file=args.api_key_file, no_auth=args.no_auth)
    except AuthConfigError as exc:
        print(f"causalclip serve: error: {exc}", file=sys.stderr)
        return 2
    for name in ("deadline", "shutdown_grace"):
        value = getattr(args, name)
        if not 0 < value < math.inf:
            raise ValueError(f"--{name.replace('_', '-')} must be a positive number of seconds, got {value}")
    threads = args.threads
    if threads is None and args.device == "cpu":
        threads = default_threads()
    if threads is not None:
        if threads < 1:
            raise ValueError("--threads must be >= 1")
        import torch

        torch.set_num_threads(threads)
    for name in ("max_upload_mb", "max_request_mb"):
        if getattr(args, name) <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be positive")
    app = create_app(
        args.detector,
        max_upload_bytes=int(args.max_upload_mb * MIB),
        max_request_bytes=int(args.max_request_mb * MIB),
        max_files=args.max_files,
        max_queued_images=args.max_queued_images,
        deadline_s=args.deadline,
        api_key=api_key,
        **engine_options(args),
    )
    engine = app.state.engine
    auth = "API key required on /v1/" if api_key else "no authentication"
    print(
        f"causalclip serve: {_what(engine.describe())}, threshold "
        f"{engine.threshold:.6g}; page http://{args.host}:{args.port}/ , API docs http://{args.host}:{args.port}/docs"
        f"; {auth}; at most {args.max_queued_images} images queued, deadline {args.deadline:g} s"
        + (f"; compiled, warmed up in {engine.warm_up_seconds:.0f} s" if engine.compiled else ""),
        file=sys.stderr,
    )
    run_server(app, host=args.host, port=args.port, log_level=args.log_level, grace_s=args.shutdown_grace)
    return 0


def _what(d: dict) -> str:
    if d.get("kind") == "network":
        return f"{d['head']} network on {d['preprocessing']['size']}-px crops"
    return f"{d['head']} head on {d['backbone']}"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="serve a detector over HTTP (API + web page)",
        description="Serve a detector folder: POST /v1/detect (multipart 'files' parts), GET /v1/model, "
        "GET /healthz (liveness), GET /readyz (readiness), API docs at /docs, and a page at / to drop images on. "
        "The model is loaded once, before the server starts listening. Listening beyond loopback needs an API key "
        f"(--api-key-file or ${API_KEY_ENV}) or --no-auth. SIGTERM drains: no new work, in-flight requests finish "
        "within --shutdown-grace, exit 0. Needs the 'serve' extra.",
    )
    p.add_argument("detector", metavar="DETECTOR", help="detector folder")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument(
        "--api-key-file",
        metavar="FILE",
        help=f"file holding the API key that /v1/ routes require as 'Authorization: Bearer KEY' (or ${API_KEY_ENV}); "
        "required when --host is not loopback",
    )
    p.add_argument(
        "--no-auth", action="store_true", help="serve beyond loopback without a key (something in front authenticates)"
    )
    p.add_argument(
        "--max-queued-images",
        type=int,
        default=DEFAULT_MAX_QUEUED_IMAGES,
        metavar="N",
        help="images admitted and not yet answered; beyond them 503 with Retry-After at once (%(default)s; "
        "at least --max-files)",
    )
    p.add_argument(
        "--deadline",
        type=float,
        default=DEFAULT_DEADLINE_S,
        metavar="S",
        help="seconds from a request's arrival until its answer is due: a request that would be answered later "
        "gets 503 instead, and while the server runs too far behind to answer in time new requests get 503 "
        "(%(default)g)",
    )
    p.add_argument(
        "--shutdown-grace",
        type=float,
        default=DEFAULT_SHUTDOWN_GRACE_S,
        metavar="S",
        help="seconds in-flight requests get to finish after SIGTERM (%(default)g)",
    )
    p.add_argument("--port", type=int, default=8000)
    p.add_argument(
        "--max-upload-mb",
        type=float,
        default=DEFAULT_MAX_UPLOAD_BYTES / MIB,
        metavar="MB",
        help="largest file accepted (MiB, default %(default)g)",
    )
    p.add_argument(
        "--max-request-mb",
        type=float,
        default=DEFAULT_MAX_REQUEST_BYTES / MIB,
        metavar="MB",
        help="largest request body (MiB, default %(default)g)",
    )
    p.add_argument("--max-files", type=int, default=DEFAULT_MAX_FILES, help="files per request (%(default)s)")
    add_engine_arguments(p)
    p.add_argument("--threads", type=int, help="torch threads on CPU (default: all cores but one)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    p.set_defaults(func=_cmd_serve)
