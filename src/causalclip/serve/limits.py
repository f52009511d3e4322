"""The server's request limits, importable without the ``serve`` extra (the command line shows them in its help)."""

MIB = 2**20
DEFAULT_MAX_UPLOAD_BYTES = 20 * MIB  # per file
DEFAULT_MAX_REQUEST_BYTES = 64 * MIB  # per request, all parts and multipart framing together
DEFAULT_MAX_FILES = 32
