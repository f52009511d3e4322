"""Graceful shutdown of a real `causalclip serve` process: on SIGTERM it stops accepting connections, finishes the
request in flight, cancels what is still unfinished when the grace period ends, and exits with status 0.

A request is "in flight" here because its client is still uploading the body when SIGTERM arrives (a raw socket
sends half of it), so the test needs no slow model and no hook inside the server."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from _needs import need as _need

_need("transformers")
_need("fastapi")
_need("python_multipart")
_need("uvicorn")
httpx = _need("httpx")

from _detector_factory import make_tiny_detector, write_image  # noqa: E402

GRACE_S = 4.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _request_bytes(port: int, png: bytes) -> tuple[bytes, bytes]:
    """(head, body) of a multipart POST /v1/detect with one image."""
    req = httpx.Request("POST", f"http://127.0.0.1:{port}/v1/detect", files=[("files", ("a.png", png, "image/png"))])
    body = req.read()
    lines = ["POST /v1/detect HTTP/1.1", f"Host: 127.0.0.1:{port}", f"Content-Type: {req.headers['content-type']}"]
    lines += [f"Content-Length: {len(body)}", "Connection: close", "", ""]
    return "\r\n".join(lines).encode(), body


def _read_response(sock: socket.socket) -> tuple[int, bytes]:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return (int(head.split(b" ", 2)[1]) if head else 0), body


def _can_connect(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def test_sigterm_finishes_in_flight_requests_and_exits_0(tmp_path):
    det = make_tiny_detector(tmp_path)
    png = write_image(tmp_path / "a.png", (64, 48), seed=3).read_bytes()
    port = _free_port()
    cmd = [sys.executable, "-m", "causalclip", "serve", str(det), "--port", str(port), "--log-level", "warning"]
    cmd += ["--threads", "1", "--shutdown-grace", str(GRACE_S)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    server = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    socks: list[socket.socket] = []
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, server.stdout.read().decode(errors="replace")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the server did not start within 120 s"
            time.sleep(0.2)
        head, body = _request_bytes(port, png)
        finishing, abandoned = (socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(2))
        socks += [finishing, abandoned]
        for s in (finishing, abandoned):  # both requests in flight: headers and half of the body sent
            s.sendall(head + body[: len(body) // 2])
        time.sleep(1.0)  # let the server read them
        t_term = time.monotonic()
        server.send_signal(signal.SIGTERM)
        # it stops accepting new connections
        for _ in range(50):
            if not _can_connect(port):
                break
            time.sleep(0.1)
        else:
            pytest.fail("the server still accepted connections 5 s after SIGTERM")
        assert server.poll() is None, "the server exited with a request in flight"
        # the first client finishes its upload after SIGTERM: the request is scored and answered
        finishing.sendall(body[len(body) // 2 :])
        status, payload = _read_response(finishing)
        assert status == 200, payload
        assert json.loads(payload)["results"][0]["name"] == "a.png"
        # the second never finishes: the grace period ends, it is cancelled, and the process exits 0
        rc = server.wait(timeout=GRACE_S + 30)
        elapsed = time.monotonic() - t_term
        output = server.stdout.read().decode(errors="replace")
        assert rc == 0, output
        assert GRACE_S - 0.5 < elapsed < GRACE_S + 20, (elapsed, output)
        abandoned.settimeout(5)
        assert _read_response(abandoned)[0] != 200
    finally:
        for s in socks:
            s.close()
        if server.poll() is None:
            server.kill()
            server.wait()
