"""The HTTP API through the test client: scores equal the engine's, every limit and refusal, the model loaded once,
inference off the event loop, and the self-contained page."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import struct
import threading
import zlib

import numpy as np
import pytest

from _needs import need as _need

_need("transformers")
_need("fastapi")
_need("python_multipart")
httpx = _need("httpx")
from fastapi.testclient import TestClient  # noqa: E402

import causalclip.detect.engine as detect_module  # noqa: E402
from _detector_factory import make_tiny_detector, write_image  # noqa: E402
from causalclip.detect.engine import DetectionEngine  # noqa: E402
from causalclip.detector.folder import DetectorError  # noqa: E402
from causalclip.serve.app import create_app  # noqa: E402

LIMIT = 400_000  # per file
REQUEST_LIMIT = 1_000_000


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    det = make_tiny_detector(root)
    imgs = [
        write_image(root / "imgs" / f"{i}.png", s, seed=i) for i, s in enumerate([(224, 224), (320, 240), (90, 90)])
    ]
    return {"root": root, "detector": det, "imgs": imgs}


@pytest.fixture(scope="module")
def engine(tiny):
    return DetectionEngine(tiny["detector"])


@pytest.fixture(scope="module")
def client(engine):
    app = create_app(engine, max_upload_bytes=LIMIT, max_request_bytes=REQUEST_LIMIT, max_files=4)
    with TestClient(app) as c:
        yield c


def _files(*items):
    return [("files", (name, data, "application/octet-stream")) for name, data in items]


def _bomb_png(width=100_000, height=100_000) -> bytes:
    """A valid PNG header that declares a huge image (and no pixel data): a decompression bomb."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def test_detect_scores_equal_the_engine(client, engine, tiny):
    expected = list(engine.detect_paths(tiny["imgs"]))
    r = client.post("/v1/detect", files=_files(*[(p.name, p.read_bytes()) for p in tiny["imgs"]]))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["threshold"] == engine.threshold
    assert [x["name"] for x in body["results"]] == [p.name for p in tiny["imgs"]]
    np.testing.assert_allclose([x["fake_probability"] for x in body["results"]], [d.fake_probability for d in expected])
    assert [x["label"] for x in body["results"]] == [d.label for d in expected]
    assert all(x["crops"] == 1 for x in body["results"])


def test_unusable_images_get_422_naming_each_file(client, tiny):
    good = tiny["imgs"][0].read_bytes()
    cases = {
        "notes.txt": (b"just some text", "not an image"),
        "broken.png": (good[:300], "truncated"),
        "bomb.png": (_bomb_png(), "decompression bomb"),
        "empty.jpg": (b"", "not an image"),
    }
    for name, (data, reason) in cases.items():
        r = client.post("/v1/detect", files=_files((name, data)))
        assert r.status_code == 422, (name, r.text)
        (err,) = r.json()["errors"]
        assert err["name"] == name and reason in err["error"]
    # one bad file among good ones: 422 listing only the bad one, nothing scored
    r = client.post("/v1/detect", files=_files(("a.png", good), ("notes.txt", b"text"), ("b.png", good)))
    assert r.status_code == 422
    assert [e["name"] for e in r.json()["errors"]] == ["notes.txt"]
    assert "1 of 3" in r.json()["detail"] and "results" not in r.json()


def test_pixel_limit_applies_to_real_images(engine, tiny):
    app = create_app(tiny["detector"], max_pixels=50_000)  # 320 x 240 = 76,800 pixels is over it
    with TestClient(app) as c:
        r = c.post("/v1/detect", files=_files(("photo.png", tiny["imgs"][1].read_bytes())))
        assert r.status_code == 422
        assert "decompression bomb: 320 x 240 = 76800 pixels > 50000" in r.json()["errors"][0]["error"]
        assert c.post("/v1/detect", files=_files(("small.png", tiny["imgs"][2].read_bytes()))).status_code == 200


def test_size_limits_give_413_with_a_message(client, tiny):
    good = tiny["imgs"][0].read_bytes()
    # one file over the per-file limit (but the request under its limit)
    big = good + b"\0" * (LIMIT + 1 - len(good))
    r = client.post("/v1/detect", files=_files(("big.png", big)))
    assert r.status_code == 413 and "'big.png'" in r.json()["detail"] and "per file" in r.json()["detail"]
    # a request over the request limit, refused from Content-Length before parsing
    r = client.post("/v1/detect", files=_files(*[(f"{i}.png", big[:LIMIT]) for i in range(3)]))
    assert r.status_code == 413 and "request body larger than" in r.json()["detail"]
    # the same without Content-Length (chunked): counted while streaming
    payload = b"x" * (REQUEST_LIMIT + 10)

    def chunks():
        for i in range(0, len(payload), 65536):
            yield payload[i : i + 65536]

    r = client.post("/v1/detect", content=chunks(), headers={"content-type": "multipart/form-data; boundary=zz"})
    assert r.status_code == 413 and "request body larger than" in r.json()["detail"]
    # too many files
    r = client.post("/v1/detect", files=_files(*[(f"{i}.png", good) for i in range(5)]))
    assert r.status_code == 413 and "5 files; the limit is 4" in r.json()["detail"]
    # and the server still works afterwards
    assert client.post("/v1/detect", files=_files(("ok.png", good))).status_code == 200


def test_requests_without_files_are_4xx(client):
    for r in (client.post("/v1/detect"), client.post("/v1/detect", data={"other": "x"})):
        # the documented error shape (ErrorResponse), not FastAPI's validation list (a schemathesis finding)
        assert r.status_code == 422, r.text
        body = r.json()
        assert isinstance(body["detail"], str) and "'files'" in body["detail"]
        assert body["errors"] == [{"name": "body.files", "error": "Field required"}]
    assert client.get("/v1/detect").status_code == 405


def test_schema_says_files_may_not_be_empty(client):
    """The OpenAPI description and the server agree: at least one 'files' part (a schemathesis finding: the
    schema allowed an empty list, which multipart sends as no part at all, and the server refused it)."""
    spec = client.get("/openapi.json").json()
    ref = spec["paths"]["/v1/detect"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]["$ref"]
    body = spec["components"]["schemas"][ref.rsplit("/", 1)[-1]]
    assert body["required"] == ["files"] and body["properties"]["files"]["minItems"] == 1
    detect = spec["paths"]["/v1/detect"]["post"]["responses"]
    assert {"200", "413", "422", "503"} <= set(detect)
    assert detect["422"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorResponse")
    assert "Retry-After" in detect["503"]["headers"]


def test_model_health_and_docs(client, engine, tiny):
    m = client.get("/v1/model").json()
    assert m["detector"] == str(tiny["detector"]) and m["threshold"] == engine.threshold
    assert m["feature_dim"] == 16 and m["head"] == "univfd" and m["backbone"] == str(tiny["root"] / "clip")
    assert m["limits"] == {"max_upload_bytes": LIMIT, "max_request_bytes": REQUEST_LIMIT, "max_files": 4,
                           "max_pixels": engine.max_pixels, "max_queued_images": 64,
                           "deadline_s": 30.0}  # fmt: skip
    assert m["provenance"]["precision"] == "float32" and m["crops"] == "center"
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz").json()
    assert {k: ready[k] for k in ("status", "queued_images", "max_queued_images")} == {
        "status": "ready", "queued_images": 0, "max_queued_images": 64}  # fmt: skip
    spec = client.get("/openapi.json").json()
    body = spec["paths"]["/v1/detect"]["post"]["requestBody"]["content"]
    assert "multipart/form-data" in body and {"/v1/model", "/healthz", "/readyz"} <= set(spec["paths"])
    docs = client.get("/docs")
    assert docs.status_code == 200 and "openapi.json" in docs.text
    if "/docs-assets/" in docs.text:  # swagger-ui-bundle installed: the docs page loads nothing from a CDN
        assert "cdn" not in docs.text.lower()
        assert client.get("/docs-assets/swagger-ui-bundle.js").status_code == 200


def test_page_is_self_contained(client):
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    html = r.text
    assert 'id="drop"' in html and 'type="file"' in html and "v1/detect" in html
    # no external assets: no absolute URLs in src/href/url(), no @import, and a CSP that forbids them
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)
    assert not re.search(r"url\(|@import|https?://", html)
    csp = r.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp


def test_model_is_loaded_once(tiny, monkeypatch):
    calls = []
    real = detect_module.load_backbone

    def counting(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(detect_module, "load_backbone", counting)
    app = create_app(tiny["detector"])
    assert len(calls) == 1
    with TestClient(app) as c:
        for _ in range(3):
            assert c.post("/v1/detect", files=_files(("a.png", tiny["imgs"][0].read_bytes()))).status_code == 200
        assert c.get("/v1/model").status_code == 200
    assert len(calls) == 1


def test_inference_runs_off_the_event_loop(tiny, engine, monkeypatch):
    """While a forward pass is blocked, the same event loop still answers /healthz."""
    app = create_app(engine)
    entered, release = threading.Event(), threading.Event()
    real = engine.probabilities

    def blocking(pixels, **kw):
        entered.set()
        assert release.wait(10), "never released"
        return real(pixels, **kw)

    monkeypatch.setattr(engine, "probabilities", blocking)

    async def scenario():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            data = tiny["imgs"][0].read_bytes()
            pending = asyncio.create_task(c.post("/v1/detect", files=_files(("a.png", data))))
            for _ in range(200):
                if entered.is_set():
                    break
                await asyncio.sleep(0.02)
            assert entered.is_set(), "inference never started"
            health = await asyncio.wait_for(c.get("/healthz"), timeout=5)
            assert health.status_code == 200 and not pending.done()
            release.set()
            return await asyncio.wait_for(pending, timeout=10)

    try:
        r = asyncio.run(scenario())
    finally:
        release.set()
    assert r.status_code == 200 and r.json()["results"][0]["name"] == "a.png"


def test_pickled_or_broken_detector_is_refused_at_startup(tiny, tmp_path):
    det = tmp_path / "det"
    shutil.copytree(tiny["detector"], det)
    (det / "model.pt").write_bytes(b"\x80\x04K\x01.")  # a pickle
    with pytest.raises(DetectorError, match=r"pickle-based file\(s\) model\.pt"):
        create_app(det)
    (det / "model.pt").unlink()
    info = json.loads((det / "detector.json").read_text())
    info["backbone"]["dim"] = 8
    info["feature_dim"] = 8
    (det / "detector.json").write_text(json.dumps(info))
    with pytest.raises(DetectorError, match="head takes 16-d features"):
        create_app(det)
    with pytest.raises(ValueError, match="max_upload_bytes must be a positive integer"):
        create_app(tiny["detector"], max_upload_bytes=0)


def test_serve_command_loads_and_runs_uvicorn(tiny, monkeypatch, capsys):
    import causalclip.cli.serve as serve_cli
    from causalclip.cli.main import main

    seen = {}
    monkeypatch.setattr(serve_cli, "run_server", lambda app, **kw: seen.update(app=app, **kw))
    argv = ["serve", str(tiny["detector"]), "--port", "8123", "--max-upload-mb", "1", "--crops", "grid"]
    argv += ["--threads", "1", "--max-queued-images", "40", "--deadline", "7.5", "--shutdown-grace", "3"]
    assert main(argv) == 0
    assert seen["host"] == "127.0.0.1" and seen["port"] == 8123 and seen["grace_s"] == 3
    with TestClient(seen["app"]) as c:
        m = c.get("/v1/model").json()
    assert m["limits"]["max_upload_bytes"] == 2**20 and m["crops"] == "grid"
    assert m["limits"]["max_queued_images"] == 40 and m["limits"]["deadline_s"] == 7.5
    assert "http://127.0.0.1:8123/" in capsys.readouterr().err
    assert main(["serve", str(tiny["root"] / "nothing")]) == 2
    capsys.readouterr()
    assert main(["serve", str(tiny["detector"]), "--max-queued-images", "8"]) == 2
    assert "max_queued_images (8) must be at least max_files (32)" in capsys.readouterr().err


def test_serve_compile_compiles_and_warms_up_before_listening(tiny, monkeypatch, capsys):
    """--compile: the backbone goes through torch.compile with inductor (here replaced by the eager backend, which
    traces the same graphs in seconds) and is warmed up before the server would listen."""
    import torch

    import causalclip.cli.serve as serve_cli
    from causalclip.cli.main import main

    real_compile, backends, seen = torch.compile, [], {}

    def traced(model, *, backend):
        backends.append(backend)
        return real_compile(model, backend="eager")

    monkeypatch.setattr(torch, "compile", traced)
    monkeypatch.setattr(serve_cli, "run_server", lambda app, **kw: seen.update(app=app, **kw))
    torch._dynamo.reset()
    assert main(["serve", str(tiny["detector"]), "--compile", "--batch-size", "2", "--threads", "1"]) == 0
    assert backends == ["inductor"]
    with TestClient(seen["app"]) as c:
        m = c.get("/v1/model").json()
    assert m["compiled"] is True and m["warm_up_seconds"] > 0
    assert "compiled, warmed up in" in capsys.readouterr().err
    torch._dynamo.reset()
