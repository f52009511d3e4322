"""The HTTP API and web page around a :class:`~causalclip.detect.engine.DetectionEngine`.

``create_app(DETECTOR)`` loads the detector and its backbone once, when the app is made (so a bad folder fails
before the server listens), and returns a FastAPI app:

- ``POST /v1/detect``: multipart, one or more parts named ``files`` -> per file its name, ``fake_probability``
  and ``label``. Every file must be usable: a request with a non-image, a broken image or a decompression bomb
  gets 422 listing each unusable file and why (nothing is scored); too many bytes get 413.
- ``GET /v1/model`` (what is loaded), ``GET /healthz`` (liveness), ``GET /readyz`` (readiness: whether new work
  is admitted), ``GET /openapi.json`` and ``GET /docs``.
- ``GET /``: a page to drop images on, self-contained (no external scripts, styles or fonts).

Back-pressure: at most ``max_queued_images`` images are admitted and unanswered at once; a request beyond that
gets 503 with ``Retry-After`` at once (a full server does not parse its body). ``deadline_s`` is when an answer
is due, counted from the request's arrival (admission time minus the event loop's current lag, which is about
how long the request waited before the server could read it): an admitted request that would not be answered by
then (its pass's predicted end plus the loop's lag for the way back) gets 503 too, unscored, as soon as that is
known; one whose client went away is dropped from the queue.
While the event loop runs so far behind (a flood of connections) that a new request could not be answered in
time (twice the lag, for the way in and the way back, plus one input's pass reach the deadline), new requests get
503 before their body is parsed. With ``api_key`` every ``/v1/`` route needs ``Authorization: Bearer <key>`` (checked
before the body is parsed); the page, the docs and the health routes stay open.

Decoding and inference run in worker threads (never on the event loop, which keeps ``/healthz`` answered under
any load); the engine runs one forward pass at a time, and at most ``max_concurrent_decodes`` uploads are decoded
at once, which bounds memory.
"""

from __future__ import annotations

import asyncio
import math
import os
import threading
import time
from collections.abc import Callable
from importlib import resources
from typing import Annotated, Any, Literal

from fastapi import FastAPI, File, Request, Security, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.security import HTTPBearer
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..core.version import __version__
from ..detect.engine import DeadlineExceeded, DetectionEngine, RequestCancelled
from ..images.decode import DEFAULT_MAX_PIXELS
from .admission import Admission, LoopLag, Ticket
from .auth import key_matches
from .limits import (
    DEFAULT_DEADLINE_S,
    DEFAULT_MAX_FILES,
    DEFAULT_MAX_QUEUED_IMAGES,
    DEFAULT_MAX_REQUEST_BYTES,
    DEFAULT_MAX_UPLOAD_BYTES,
)

__all__ = [
    "DEFAULT_DEADLINE_S",
    "DEFAULT_MAX_FILES",
    "DEFAULT_MAX_QUEUED_IMAGES",
    "DEFAULT_MAX_REQUEST_BYTES",
    "DEFAULT_MAX_UPLOAD_BYTES",
    "create_app",
]

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


_TICKET = "causalclip_ticket"  # key of the request's admission ticket in scope["state"] (request.state)


def _busy(admission: Admission, detail: str, *, at_least: float = 0) -> JSONResponse:
    retry = max(admission.retry_after(), math.ceil(at_least))
    return JSONResponse({"detail": detail}, 503, headers={"Retry-After": str(retry)})


# A refused request's body is read and discarded up to this size before the refusal is sent: a server that closes
# a connection with unread data makes the kernel reset it, and the client may then see "connection reset" instead
# of the 401/503 (the soak benchmark met 1 in 5,000). Larger bodies are not read; their clients risk the reset.
_DRAIN_LIMIT = 2 * 2**20


async def _drain(scope: Scope, receive: Receive) -> None:
    """Read and discard the request body if it is at most _DRAIN_LIMIT bytes (declared or counted)."""
    for key, value in scope.get("headers", ()):
        if key == b"content-length" and (not value.isdigit() or int(value) > _DRAIN_LIMIT):
            return
    received = 0
    while received <= _DRAIN_LIMIT:
        message = await receive()
        if message["type"] != "http.request":
            return
        received += len(message.get("body", b""))
        if not message.get("more_body", False):
            return


class Gate:
    """ASGI middleware in front of everything else, so that refusals cost no parsing and no admission: the API
    key on ``/v1/`` routes (401), and admission of ``POST /v1/detect`` (503 with Retry-After when the queue is full,
    when the event loop runs more than ``lag_limit()`` behind, or when the server is shutting down). A refused body
    is discarded, not parsed (see _DRAIN_LIMIT). An admitted request holds one image's place until its response
    has been sent; the route raises it to the request's number of files. Its deadline counts from its estimated
    arrival: admission time minus the loop's current lag (:class:`~causalclip.serve.admission.LoopLag`)."""

    def __init__(
        self, app: ASGIApp, *, admission: Admission, lag: LoopLag, lag_limit: Callable[[], float], api_key: str | None
    ) -> None:
        self.app, self.admission, self.lag, self.lag_limit = app, admission, lag, lag_limit
        self.api_key = None if api_key is None else api_key.encode("ascii")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            self.lag.ensure_running()
        if scope["type"] != "http" or not scope["path"].startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        if self.api_key is not None:
            supplied = None
            for key, value in scope.get("headers", ()):
                if key == b"authorization":
                    scheme, _, token = value.partition(b" ")
                    if scheme.lower() == b"bearer":
                        supplied = token.strip()
            if supplied is None or not key_matches(self.api_key, supplied):
                detail = (
                    "wrong API key" if supplied else "missing API key: send the header 'Authorization: Bearer <key>'"
                )
                response = JSONResponse({"detail": detail}, 401, headers={"WWW-Authenticate": "Bearer"})
                await _drain(scope, receive)
                await response(scope, _no_receive, send)
                return
        if scope["path"] != "/v1/detect" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        lag = self.lag.current()
        if lag > self.lag_limit():  # it could not be answered within the deadline: refuse it before parsing it
            ticket, why = None, f"overloaded: requests wait {lag:.2f} s before it reads them"
        else:
            ticket = self.admission.admit(1, waited=lag)
            why = "shutting down" if self.admission.closed else f"busy: {self.admission.capacity} images queued"
        if ticket is None:
            await _drain(scope, receive)
            busy = _busy(self.admission, f"the server is {why}; retry later", at_least=lag)
            await busy(scope, _no_receive, send)
            return
        scope.setdefault("state", {})[_TICKET] = ticket

        async def timed_send(message: Message) -> None:
            # Server-Timing (W3C): the seconds from the request's estimated arrival to its answer, as the deadline
            # counts them, so a client can tell the server's time from the network's and its own.
            if message["type"] == "http.response.start":
                ms = 1000 * (time.monotonic() - ticket.arrived)
                headers = [*message.get("headers", ()), (b"server-timing", f"total;dur={ms:.1f}".encode())]
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, timed_send)
        finally:
            self.admission.release(ticket)


async def _watch_disconnect(request: Request, gone: threading.Event) -> None:
    """Set ``gone`` when the client closes the connection (the ASGI server then sends http.disconnect)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            gone.set()
            return


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


class Readiness(BaseModel):
    status: Literal["ready", "full", "overloaded", "draining"]
    queued_images: int = Field(description="images admitted and not yet answered")
    max_queued_images: int
    loop_lag_s: float = Field(description="how far behind the server's event loop runs (seconds)")
    max_loop_lag_s: float = Field(description="beyond this lag new requests are refused")


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
    max_queued_images: int = DEFAULT_MAX_QUEUED_IMAGES,
    deadline_s: float = DEFAULT_DEADLINE_S,
    api_key: str | None = None,
    **engine_options: Any,
) -> FastAPI:
    """The app for a detector folder (loaded here, once) or an already loaded engine.

    ``max_upload_bytes``: per file; ``max_request_bytes``: the whole body; ``max_files``: parts per request;
    ``max_pixels``: the decompression-bomb limit of every image. ``max_queued_images``: images admitted and not yet
    answered (at least ``max_files``, so that every allowed request can fit); ``deadline_s``: seconds from a
    request's arrival until its answer is due (see the module docstring). ``api_key``: required on ``/v1/`` routes as
    ``Authorization: Bearer <key>`` (None: no authentication). ``engine_options`` go to :class:`DetectionEngine`
    (device, precision, backbone_model, threshold, crops, max_crops, batch_size).

    ``app.state.admission`` is the :class:`~causalclip.serve.admission.Admission`; closing it makes the server
    refuse new work (a graceful shutdown does).
    """
    for name, value in (
        ("max_upload_bytes", max_upload_bytes),
        ("max_request_bytes", max_request_bytes),
        ("max_files", max_files),
        ("max_concurrent_decodes", max_concurrent_decodes),
        ("max_queued_images", max_queued_images),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if max_queued_images < max_files:
        raise ValueError(
            f"max_queued_images ({max_queued_images}) must be at least max_files ({max_files}): "
            "a request of max_files images could never be admitted"
        )
    if isinstance(deadline_s, bool) or not isinstance(deadline_s, (int, float)) or not 0 < deadline_s < math.inf:
        raise ValueError(f"deadline_s must be a positive number of seconds, got {deadline_s!r}")
    if isinstance(detector, DetectionEngine):
        engine = detector
    else:
        engine = DetectionEngine(detector, max_pixels=max_pixels, **engine_options)
    decode_slots = threading.BoundedSemaphore(max_concurrent_decodes)
    admission = Admission(capacity=max_queued_images)
    loop_lag = LoopLag()

    def lag_limit() -> float:
        """The event-loop lag beyond which a new request could not be answered in time: it waits that long to be
        read and again for its answer to be sent, and its pass takes the engine's planned time for one input."""
        return max(0.0, (deadline_s - engine.planned_pass_seconds(1)) / 2)

    limits = {
        "max_upload_bytes": max_upload_bytes,
        "max_request_bytes": max_request_bytes,
        "max_files": max_files,
        "max_pixels": engine.max_pixels,
        "max_queued_images": max_queued_images,
        "deadline_s": deadline_s,
    }

    app = FastAPI(
        title="causalclip detector",
        version=__version__,
        description="Probability that an image is AI-generated, from a causalclip detector folder.",
        docs_url=None,
        redoc_url=None,
    )
    app.state.engine = engine
    app.state.admission = admission
    app.state.loop_lag = loop_lag
    app.add_middleware(BodyLimit, limit=max_request_bytes)
    app.add_middleware(Gate, admission=admission, lag=loop_lag, lag_limit=lag_limit, api_key=api_key)  # runs first
    _mount_docs(app)
    if not any(getattr(r, "path", None) == "/docs" for r in app.routes):
        from fastapi.openapi.docs import get_swagger_ui_html

        @app.get("/docs", include_in_schema=False)
        async def cdn_docs() -> HTMLResponse:
            return get_swagger_ui_html(openapi_url="/openapi.json", title=f"{app.title} - API docs")

    # Only describes the key in the OpenAPI document (Swagger UI's Authorize button); Gate enforces it.
    key_doc = [Security(HTTPBearer(auto_error=False, description="the server's API key"))] if api_key else []
    unauthorized = {401: {"model": ErrorResponse, "description": "missing or wrong API key"}} if api_key else {}
    retry_after = {"Retry-After": {"description": "seconds to wait before retrying", "schema": {"type": "integer"}}}

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        """FastAPI's validation list, in the documented error shape (``detail`` a sentence, ``errors`` a list)."""
        errors = [
            {"name": ".".join(str(x) for x in e.get("loc", ())) or "request", "error": str(e.get("msg", e))}
            for e in exc.errors()
        ]
        no_files = any(tuple(e.get("loc", ()))[-1:] == ("files",) for e in exc.errors())
        detail = (
            "no image: send one or more multipart/form-data parts named 'files'"
            if no_files
            else f"invalid request ({len(errors)} problem(s))"
        )
        return JSONResponse({"detail": detail, "errors": errors}, 422)

    def run(items: list[tuple[str, bytes]], deadline: float, gone: threading.Event) -> tuple[int, dict[str, Any]]:
        """In a worker thread: decode everything, then score everything or report what could not be used.
        Raises DeadlineExceeded or RequestCancelled when the request is dropped before its forward pass."""
        while not decode_slots.acquire(timeout=0.05):
            if gone.is_set():
                raise RequestCancelled()
            if time.monotonic() >= deadline:
                raise DeadlineExceeded("deadline passed while waiting to decode")
        if time.monotonic() + engine.planned_pass_seconds(len(items)) >= deadline:  # no decoding for nothing
            decode_slots.release()
            raise DeadlineExceeded("would not be answered by its deadline")
        try:
            prepared = []
            for name, data in items:
                if gone.is_set():
                    raise RequestCancelled()
                prepared.append(engine.prepare(name, data))
        finally:
            decode_slots.release()
        bad = [{"name": p.name, "error": p.error} for p in prepared if p.error is not None]
        if bad:
            detail = f"{len(bad)} of {len(items)} file(s) could not be used as images; nothing was scored"
            return 422, {"detail": detail, "errors": bad}
        results = engine.score_prepared(prepared, deadline=deadline, cancel=gone)
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
            **unauthorized,
            400: {"model": ErrorResponse, "description": "the body is not valid multipart/form-data"},
            413: {"model": ErrorResponse, "description": "a file, the request or the number of files over a limit"},
            422: {"model": ErrorResponse, "description": "no 'files' part, or a part is not a usable image"},
            503: {
                "model": ErrorResponse,
                "description": "the queue is full, the server is shutting down, its event loop runs too far behind "
                "to answer within the deadline (overloaded), or the request would not be answered within the "
                "deadline; nothing was scored",
                "headers": retry_after,
            },
        },
        dependencies=key_doc,
        summary="Probability of fake for one or more images",
    )
    async def detect(
        request: Request,
        files: Annotated[
            list[UploadFile],
            File(min_length=1, description="image files (JPEG, PNG, WebP, ...); one part per file, repeat the part"),
        ],
    ) -> Any:
        if len(files) > max_files:
            return JSONResponse({"detail": f"{len(files)} files; the limit is {max_files} per request"}, 413)
        ticket: Ticket = request.state.causalclip_ticket  # set by Gate
        if not admission.grow(ticket, len(files)):
            return _busy(admission, f"the server is busy: {len(files)} images do not fit in the queue; retry later")
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
        # From the request's arrival: reading and parsing its body count too (under overload they are slow). The
        # answer goes back through the event loop, which runs loop_lag behind: that much is kept for the way back.
        deadline = ticket.arrived + deadline_s - loop_lag.current()
        gone = threading.Event()
        watcher = asyncio.create_task(_watch_disconnect(request, gone))
        try:
            status, body = await run_in_threadpool(run, items, deadline, gone)
        except DeadlineExceeded:
            return _busy(
                admission, f"not scored within the deadline of {deadline_s:g} s: the server is busy; retry later"
            )
        except RequestCancelled:  # the client went away; nobody reads this
            return JSONResponse({"detail": "the client closed the connection; not scored"}, 499)
        finally:
            watcher.cancel()
        if status != 200:
            return JSONResponse(body, status)
        ticket.answered = True
        return body

    @app.get(
        "/v1/model",
        summary="The loaded detector: backbone, head, threshold, provenance, limits",
        responses=unauthorized,
        dependencies=key_doc,
    )
    async def model() -> dict[str, Any]:
        return {**engine.describe(), "limits": limits, "causalclip_version": __version__}

    @app.get("/healthz", summary="Liveness: the model is loaded and the server answers")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get(
        "/readyz",
        summary="Readiness: whether a new request would be admitted now",
        response_model=Readiness,
        responses={
            503: {"model": Readiness, "description": "full, overloaded or shutting down", "headers": retry_after}
        },
    )
    async def readyz() -> Any:
        lag, limit = loop_lag.current(), lag_limit()
        state = (
            "draining" if admission.closed
            else "full" if not admission.accepting
            else "overloaded" if lag > limit
            else "ready"
        )  # fmt: skip
        body = {
            "status": state,
            "queued_images": admission.pending,
            "max_queued_images": admission.capacity,
            "loop_lag_s": round(lag, 4),
            "max_loop_lag_s": round(limit, 4),
        }
        if state == "ready":
            return body
        return JSONResponse(body, 503, headers={"Retry-After": str(admission.retry_after())})

    page = _page()

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page, headers={"Content-Security-Policy": PAGE_CSP})

    return app
