"""The server's request limits, importable without the ``serve`` extra (the command line shows them in its help)."""

MIB = 2**20
DEFAULT_MAX_UPLOAD_BYTES = 20 * MIB  # per file
DEFAULT_MAX_REQUEST_BYTES = 64 * MIB  # per request, all parts and multipart framing together
DEFAULT_MAX_FILES = 32
# Images admitted and not yet answered (uploaded, decoding, queued or in a forward pass); beyond it: 503 at once.
# Twice the largest request, so one full request never blocks the next one on its own.
DEFAULT_MAX_QUEUED_IMAGES = 2 * DEFAULT_MAX_FILES
# Seconds from a request's arrival until its answer is due; a request that would be answered later: 503, unscored.
DEFAULT_DEADLINE_S = 30.0
# Seconds that in-flight requests get to finish after SIGTERM before they are cancelled.
DEFAULT_SHUTDOWN_GRACE_S = 30.0
