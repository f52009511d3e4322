"""``causalclip serve DETECTOR``: the detection API and web page (FastAPI + uvicorn; the ``serve`` extra)."""

from __future__ import annotations

import argparse
import os
import sys

from ..serve.limits import DEFAULT_MAX_FILES, DEFAULT_MAX_REQUEST_BYTES, DEFAULT_MAX_UPLOAD_BYTES, MIB
from .detect import engine_default


def default_threads() -> int:
    """Torch threads for serving on CPU: every core but one. The other core decodes uploads and runs the HTTP
    server; giving torch all cores made its threads wait on each other (3.3 vs 11.9 requests/s on 2 cores,
    docs/reports/serving-load.md)."""
    return max(1, (os.cpu_count() or 2) - 1)


def _cmd_serve(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from ..serve.app import create_app
    except ImportError as exc:
        print(
            f"causalclip serve: error: serving needs the 'serve' extra ({exc.name} is missing): "
            "pip install 'causalclip[serve]'",
            file=sys.stderr,
        )
        return 2
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
        device=args.device,
        precision=args.precision,
        backbone_model=args.backbone,
        threshold=args.threshold,
        crops=args.crops,
        max_crops=args.max_crops,
        batch_size=args.batch_size,
    )
    engine = app.state.engine
    print(
        f"causalclip serve: {engine.describe()['head']} head on {engine.describe()['backbone']}, threshold "
        f"{engine.threshold:.6g}; page http://{args.host}:{args.port}/ , API docs http://{args.host}:{args.port}/docs",
        file=sys.stderr,
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, workers=1)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="serve a detector over HTTP (API + web page)",
        description="Serve a detector folder: POST /v1/detect (multipart 'files' parts), GET /v1/model, "
        "GET /healthz, API docs at /docs, and a page at / to drop images on. The model is loaded once, before "
        "the server starts listening. Needs the 'serve' extra.",
    )
    p.add_argument("detector", metavar="DETECTOR", help="detector folder")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
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
    p.add_argument(
        "--crops", choices=["center", "grid"], default=engine_default("crops"), help="as in `causalclip detect`"
    )
    p.add_argument("--max-crops", type=int, default=engine_default("max_crops"), metavar="N")
    p.add_argument("--threshold", type=float, help="label threshold (default: the detector's)")
    p.add_argument("--backbone", metavar="ID_OR_PATH", help="where the recorded CLIP model is (e.g. a local copy)")
    p.add_argument("--batch-size", type=int, default=engine_default("batch_size"), help="backbone inputs per pass")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], help="default: as the features were made")
    p.add_argument("--device", default=engine_default("device"))
    p.add_argument("--threads", type=int, help="torch threads on CPU (default: all cores but one)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    p.set_defaults(func=_cmd_serve)
