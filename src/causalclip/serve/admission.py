"""Back-pressure for ``causalclip serve``: a bound on the images a server holds, counted from a request's arrival
to its answer.

Without a bound a burst holds every upload and its decoded pixels in memory at once, and every request waits
behind all the others: latency grows without limit and so does memory. With it, a request that does not fit gets
503 with ``Retry-After`` at once, while the requests already admitted are answered at the machine's pace.
"""

from __future__ import annotations

import asyncio
import collections
import math
import threading
import time

__all__ = ["Admission", "LoopLag", "Ticket"]

_RATE_WINDOW_S = 30.0  # answers counted for the Retry-After estimate


class Ticket:
    """The images one request holds; :meth:`Admission.release` gives them back. ``arrived``: when it arrived
    (``time.monotonic()`` at admission minus ``waited``, the time it waited before admission saw it);
    ``answered``: its images were scored (set by whoever scored them; answered images count for
    :meth:`Admission.retry_after`)."""

    __slots__ = ("answered", "arrived", "images")

    def __init__(self, images: int, *, waited: float = 0.0) -> None:
        self.images = images
        self.arrived = time.monotonic() - waited
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

    def admit(self, images: int = 1, *, waited: float = 0.0) -> Ticket | None:
        """A ticket for ``images`` more images, or None when they do not fit (or the server is closing).
        ``waited``: seconds the request waited before it reached admission; its ticket's arrival is that much
        earlier, so the deadline counts them too."""
        with self._lock:
            if self.closed or self.pending + images > self.capacity:
                self.refused += 1
                return None
            self.pending += images
            return Ticket(images, waited=waited)

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


class LoopLag:
    """How far behind its schedule the event loop runs: how late a timer that should fire every ``interval``
    seconds fires, the most over the last ``window`` seconds.

    The server's one event loop accepts connections and reads request heads between its other work, so this is
    about how long a new request waits before admission sees it: time the deadline, counted from admission, would
    otherwise miss. Under a flood of connections (each costs the loop some parsing and a refusal) it grows; the
    server refuses new work while it is over a bound, and counts it into the deadline of the work it admits.
    """

    def __init__(self, *, interval: float = 0.02, window: float = 0.5) -> None:
        self.interval, self.window = interval, window
        self._samples: collections.deque[tuple[float, float]] = collections.deque()  # (time, lag)
        self._last_tick = time.monotonic()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None

    def ensure_running(self) -> None:
        """Start measuring on the running event loop (once per loop; a test's new loop gets a new ticker)."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._task is None or self._task.done():
            old_loop, old_task = self._loop, self._task
            if old_task is not None and not old_task.done() and old_loop is not None and not old_loop.is_closed():
                old_loop.call_soon_threadsafe(old_task.cancel)  # one ticker at a time, on the loop in use
            self._loop, self._last_tick = loop, time.monotonic()
            self._samples.clear()
            self._task = loop.create_task(self._tick(), name="causalclip-loop-lag")

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            now = time.monotonic()
            lag = max(0.0, now - self._last_tick - self.interval)
            self._last_tick = now
            self._samples.append((now, lag))
            while self._samples and self._samples[0][0] < now - self.window:
                self._samples.popleft()

    def current(self) -> float:
        """Seconds the loop is behind now: the largest recent lag, or, while the loop is blocked and the timer
        has not fired yet, how long it has been overdue."""
        now = time.monotonic()
        recent = max((lag for t, lag in self._samples if t >= now - self.window), default=0.0)
        overdue = now - self._last_tick - self.interval if self._task is not None else 0.0
        return max(recent, overdue, 0.0)
