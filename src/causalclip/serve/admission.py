"""Back-pressure for ``causalclip serve``: a bound on the images a server holds, counted from a request's arrival
to its answer.

Without a bound a burst holds every upload and its decoded pixels in memory at once, and every request waits
behind all the others: latency grows without limit and so does memory. With it, a request that does not fit gets
503 with ``Retry-After`` at once, while the requests already admitted are answered at the machine's pace.
"""

from __future__ import annotations

import collections
import math
import threading
import time

__all__ = ["Admission", "Ticket"]

_RATE_WINDOW_S = 30.0  # answers counted for the Retry-After estimate


class Ticket:
    """The images one request holds; :meth:`Admission.release` gives them back. ``arrived``: when it was admitted
    (``time.monotonic()``); ``answered``: its images were scored (set by whoever scored them; answered images
    count for :meth:`Admission.retry_after`)."""

    __slots__ = ("answered", "arrived", "images")

    def __init__(self, images: int) -> None:
        self.images = images
        self.arrived = time.monotonic()
        self.answered = False


class Admission:
    """Counts the images admitted and not yet answered, up to ``capacity``; thread-safe.

    A request takes one image's place when it arrives (before its body is read, so a full server reads no
    uploads) and the rest once its parts are counted. :meth:`close` stops admitting (a server shutting down).
    """

    def __init__(self, *, capacity: int) -> None:
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"capacity must be a positive integer, got {capacity!r}")
        self.capacity = capacity
        self.pending = 0
        self.closed = False
        self.refused = 0  # requests refused because the queue was full or the server was closing
        self._lock = threading.Lock()
        self._answered: collections.deque[tuple[float, int]] = collections.deque()  # (time, images)

    def admit(self, images: int = 1) -> Ticket | None:
        """A ticket for ``images`` more images, or None when they do not fit (or the server is closing)."""
        with self._lock:
            if self.closed or self.pending + images > self.capacity:
                self.refused += 1
                return None
            self.pending += images
            return Ticket(images)

    def grow(self, ticket: Ticket, images: int) -> bool:
        """Raise ``ticket`` to ``images`` in all; False (ticket unchanged) if the extra images do not fit."""
        with self._lock:
            extra = images - ticket.images
            if extra <= 0:
                return True
            if self.pending + extra > self.capacity:
                self.refused += 1
                return False
            self.pending += extra
            ticket.images = images
            return True

    def release(self, ticket: Ticket) -> None:
        """Give the ticket's images back (once: the ticket then holds none)."""
        with self._lock:
            self.pending -= ticket.images
            if ticket.answered and ticket.images:
                now = time.monotonic()
                self._answered.append((now, ticket.images))
                while self._answered and self._answered[0][0] < now - _RATE_WINDOW_S:
                    self._answered.popleft()
            ticket.images = 0

    def close(self) -> None:
        with self._lock:
            self.closed = True

    @property
    def accepting(self) -> bool:
        """Whether a one-image request would be admitted now."""
        with self._lock:
            return not self.closed and self.pending < self.capacity

    def retry_after(self) -> int:
        """Whole seconds until the images pending now are likely answered, at the rate of the last 30 s (1..60;
        5 when nothing was answered lately)."""
        with self._lock:
            now = time.monotonic()
            recent = [(t, n) for t, n in self._answered if t >= now - _RATE_WINDOW_S]
            if not recent:
                return 5
            rate = sum(n for _, n in recent) / max(now - recent[0][0], 1.0)  # images per second
            return int(min(60, max(1, math.ceil(self.pending / rate))))
