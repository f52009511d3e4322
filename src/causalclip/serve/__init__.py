"""``causalclip serve``: detection over HTTP (FastAPI) with a drop-images web page. Needs the ``serve`` extra."""

from .app import DEFAULT_MAX_FILES, DEFAULT_MAX_REQUEST_BYTES, DEFAULT_MAX_UPLOAD_BYTES, BodyLimit, create_app

__all__ = ["DEFAULT_MAX_FILES", "DEFAULT_MAX_REQUEST_BYTES", "DEFAULT_MAX_UPLOAD_BYTES", "BodyLimit", "create_app"]
