"""``causalclip serve``: detection over HTTP (FastAPI) with a drop-images web page. Needs the ``serve`` extra."""

from .admission import Admission
from .app import (
    DEFAULT_DEADLINE_S,
    DEFAULT_MAX_FILES,
    DEFAULT_MAX_QUEUED_IMAGES,
    DEFAULT_MAX_REQUEST_BYTES,
    DEFAULT_MAX_UPLOAD_BYTES,
    BodyLimit,
    Gate,
    create_app,
)

__all__ = [
    "DEFAULT_DEADLINE_S",
    "DEFAULT_MAX_FILES",
    "DEFAULT_MAX_QUEUED_IMAGES",
    "DEFAULT_MAX_REQUEST_BYTES",
    "DEFAULT_MAX_UPLOAD_BYTES",
    "Admission",
    "BodyLimit",
    "Gate",
    "create_app",
]
