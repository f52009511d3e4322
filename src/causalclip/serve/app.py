"""The HTTP API and web page around a :class:`~causalclip.detect.engine.DetectionEngine`.

``create_app(DETECTOR)`` loads the detector and its backbone once, when the app is made (so a bad folder fails
before the server listens), and returns a FastAPI app:

- ``POST /v1/detect``: multipart, one or more parts named ``files`` -> per file its name, ``fake_probability``
  and ``label``. Every file must be usable: a request with a non-image, a broken image or a decompression bomb
  gets 422 listing each unusable file and why (nothing is scored); too many bytes get 413.
- ``GET /v1/model`` (what is loaded), ``GET /healthz``, ``GET /openapi.json`` and ``GET /docs``.
- ``GET /``: a page to drop images on, self-contained (no external scripts, styles or fonts).

Decoding and inference run in worker threads (never on the event loop); the engine runs one forward pass at a
time under its lock, and at most ``max_concurrent_decodes`` uploads are decoded at once, which bounds memory.
"""

from __future__ import annotations

import os
import threading
from importlib import resources
from typing import Annotated, Any, Literal

from fastapi import FastAPI, File, UploadFile
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..core.version import __version__
from ..detect.engine import DetectionEngine
from ..images.decode import DEFAULT_MAX_PIXELS
from .limits import DEFAULT_MAX_FILES, DEFAULT_MAX_REQUEST_BYTES, DEFAULT_MAX_UPLOAD_BYTES

__all__ = ["DEFAULT_MAX_FILES", "DEFAULT_MAX_REQUEST_BYTES", "DEFAULT_MAX_UPLOAD_BYTES", "create_app"]

# The page is self-contained: the browser may load nothing but this server's API and the local previews.
PAGE_CSP = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src blob: data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'"
)


def _mib(n: int) -> str:
    return f"{n / 2**20:.3g} MiB"


class _TooLarge(Exception):
    pass


class BodyLimit:
    """ASGI middleware: 413 for a request body over ``limit`` bytes, from Content-Length when the client sends
    it, else by counting the body as it streams in (chunked uploads), before any of it is parsed further."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def _reject(self, scope: Scope, send: Send) -> None:
        response = JSONResponse(
            {"detail": f"request body larger than the limit of {_mib(self.limit)} ({self.limit} bytes)"},
            status_code=413,
        )
        await response(scope, _no_receive, send)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for key, value in scope.get("headers", ()):
            if key == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0
                if declared > self.limit:
                    await self._reject(scope, send)
                    return
        received, exceeded, started = 0, False, False

        async def counting_receive() -> Message:
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    exceeded = True
                    raise _TooLarge
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if exceeded:  # the app turned the aborted read into its own error response: answer 413 instead
                if message["type"] == "http.response.start" and not started:
                    started = True
                    await self._reject(scope, send)
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except _TooLarge:
            if not started:
                await self._reject(scope, send)


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}


class DetectResult(BaseModel):
    name: str = Field(description="the part's file name")
    fake_probability: float = Field(ge=0, le=1, description="probability that the image is AI-generated")
    label: Literal["fake", "real"] = Field(description="fake when fake_probability > threshold")
    crops: int = Field(description="backbone passes averaged (1: the centre crop)")


class DetectResponse(BaseModel):
    threshold: float
    results: list[DetectResult]


class FileError(BaseModel):
    name: str
    error: str


class ErrorResponse(BaseModel):
    detail: str
    errors: list[FileError] = []


def _page() -> str:
    return resources.files(__package__).joinpath("static/index.html").read_text(encoding="utf-8")


def _mount_docs(app: FastAPI) -> None:
    """Swagger UI from the locally installed swagger-ui-bundle (no CDN), where it is installed."""
    try:
        import swagger_ui_bundle
        from fastapi.openapi.docs import get_swagger_ui_html
        from fastapi.staticfiles import StaticFiles
    except ImportError:  # FastAPI's default /docs, which loads Swagger UI from a CDN
        return
    app.mount("/docs-assets", StaticFiles(directory=swagger_ui_bundle.swagger_ui_path), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title} - API docs",
            swagger_js_url="/docs-assets/swagger-ui-bundle.js",
            swagger_css_url="/docs-assets/swagger-ui.css",
            swagger_favicon_url="/docs-assets/favicon-32x32.png",
        )


def create_app(
    detector: str | os.PathLike[str] | DetectionEngine,
    *,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
    max_files: int = DEFAULT_MAX_FILES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_concurrent_decodes: int = 4,
    **engine_options: Any,
) -> FastAPI:
    """The app for a detector folder (loaded here, once) or an already loaded engine.

    ``max_upload_bytes``: per file; ``max_request_bytes``: the whole body; ``max_files``: parts per request;
    ``max_pixels``: the decompression-bomb limit of every image. ``engine_options`` go to
    :class:`DetectionEngine` (device, precision, backbone_model, threshold, crops, max_crops, batch_size).
    """
    for name, value in (
        ("max_upload_bytes", max_upload_bytes),
        ("max_request_bytes", max_request_bytes),
        ("max_files", max_files),
        ("max_concurrent_decodes", max_concurrent_decodes),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if isinstance(detector, DetectionEngine):
        engine = detector
    else:
        engine = DetectionEngine(detector, max_pixels=max_pixels, **engine_options)
    decode_slots = threading.BoundedSemaphore(max_concurrent_decodes)
    limits = {
        "max_upload_bytes": max_upload_bytes,
        "max_request_bytes": max_request_bytes,
        "max_files": max_files,
        "max_pixels": engine.max_pixels,
    }

    app = FastAPI(
        title="causalclip detector",
        version=__version__,
        description="Probability that an image is AI-generated, from a causalclip detector folder.",
        docs_url=None,
        redoc_url=None,
    )
    app.state.engine = engine
    app.add_middleware(BodyLimit, limit=max_request_bytes)
    _mount_docs(app)
    if not any(getattr(r, "path", None) == "/docs" for r in app.routes):
        from fastapi.openapi.docs import get_swagger_ui_html

        @app.get("/docs", include_in_schema=False)
        async def cdn_docs() -> HTMLResponse:
            return get_swagger_ui_html(openapi_url="/openapi.json", title=f"{app.title} - API docs")

    def run(items: list[tuple[str, bytes]]) -> tuple[int, dict[str, Any]]:
        """In a worker thread: decode everything, then score everything or report what could not be used."""
        with decode_slots:
            prepared = [engine.prepare(name, data) for name, data in items]
        bad = [{"name": p.name, "error": p.error} for p in prepared if p.error is not None]
        if bad:
            detail = f"{len(bad)} of {len(items)} file(s) could not be used as images; nothing was scored"
            return 422, {"detail": detail, "errors": bad}
        results = engine.score_prepared(prepared)
        return 200, {
            "threshold": engine.threshold,
            "results": [
                {"name": d.name, "fake_probability": d.fake_probability, "label": d.label, "crops": d.crops}
                for d in results
            ],
        }

    @app.post(
        "/v1/detect",
        response_model=DetectResponse,
        responses={
            413: {"model": ErrorResponse, "description": "a file, the request or the number of files over a limit"},
            422: {"model": ErrorResponse, "description": "a part is not a usable image (each one listed)"},
        },
        summary="Probability of fake for one or more images",
    )
    async def detect(
        files: Annotated[list[UploadFile], File(description="image files (JPEG, PNG, WebP, ...); repeat the part")],
    ) -> Any:
        if len(files) > max_files:
            return JSONResponse({"detail": f"{len(files)} files; the limit is {max_files} per request"}, 413)
        items = []
        for i, f in enumerate(files):
            name = f.filename or f"file{i + 1}"
            data = await f.read(max_upload_bytes + 1)
            await f.close()
            if len(data) > max_upload_bytes:
                return JSONResponse(
                    {
                        "detail": f"{name!r} is larger than the limit of {_mib(max_upload_bytes)} "
                        f"({max_upload_bytes} bytes) per file",
                        "errors": [{"name": name, "error": "file too large"}],
                    },
                    413,
                )
            items.append((name, data))
        status, body = await run_in_threadpool(run, items)
        return JSONResponse(body, status) if status != 200 else body

    @app.get("/v1/model", summary="The loaded detector: backbone, head, threshold, provenance, limits")
    async def model() -> dict[str, Any]:
        return {**engine.describe(), "limits": limits, "causalclip_version": __version__}

    @app.get("/healthz", summary="Liveness: the model is loaded and the server answers")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    page = _page()

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page, headers={"Content-Security-Policy": PAGE_CSP})

    return app
