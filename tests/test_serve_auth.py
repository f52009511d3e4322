"""API keys: required on /v1/ when the server listens beyond loopback (a clear start-up error otherwise, --no-auth
to opt out), refused when missing or wrong, compared with hmac.compare_digest, and never asked by the health
routes, the page or the docs."""

from __future__ import annotations

import hmac

import pytest

from _needs import need as _need
from causalclip.serve.auth import API_KEY_ENV, AuthConfigError, is_loopback, resolve_api_key

KEY = "k3y-0123456789abcdefghij"


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.8.9.10", True), ("::1", True), ("[::1]", True), ("localhost", True),
     ("LocalHost", True), ("0.0.0.0", False), ("::", False), ("192.168.1.20", False), ("10.0.0.1", False),
     ("example.org", False), ("", False)],
)  # fmt: skip
def test_is_loopback(host, loopback):
    assert is_loopback(host) is loopback


def test_key_is_required_beyond_loopback(tmp_path):
    assert resolve_api_key(host="127.0.0.1", key_file=None, no_auth=False, environ={}) is None
    for host in ("0.0.0.0", "192.168.1.20", "myhost"):
        with pytest.raises(AuthConfigError, match=r"needs a key: --api-key-file KEYFILE or \$CAUSALCLIP_API_KEY"):
            resolve_api_key(host=host, key_file=None, no_auth=False, environ={})
        assert resolve_api_key(host=host, key_file=None, no_auth=True, environ={}) is None
    f = tmp_path / "key"
    f.write_text(KEY + "\n")
    assert resolve_api_key(host="0.0.0.0", key_file=f, no_auth=False, environ={}) == KEY
    assert resolve_api_key(host="0.0.0.0", key_file=None, no_auth=False, environ={API_KEY_ENV: KEY}) == KEY
    # a key on loopback is honoured too
    assert resolve_api_key(host="127.0.0.1", key_file=f, no_auth=False, environ={}) == KEY


def test_bad_key_options_are_refused(tmp_path):
    f = tmp_path / "key"
    f.write_text(KEY)
    with pytest.raises(AuthConfigError, match="given twice"):
        resolve_api_key(host="0.0.0.0", key_file=f, no_auth=False, environ={API_KEY_ENV: KEY})
    with pytest.raises(AuthConfigError, match="--no-auth and an API key"):
        resolve_api_key(host="0.0.0.0", key_file=f, no_auth=True, environ={})
    with pytest.raises(AuthConfigError, match=f"{tmp_path / 'missing'}: cannot read the API key file"):
        resolve_api_key(host="0.0.0.0", key_file=tmp_path / "missing", no_auth=False, environ={})
    f.write_text("short\n")
    with pytest.raises(AuthConfigError, match="5 characters, at least 16"):
        resolve_api_key(host="0.0.0.0", key_file=f, no_auth=False, environ={})
    f.write_text("a key with spaces in it\n")
    with pytest.raises(AuthConfigError, match="printable ASCII without spaces"):
        resolve_api_key(host="0.0.0.0", key_file=f, no_auth=False, environ={})


# ---- the app and the command (need the serve extra)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    _need("transformers")
    _need("fastapi")
    _need("python_multipart")
    from fastapi.testclient import TestClient

    from _detector_factory import make_tiny_detector, write_image
    from causalclip.detect.engine import DetectionEngine
    from causalclip.serve.app import create_app

    root = tmp_path_factory.mktemp("auth")
    det = make_tiny_detector(root)
    png = write_image(root / "a.png", (64, 48), seed=2).read_bytes()
    engine = DetectionEngine(det)
    with TestClient(create_app(engine, api_key=KEY)) as client:
        yield {"client": client, "png": png, "detector": det}


def _files(png):
    return [("files", ("a.png", png, "image/png"))]


def test_api_needs_the_key_and_health_stays_open(served):
    c, png = served["client"], served["png"]
    good = {"Authorization": f"Bearer {KEY}"}
    for r in (c.get("/v1/model"), c.post("/v1/detect", files=_files(png))):
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert "missing API key" in r.json()["detail"]
    for headers in ({"Authorization": f"Bearer {KEY[:-1]}x"}, {"Authorization": f"Bearer {KEY}0"},
                    {"Authorization": f"Basic {KEY}"}, {"Authorization": KEY}, {"X-API-Key": KEY}):  # fmt: skip
        r = c.get("/v1/model", headers=headers)
        assert r.status_code == 401, headers
    assert c.get("/v1/model", headers={"Authorization": f"Bearer {KEY[:-1]}x"}).json()["detail"] == "wrong API key"
    assert c.get("/v1/model", headers=good).status_code == 200
    r = c.post("/v1/detect", files=_files(png), headers={"authorization": f"bearer {KEY}"})  # scheme: any case
    assert r.status_code == 200 and r.json()["results"][0]["name"] == "a.png"
    # a refused request is refused before its body is read: nothing is admitted
    assert c.app.state.admission.pending == 0
    for path in ("/healthz", "/readyz", "/", "/openapi.json", "/docs"):
        assert c.get(path).status_code == 200, path
    # the OpenAPI document tells clients (and Swagger UI) about the bearer key
    spec = c.get("/openapi.json").json()
    assert spec["components"]["securitySchemes"]["HTTPBearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "the server's API key",
    }
    assert "401" in spec["paths"]["/v1/detect"]["post"]["responses"]


def test_key_is_compared_in_constant_time(served, monkeypatch):
    calls = []
    real = hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    c = served["client"]
    assert c.get("/v1/model", headers={"Authorization": "Bearer nope-nope-nope-nope"}).status_code == 401
    assert c.get("/v1/model", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
    assert calls == [(KEY.encode(), b"nope-nope-nope-nope"), (KEY.encode(), KEY.encode())]


def test_serve_command_refuses_to_listen_beyond_loopback_without_a_key(served, tmp_path, monkeypatch, capsys):
    import causalclip.cli.serve as serve_cli
    import causalclip.detect.engine as detect_module
    from causalclip.cli.main import main

    seen, loads = {}, []
    monkeypatch.setattr(serve_cli, "run_server", lambda app, **kw: seen.update(app=app, **kw))
    real_load = detect_module.load_backbone
    monkeypatch.setattr(detect_module, "load_backbone", lambda *a, **k: loads.append(a) or real_load(*a, **k))
    monkeypatch.delenv(API_KEY_ENV, raising=False)
    det = str(served["detector"])
    assert main(["serve", det, "--host", "0.0.0.0"]) == 2
    err = capsys.readouterr().err
    assert "listening on '0.0.0.0' reaches beyond this machine, so the API needs a key" in err and "--no-auth" in err
    assert loads == [] and not seen  # refused before the model was loaded
    key_file = tmp_path / "key"
    key_file.write_text(KEY)
    assert main(["serve", det, "--host", "0.0.0.0", "--api-key-file", str(key_file)]) == 0
    assert seen["host"] == "0.0.0.0" and "API key required" in capsys.readouterr().err
    from fastapi.testclient import TestClient

    with TestClient(seen["app"]) as c:
        assert c.get("/v1/model").status_code == 401
        assert c.get("/v1/model", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
    monkeypatch.setenv(API_KEY_ENV, KEY)
    assert main(["serve", det, "--host", "0.0.0.0"]) == 0
    with TestClient(seen["app"]) as c:
        assert c.get("/v1/model").status_code == 401
    monkeypatch.delenv(API_KEY_ENV)
    assert main(["serve", det, "--host", "0.0.0.0", "--no-auth"]) == 0
    assert "no authentication" in capsys.readouterr().err
    with TestClient(seen["app"]) as c:
        assert c.get("/v1/model").status_code == 200
