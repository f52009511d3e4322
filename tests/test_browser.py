"""The web page in a real headless Chromium (Debian's /usr/bin/chromium driven by Playwright): drop images on it,
read each score and label, sort the list, see a broken file's reason; the page loads nothing from elsewhere."""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
import socket
import threading
import time

import pytest

from _needs import need as _need

CHROMIUM = os.environ.get("CAUSALCLIP_CHROMIUM", "/usr/bin/chromium")
_need("transformers")
_need("fastapi")
_need("python_multipart")
uvicorn = _need("uvicorn")
_need("playwright", reason="the browser test needs Playwright's Python package (pip install playwright)")
if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
    _why = f"the browser test needs Chromium at {CHROMIUM} (Debian: apt-get install -y chromium)"
    if os.environ.get("CI"):  # .ci/run installs it
        raise RuntimeError(_why)
    pytest.skip(_why, allow_module_level=True)
from playwright.sync_api import expect, sync_playwright  # noqa: E402

from _detector_factory import make_tiny_detector, write_image  # noqa: E402
from causalclip.detect.engine import DetectionEngine  # noqa: E402
from causalclip.serve.app import create_app  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("browser")
    det = make_tiny_detector(root)
    sizes = [(224, 224), (320, 240), (90, 90)]
    imgs = [write_image(root / "imgs" / f"img{i}.png", s, seed=10 + i) for i, s in enumerate(sizes)]
    return {"detector": det, "imgs": imgs}


@contextlib.contextmanager
def _serving(app):
    """uvicorn on a free loopback port, in a thread; yields the base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        srv.should_exit = True
        thread.join(10)
        sock.close()


@pytest.fixture(scope="module")
def server(tiny):
    """yields (base URL, engine)."""
    engine = DetectionEngine(tiny["detector"])
    probs = sorted(d.fake_probability for d in engine.detect_paths(tiny["imgs"]))
    engine.threshold = (probs[0] + probs[1]) / 2  # so the batch has both labels
    with _serving(create_app(engine)) as base:
        yield base, engine


@pytest.fixture
def page(server):
    base, _ = server
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        pg = browser.new_page()
        requests: list[str] = []
        pg.on("request", lambda r: requests.append(r.url))
        pg.goto(base + "/")
        expect(pg.locator("#model")).to_contain_text("fake when probability >")
        yield pg, requests
        browser.close()


DROP_JS = """
async ([files]) => {
  const dt = new DataTransfer();
  for (const f of files) {
    const bytes = Uint8Array.from(atob(f.b64), c => c.charCodeAt(0));
    dt.items.add(new File([bytes], f.name, { type: f.type }));
  }
  const zone = document.getElementById("drop");
  for (const type of ["dragenter", "dragover", "drop"]) {
    zone.dispatchEvent(new DragEvent(type, { dataTransfer: dt, bubbles: true, cancelable: true }));
  }
}
"""


def _drop(pg, files):
    payload = [{"name": n, "type": t, "b64": base64.b64encode(b).decode()} for n, b, t in files]
    pg.evaluate(DROP_JS, [payload])


def _row(pg, name):
    return pg.locator(f'#results tbody tr[data-name="{name}"]')


def test_drop_an_image_and_read_its_score(page, server, tiny):
    pg, requests = page
    base, engine = server
    img = tiny["imgs"][0]
    (expected,) = engine.detect_paths([img])
    _drop(pg, [(img.name, img.read_bytes(), "image/png")])
    row = _row(pg, img.name)
    expect(row.locator("td.label")).to_have_text(expected.label, timeout=20_000)
    prob = float(row.locator("td.prob").inner_text().split()[0])
    assert prob == pytest.approx(expected.fake_probability, abs=5e-5)
    expect(pg.locator("#summary")).to_have_text(
        "1 image(s): " + ("1 fake, 0 real" if expected.label == "fake" else "0 fake, 1 real")
    )
    # everything the page loaded came from this server (or is a local preview of the dropped file)
    assert requests and all(u.startswith(base) or u.startswith(("blob:", "data:")) for u in requests), requests
    if os.environ.get("CAUSALCLIP_SCREENSHOT"):
        pg.screenshot(path=os.environ["CAUSALCLIP_SCREENSHOT"], full_page=True)


def test_batch_is_sortable_and_reports_bad_files(page, server, tiny):
    pg, _ = page
    _, engine = server
    expected = {d.name.rsplit("/", 1)[-1]: d for d in engine.detect_paths(tiny["imgs"])}
    files = [(p.name, p.read_bytes(), "image/png") for p in tiny["imgs"]]
    files.append(("notes.png", b"this is not an image", "image/png"))
    _drop(pg, files)
    expect(pg.locator("#summary")).to_contain_text("4 image(s)", timeout=20_000)
    expect(pg.locator("#summary")).not_to_contain_text("pending", timeout=20_000)
    expect(_row(pg, "notes.png").locator("td.status")).to_contain_text("not an image")
    labels = {n: _row(pg, n).locator("td.label").inner_text() for n in expected}
    assert labels == {n: d.label for n, d in expected.items()} and set(labels.values()) == {"fake", "real"}

    def order():
        return pg.locator("#results tbody tr").evaluate_all("rows => rows.map(r => r.dataset.name)")

    pg.get_by_role("button", name="Probability of fake").click()  # highest first
    by_p = sorted(expected, key=lambda n: -expected[n].fake_probability)
    assert order() == [*by_p, "notes.png"]
    expect(pg.locator('th[data-key="p"]')).to_have_attribute("aria-sort", "descending")
    pg.get_by_role("button", name="Probability of fake").click()  # lowest first; the error row has none
    assert order() == ["notes.png", *reversed(by_p)]
    pg.get_by_role("button", name="Name").click()
    assert order() == sorted(order(), key=str.lower)
    pg.get_by_role("button", name="Clear").click()
    expect(pg.locator("#summary")).to_have_text("No images yet.")


def test_file_picker_path_works_too(page, server, tiny, tmp_path):
    pg, _ = page
    _, engine = server
    img = shutil.copy(tiny["imgs"][1], tmp_path / "picked.png")
    (expected,) = engine.detect_paths([img])
    pg.set_input_files("#file-input", str(img))
    expect(_row(pg, "picked.png").locator("td.label")).to_have_text(expected.label, timeout=20_000)


KEY = "page-key-0123456789abcdef"


def test_page_asks_for_the_api_key_once_per_tab(tiny):
    """With a key on the server: the page asks for it, says when it was refused, keeps it for the tab (a reload
    does not ask again) and not beyond (a new tab asks again); the score comes through with it."""
    engine = DetectionEngine(tiny["detector"])
    img = tiny["imgs"][0]
    (expected,) = engine.detect_paths([img])
    with _serving(create_app(engine, api_key=KEY)) as base, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        context = browser.new_context()
        pg = context.new_page()
        pg.goto(base + "/")
        expect(pg.locator("#auth")).to_be_visible()
        expect(pg.locator("#model")).to_contain_text("Enter the API key")
        pg.fill("#api-key", "not-the-key-at-all-000")
        pg.click("#auth-submit")
        expect(pg.locator("#auth-error")).to_have_text("The server refused this key.")
        expect(pg.locator("#auth")).to_be_visible()
        assert pg.evaluate("sessionStorage.getItem('causalclip-api-key')") is None
        pg.fill("#api-key", KEY)
        pg.click("#auth-submit")
        expect(pg.locator("#model")).to_contain_text("fake when probability >")
        expect(pg.locator("#auth")).to_be_hidden()
        _drop(pg, [(img.name, img.read_bytes(), "image/png")])
        expect(_row(pg, img.name).locator("td.label")).to_have_text(expected.label, timeout=20_000)
        assert pg.evaluate("sessionStorage.getItem('causalclip-api-key')") == KEY
        assert pg.evaluate("localStorage.length") == 0  # kept for this tab only, never in localStorage
        pg.reload()
        expect(pg.locator("#model")).to_contain_text("fake when probability >")
        expect(pg.locator("#auth")).to_be_hidden()
        other = context.new_page()  # another tab of the same browser: asked again
        other.goto(base + "/")
        expect(other.locator("#auth")).to_be_visible()
        browser.close()
