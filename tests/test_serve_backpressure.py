"""Back-pressure: the bound on queued images (503 with Retry-After at once beyond it), the per-request deadline, a
cancelled or abandoned request leaving the engine's queue unscored, and /healthz answered while the queue is full.

Forward passes are held on an event inside the test, so "full" and "queued" are states the test sets up exactly,
not races against the machine's speed."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from _needs import need as _need

_need("transformers")
_need("fastapi")
_need("python_multipart")
httpx = _need("httpx")

from _detector_factory import make_tiny_detector, write_image  # noqa: E402
from causalclip.detect.engine import DeadlineExceeded, DetectionEngine, RequestCancelled  # noqa: E402
from causalclip.serve.admission import Admission  # noqa: E402
from causalclip.serve.app import create_app  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("backpressure")
    det = make_tiny_detector(root)
    img = write_image(root / "a.png", (64, 48), seed=1)
    return {"detector": det, "png": img.read_bytes()}


@pytest.fixture
def engine(tiny):
    return DetectionEngine(tiny["detector"])


class HeldPasses:
    """Wraps the engine's forward pass: each pass records its batch size, then waits until released."""

    def __init__(self, engine, monkeypatch):
        self.real, self.sizes = engine._forward, []
        self.entered, self.release = threading.Event(), threading.Event()
        monkeypatch.setattr(engine, "_forward", self)

    def __call__(self, pixels):
        self.sizes.append(len(pixels))
        self.entered.set()
        assert self.release.wait(20), "the test never released the forward pass"
        return self.real(pixels)


def _files(n, data):
    return [("files", (f"{i}.png", data, "image/png")) for i in range(n)]


def _wait_until(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


async def _await_until(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


def test_admission_counts_images_and_estimates_retry_after():
    adm = Admission(capacity=5)
    a = adm.admit(1)
    assert a is not None and adm.pending == 1
    assert adm.grow(a, 4) and adm.pending == 4
    b = adm.admit(1)
    assert b is not None and adm.pending == 5 and not adm.accepting
    assert adm.admit(1) is None and not adm.grow(b, 2) and b.images == 1 and adm.refused == 2
    assert adm.retry_after() == 5  # nothing answered yet: the fallback
    a.answered = True
    adm.release(a)
    assert adm.pending == 1 and a.images == 0 and adm.accepting
    # 4 images answered within the last second -> ~4 images/s; 1 pending -> 1 s
    assert adm.retry_after() == 1
    adm.close()
    assert adm.admit(1) is None and not adm.accepting
    with pytest.raises(ValueError, match="capacity must be a positive integer"):
        Admission(capacity=0)


def test_queue_bound_gives_503_with_retry_after_and_health_stays_answered(tiny, engine, monkeypatch):
    held = HeldPasses(engine, monkeypatch)
    app = create_app(engine, max_files=2, max_queued_images=3, deadline_s=30)
    png = tiny["png"]

    async def scenario():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=30) as c:
            first = asyncio.create_task(c.post("/v1/detect", files=_files(2, png)))  # 2 images: in a pass
            await _await_until(held.entered.is_set)
            assert app.state.admission.pending == 2
            # 2 more images do not fit (2 + 2 > 3): refused at once, after the first part of the ticket
            t0 = time.perf_counter()
            r = await c.post("/v1/detect", files=_files(2, png))
            assert r.status_code == 503 and int(r.headers["retry-after"]) >= 1, r.text
            assert "do not fit" in r.json()["detail"] and time.perf_counter() - t0 < 5
            second = asyncio.create_task(c.post("/v1/detect", files=_files(1, png)))  # fits: 3 of 3
            await _await_until(lambda: app.state.admission.pending == 3)
            # full: a new request is refused before its body is read; liveness and readiness still answer
            r = await c.post("/v1/detect", files=_files(1, png))
            assert r.status_code == 503 and int(r.headers["retry-after"]) >= 1
            assert "busy: 3 images queued" in r.json()["detail"]
            health = await asyncio.wait_for(c.get("/healthz"), timeout=5)
            assert health.status_code == 200 and health.json() == {"status": "ok"}
            ready = await c.get("/readyz")
            assert ready.status_code == 503 and int(ready.headers["retry-after"]) >= 1
            body = ready.json()
            assert {k: body[k] for k in ("status", "queued_images", "max_queued_images")} == {
                "status": "full", "queued_images": 3, "max_queued_images": 3}  # fmt: skip
            assert 0 < body["max_loop_lag_s"] <= 15 and 0 <= body["loop_lag_s"] < 15
            assert not first.done() and not second.done()
            held.release.set()
            results = [await asyncio.wait_for(t, 20) for t in (first, second)]
            ready_after = await c.get("/readyz")
            return results, ready_after

    try:
        (r1, r2), ready = asyncio.run(scenario())
    finally:
        held.release.set()
    assert [r1.status_code, r2.status_code] == [200, 200]
    assert len(r1.json()["results"]) == 2 and len(r2.json()["results"]) == 1
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    assert app.state.admission.pending == 0 and app.state.admission.refused == 2


def test_deadline_drops_a_queued_request_with_503(tiny, engine, monkeypatch):
    held = HeldPasses(engine, monkeypatch)
    app = create_app(engine, max_files=2, max_queued_images=4, deadline_s=0.4)
    png = tiny["png"]

    async def scenario():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=30) as c:
            first = asyncio.create_task(c.post("/v1/detect", files=_files(1, png)))
            await _await_until(held.entered.is_set)
            t0 = time.perf_counter()
            late = await c.post("/v1/detect", files=_files(1, png))  # queued behind the held pass
            waited = time.perf_counter() - t0
            assert not first.done()
            held.release.set()
            return await asyncio.wait_for(first, 20), late, waited

    try:
        first, late, waited = asyncio.run(scenario())
    finally:
        held.release.set()
    assert late.status_code == 503 and int(late.headers["retry-after"]) >= 1
    assert "deadline of 0.4 s" in late.json()["detail"]
    assert 0.3 < waited < 5
    # the first request was in its pass when its deadline passed: it finished; the late one never ran
    assert first.status_code == 200 and held.sizes == [1] and engine.dropped == 1
    assert app.state.admission.pending == 0


def test_cancelled_request_leaves_the_engine_queue(engine, monkeypatch):
    held = HeldPasses(engine, monkeypatch)
    a = np.zeros((2, 3, 224, 224), np.float32)
    b = np.ones((3, 3, 224, 224), np.float32)
    out, errors, cancel = {}, {}, threading.Event()

    def call(name, pixels, **kw):
        try:
            out[name] = engine.probabilities(pixels, **kw)
        except Exception as exc:  # noqa: BLE001 -- the test inspects it
            errors[name] = exc

    ta = threading.Thread(target=call, args=("a", a))
    ta.start()
    assert held.entered.wait(10)
    tb = threading.Thread(target=call, args=("b", b), kwargs={"cancel": cancel})
    tb.start()
    _wait_until(lambda: engine.queued_inputs == 3)
    cancel.set()
    tb.join(5)
    assert not tb.is_alive() and isinstance(errors.get("b"), RequestCancelled)
    assert engine.queued_inputs == 0 and engine.dropped == 1
    held.release.set()
    ta.join(20)
    assert out["a"].shape == (2,) and held.sizes == [2]  # b never cost a pass
    # a deadline already past: dropped without a pass, whoever notices first
    with pytest.raises(DeadlineExceeded):
        engine.probabilities(b, deadline=time.monotonic() - 1)
    assert held.sizes == [2] and engine.dropped == 2
    # and the engine still scores afterwards
    np.testing.assert_allclose(engine.probabilities(a), out["a"])


def _raw_request(data: bytes):
    req = httpx.Request("POST", "http://test/v1/detect", files=_files(1, data))
    body = req.read()
    headers = [(k.lower().encode(), v.encode()) for k, v in req.headers.items()]
    return body, headers


def test_request_whose_client_went_away_is_dropped_from_the_queue(tiny, engine, monkeypatch):
    """An ASGI client that sends its body, then disconnects while its request waits behind a held pass."""
    held = HeldPasses(engine, monkeypatch)
    app = create_app(engine, max_files=2, max_queued_images=4)
    body, headers = _raw_request(tiny["png"])
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
        "path": "/v1/detect", "raw_path": b"/v1/detect", "query_string": b"", "root_path": "", "headers": headers,
        "client": ("127.0.0.1", 50000), "server": ("test", 80),
    }  # fmt: skip
    blocker = threading.Thread(target=engine.probabilities, args=(np.zeros((1, 3, 224, 224), np.float32),))
    blocker.start()
    assert held.entered.wait(10)
    sent: list[dict] = []

    async def scenario():
        hang_up = asyncio.Event()
        messages = [{"type": "http.request", "body": body, "more_body": False}]

        async def receive():
            if messages:
                return messages.pop(0)
            await hang_up.wait()
            return {"type": "http.disconnect"}

        async def send(message):
            sent.append(message)

        call = asyncio.create_task(app(scope, receive, send))
        await _await_until(lambda: engine.queued_inputs == 1)
        assert app.state.admission.pending == 1
        hang_up.set()
        await asyncio.wait_for(call, 5)

    try:
        asyncio.run(scenario())
        assert engine.queued_inputs == 0 and engine.dropped == 1
        assert app.state.admission.pending == 0
        assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 499
    finally:
        held.release.set()
        blocker.join(20)
    assert held.sizes == [1]  # only the blocker's pass ran


def test_queue_options_are_checked(engine):
    with pytest.raises(ValueError, match=r"max_queued_images \(3\) must be at least max_files \(4\)"):
        create_app(engine, max_files=4, max_queued_images=3)
    for bad in (0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="deadline_s must be a positive number"):
            create_app(engine, deadline_s=bad)


def test_a_refused_request_has_its_small_body_discarded_not_parsed(engine):
    """A full server reads a refused upload of up to 2 MiB to its end (so that closing the connection does not
    reset it under the client's feet) without parsing it; a larger declared body is not read at all."""
    app = create_app(engine, max_files=2, max_queued_images=2)
    app.state.admission.admit(2)  # full
    chunks = [b"--x\r\n", b"a" * 100_000, b"--x--\r\n"]

    async def call(declared: int):
        messages = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]
        taken, sent = [], []

        async def receive():
            if messages:
                taken.append(messages.pop(0))
                return taken[-1]
            raise AssertionError("read past the end of the body")

        async def send(message):
            sent.append(message)

        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
            "path": "/v1/detect", "raw_path": b"/v1/detect", "query_string": b"", "root_path": "",
            "headers": [(b"content-type", b"multipart/form-data; boundary=x"),
                        (b"content-length", str(declared).encode())],
            "client": ("127.0.0.1", 50000), "server": ("test", 80),
        }  # fmt: skip
        await app(scope, receive, send)
        return len(taken), sent[0]["status"], dict(sent[0]["headers"])

    n, status, headers = asyncio.run(call(sum(map(len, chunks))))
    assert (n, status) == (3, 503) and int(headers[b"retry-after"]) >= 1
    n, status, _ = asyncio.run(call(3 * 2**20))
    assert (n, status) == (0, 503)


def _no_probe(monkeypatch):
    """The engine's once-a-second probe pass off (tests whose passes are held or slow on purpose)."""
    import causalclip.detect.engine as engine_module

    monkeypatch.setattr(engine_module, "_PROBE_AFTER_S", 3600.0)


def test_a_pass_is_not_started_for_a_request_it_would_answer_late(engine, monkeypatch):
    """The deadline is when the answer is due: a request whose pass would end after it is dropped at once, not
    scored late (before, a pass started just before the deadline answered after it)."""

    def slow(pixels):  # 1 s per input, whatever the machine
        time.sleep(1.0 * len(pixels))
        return np.zeros(len(pixels))

    _no_probe(monkeypatch)
    monkeypatch.setattr(engine, "_forward", slow)
    monkeypatch.setattr(engine, "predicted_pass_seconds", lambda n: 1.0 * n)
    engine.batch_size = 1
    x = np.zeros((1, 3, 224, 224), np.float32)
    due = time.monotonic() + 1.5  # one pass fits, two in a row do not
    done, errors = {}, {}

    def call(name):
        try:
            engine.probabilities(x, deadline=due)
            done[name] = time.monotonic()
        except DeadlineExceeded as exc:
            errors[name] = (exc, time.monotonic())

    threads = [threading.Thread(target=call, args=(n,)) for n in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert len(done) == 1 and len(errors) == 1, (done, errors)
    (exc, when) = next(iter(errors.values()))
    assert "would not be answered by its deadline" in str(exc)
    assert when < due  # refused as soon as the first pass ended, not when the deadline came
    assert engine.passes == 1 and engine.dropped == 1


def test_a_pass_does_not_take_a_job_that_would_make_another_late(engine, monkeypatch):
    """Batching two queued jobs into one pass would answer the first after its deadline: they get a pass each."""
    _no_probe(monkeypatch)
    held = HeldPasses(engine, monkeypatch)
    monkeypatch.setattr(engine, "predicted_pass_seconds", lambda n: 10.0 * n)
    engine.batch_size = 2
    x = np.zeros((1, 3, 224, 224), np.float32)
    out, errors = {}, {}

    def call(name, **kw):
        try:
            out[name] = engine.probabilities(x, **kw)
        except Exception as exc:  # noqa: BLE001 -- the test inspects it
            errors[name] = exc

    first = threading.Thread(target=call, args=("held",))
    first.start()
    assert held.entered.wait(10)
    due = time.monotonic() + 15  # a pass of 1 input (10 s predicted) fits before it, a pass of 2 (20 s) does not
    a = threading.Thread(target=call, args=("a",), kwargs={"deadline": due})
    a.start()
    _wait_until(lambda: engine.queued_inputs == 1)
    b = threading.Thread(target=call, args=("b",))
    b.start()
    _wait_until(lambda: engine.queued_inputs == 2)
    held.release.set()
    for t in (first, a, b):
        t.join(20)
    assert not errors and set(out) == {"held", "a", "b"}
    assert held.sizes == [1, 1, 1]  # without the check: [1, 2]


def test_a_stale_prediction_is_measured_again_instead_of_refusing_everything(engine, monkeypatch):
    """One pass slower than every deadline (a stall), then the machine is fast again: requests are scored again
    at once, because a pass runs (as a probe) when none has run for a second. Without it every later request
    would be dropped on the stale prediction and no pass would ever measure a new one."""
    slow_next = [1.5]

    def forward(pixels):
        time.sleep(slow_next.pop() if slow_next else 0.0)
        return np.zeros(len(pixels))

    monkeypatch.setattr(engine, "_forward", forward)
    x = np.zeros((1, 3, 224, 224), np.float32)
    engine.probabilities(x)  # the stall: 1.5 s for one input
    assert engine.predicted_pass_seconds(1) >= 1.4
    scored = 0
    for _ in range(5):
        try:
            engine.probabilities(x, deadline=time.monotonic() + 1.0)
            scored += 1
        except DeadlineExceeded:
            pass
    assert scored == 5 and engine.predicted_pass_seconds(1) < 1.0
    # and a request of no inputs is answered (it measures nothing)
    assert engine.probabilities(np.zeros((0, 3, 224, 224), np.float32)).shape == (0,)


def test_loop_lag_counts_a_blocked_loop_at_once():
    """While the loop is blocked its timer cannot fire: current() reports how long it is overdue, not 0."""
    from causalclip.serve.admission import LoopLag

    lag = LoopLag(interval=0.02, window=0.5)

    async def scenario():
        lag.ensure_running()
        await asyncio.sleep(0.1)
        calm = lag.current()
        time.sleep(0.4)  # the loop is blocked: the timer is overdue
        blocked = lag.current()
        await asyncio.sleep(0.05)  # the timer fires late and records the lag
        after = lag.current()
        await asyncio.sleep(0.7)  # older than the window
        return calm, blocked, after, lag.current()

    calm, blocked, after, later = asyncio.run(scenario())
    assert calm < 0.2 and blocked >= 0.35 and after >= 0.35 and later < 0.2, (calm, blocked, after, later)


def test_a_lagging_event_loop_refuses_before_parsing_and_counts_the_wait(tiny, engine):
    """A request that reaches admission while the event loop runs too far behind to answer it in time (twice the
    lag plus one input's pass reach the deadline) gets 503 at once, with a Retry-After of at least the lag;
    readiness says "overloaded"."""
    app = create_app(engine, max_files=2, max_queued_images=4, deadline_s=2.0)
    png = tiny["png"]

    async def scenario():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=30) as c:
            assert (await c.get("/healthz")).status_code == 200  # starts the lag measurement
            await asyncio.sleep(0.1)
            ok = await c.post("/v1/detect", files=_files(1, png))
            time.sleep(1.3)  # the event loop is blocked (as by a flood of connections to read) for 1.3 s
            refused = await c.post("/v1/detect", files=_files(1, png))
            ready = await c.get("/readyz")
            await asyncio.sleep(0.7)  # the lag leaves the window
            again = await c.post("/v1/detect", files=_files(1, png))
            return ok, refused, ready, again

    ok, refused, ready, again = asyncio.run(scenario())
    assert ok.status_code == 200 and again.status_code == 200, (ok.text, again.text)
    assert refused.status_code == 503 and int(refused.headers["retry-after"]) >= 2  # ceil(1.3 s)
    assert "overloaded" in refused.json()["detail"]
    body = ready.json()
    assert ready.status_code == 503 and body["status"] == "overloaded" and body["loop_lag_s"] > 1.0
    assert 0.9 < body["max_loop_lag_s"] <= 1.0  # (2 s - one input's pass) / 2
    assert app.state.admission.pending == 0

    # the lag a request met before admission is taken off its deadline
    from causalclip.serve.admission import Admission

    t0 = time.monotonic()
    ticket = Admission(capacity=2).admit(1, waited=0.3)
    assert t0 - 0.31 <= ticket.arrived <= time.monotonic() - 0.3


def test_a_request_admitted_under_lag_has_it_counted_twice_into_its_deadline(tiny, engine, monkeypatch):
    """Admitted while the loop runs 0.3 s behind (under the bound of about 0.5 s): its arrival is taken 0.3 s
    earlier, and 0.3 s more are kept for the answer's way back, so the engine gets about 0.6 s less."""
    app = create_app(engine, max_files=2, max_queued_images=4, deadline_s=1.0)
    seen = []
    real = engine.score_prepared

    def record(items, *, deadline=None, cancel=None):
        seen.append(deadline - time.monotonic())
        return real(items, deadline=None, cancel=cancel)

    monkeypatch.setattr(engine, "score_prepared", record)

    async def scenario():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=30) as c:
            assert (await c.get("/healthz")).status_code == 200
            await asyncio.sleep(0.1)
            calm = await c.post("/v1/detect", files=_files(1, tiny["png"]))
            time.sleep(0.3)
            lagged = await c.post("/v1/detect", files=_files(1, tiny["png"]))
            return calm, lagged

    calm, lagged = asyncio.run(scenario())
    assert calm.status_code == 200 and lagged.status_code == 200
    assert seen[0] <= 1.0 and seen[0] - seen[1] > 0.45, seen


def test_pass_time_prediction_follows_a_slowdown_at_once_and_forgets_an_old_outlier(engine, monkeypatch):
    real, delays = engine._forward, []

    def timed(pixels):
        time.sleep(delays.pop(0))
        return real(pixels)

    monkeypatch.setattr(engine, "_forward", timed)
    x = np.zeros((2, 3, 224, 224), np.float32)
    assert engine.predicted_pass_seconds(2) == 0.0  # nothing measured yet

    def run(*seconds):
        for s in seconds:
            delays.append(s)
            engine.probabilities(x)

    run(0.3, *[0.02] * 8)  # a slow first pass, then 8 fast ones: the median forgets it
    assert engine.predicted_pass_seconds(2) < 0.1
    run(0.4)  # a slowdown begins: the very next prediction counts it
    assert engine.predicted_pass_seconds(2) >= 0.4
    run(0.02)  # over: back to the median
    assert engine.predicted_pass_seconds(2) < 0.1


def test_admitted_answers_say_the_servers_own_time_in_server_timing(tiny, engine, monkeypatch):
    """Every answer to an admitted request carries Server-Timing total;dur=<ms from its estimated arrival>: at
    least the time its forward pass was held here, at most what the client measured."""
    held = HeldPasses(engine, monkeypatch)
    app = create_app(engine, max_files=2, max_queued_images=4, deadline_s=30)

    async def scenario():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=30) as c:
            t0 = time.perf_counter()
            task = asyncio.create_task(c.post("/v1/detect", files=_files(1, tiny["png"])))
            await _await_until(held.entered.is_set)
            await asyncio.sleep(0.3)
            held.release.set()
            r = await asyncio.wait_for(task, 20)
            return r, time.perf_counter() - t0, await c.get("/healthz")

    try:
        r, elapsed, health = asyncio.run(scenario())
    finally:
        held.release.set()
    assert r.status_code == 200
    name, _, value = r.headers["server-timing"].partition(";dur=")
    assert name == "total" and 300 <= float(value) <= 1000 * elapsed
    assert "server-timing" not in health.headers  # only admitted work is timed
