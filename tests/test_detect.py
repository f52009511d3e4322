"""Scoring images with a detector folder: the engine against a direct transformers computation, multi-crop against
separately scored tiles, backbone-mismatch refusals, input expansion, and `causalclip detect` (formats, exit codes)."""

from __future__ import annotations

import csv
import io
import json
import shutil
import threading
import time

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from transformers import CLIPVisionModelWithProjection  # noqa: E402

from _detector_factory import make_tiny_detector, save_tiny_clip, write_image  # noqa: E402
from causalclip import load_head  # noqa: E402
from causalclip.cli.main import main  # noqa: E402
from causalclip.detect.engine import DetectionEngine, backbone_spec, crop_boxes  # noqa: E402
from causalclip.detect.inputs import expand_inputs  # noqa: E402
from causalclip.detector.folder import DetectorError, read_detector  # noqa: E402
from causalclip.images.decode import load_rgb  # noqa: E402
from causalclip.images.transforms import Preprocessing  # noqa: E402

SIZES = [(224, 224), (500, 300), (100, 80), (230, 700)]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("detect")
    det = make_tiny_detector(root)
    imgs = root / "imgs"
    paths = [write_image(imgs / f"{i}.png", s, seed=i) for i, s in enumerate(SIZES)]
    paths.append(write_image(imgs / "sub" / "deep.jpg", (300, 300), seed=9))
    return {"root": root, "detector": det, "clip": root / "clip", "run": root / "run", "imgs": imgs, "paths": paths}


@pytest.fixture(scope="module")
def engine(tiny):
    return DetectionEngine(tiny["detector"])


def reference(tiny, paths, crops=None) -> np.ndarray:
    """transformers' model on the paper's centre crop (or given crops), then the run's head: no causalclip code
    between the pixels and the probability."""
    model = CLIPVisionModelWithProjection.from_pretrained(tiny["clip"]).eval()
    head = load_head(tiny["run"]).head
    prep = Preprocessing(mode="crop", size=224)
    with torch.no_grad():
        x = torch.from_numpy(np.stack([prep(load_rgb(p)) for p in paths]))
        return torch.sigmoid(head(model(pixel_values=x).image_embeds)).numpy().astype(np.float64)


def test_engine_scores_like_a_direct_computation(tiny, engine):
    got = list(engine.detect_paths(tiny["paths"]))
    assert [d.name for d in got] == [str(p) for p in tiny["paths"]]
    p = np.array([d.fake_probability for d in got])
    np.testing.assert_allclose(p, reference(tiny, tiny["paths"]), rtol=1e-5, atol=1e-6)
    assert [d.label for d in got] == ["fake" if x > engine.threshold else "real" for x in p]
    assert all(d.crops == 1 and d.ok for d in got)
    assert engine.precision == "fp32"  # the features were made in float32, so scoring is too
    # bytes in memory give the same numbers as files
    by_bytes = engine.detect_bytes([(p.name, p.read_bytes()) for p in tiny["paths"]])
    np.testing.assert_array_equal([d.fake_probability for d in by_bytes], p)


def test_compiled_engine_compiles_every_batch_size_before_it_scores(tiny):
    """compile: the backbone goes through torch.compile and every batch size 1..batch_size is compiled while the
    engine loads (a compile counter as the backend sees each graph), so requests of any size compile nothing; the
    scores are the reference's."""
    from torch._dynamo.testing import CompileCounter

    torch._dynamo.reset()
    counter = CompileCounter()
    eng = DetectionEngine(tiny["detector"], batch_size=3, compile=counter)
    loaded = counter.frame_count
    assert loaded >= 1 and eng.compiled and eng.passes == 0 and eng.warm_up_seconds > 0
    assert eng.describe()["compiled"] is True
    for n in (1, 2, 3, 5):  # 5: a pass of 3 and one of 2
        got = [d.fake_probability for d in eng.detect_paths(tiny["paths"][:n])]
        np.testing.assert_allclose(got, reference(tiny, tiny["paths"][:n]), rtol=1e-5, atol=1e-6)
    assert counter.frame_count == loaded  # nothing compiled in a request
    torch._dynamo.reset()


def _concurrently(eng, prepared):
    """Score each item from its own thread while a pass is "running" (the turn lock held), then let them go."""
    results = [None] * len(prepared)

    def work(i):
        try:
            results[i] = eng.score_prepared([prepared[i]])[0]
        except Exception as exc:
            results[i] = exc

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(prepared))]
    with eng._lock:
        for t in threads:
            t.start()
        deadline = time.monotonic() + 20
        while len(eng._queue) < len(prepared):
            assert time.monotonic() < deadline, "requests never queued"
            time.sleep(0.01)
    for t in threads:
        t.join(20)
    return results


@pytest.mark.parametrize(("batch_size", "passes"), [(8, 1), (2, 3)])
def test_concurrent_requests_share_forward_passes(tiny, batch_size, passes):
    eng = DetectionEngine(tiny["detector"], batch_size=batch_size)
    prepared = [eng.prepare(str(p)) for p in tiny["paths"]]  # 5 images
    alone = [eng.score_prepared([p])[0].fake_probability for p in prepared]
    eng.passes = 0
    results = _concurrently(eng, prepared)
    assert eng.passes == passes  # queued single-image requests were batched together
    assert [r.name for r in results] == [p.name for p in prepared]
    np.testing.assert_allclose([r.fake_probability for r in results], alone, rtol=1e-5, atol=1e-6)


def test_a_failing_pass_fails_every_request_in_it(tiny, monkeypatch):
    eng = DetectionEngine(tiny["detector"])
    prepared = [eng.prepare(str(p)) for p in tiny["paths"][:3]]

    def boom(pixels):
        raise RuntimeError("out of memory (simulated)")

    monkeypatch.setattr(eng, "_forward", boom)
    results = _concurrently(eng, prepared)
    assert all(isinstance(r, RuntimeError) for r in results) and not eng._queue


def test_bad_files_are_reported_not_fatal(tiny, engine, tmp_path):
    (tmp_path / "text.png").write_text("hello")
    good = tiny["paths"][0]
    trunc = tmp_path / "trunc.png"
    trunc.write_bytes(good.read_bytes()[:200])
    got = list(engine.detect_paths([tmp_path / "text.png", good, trunc, tmp_path / "missing.jpg"]))
    assert [d.ok for d in got] == [False, True, False, False]
    assert "not an image" in got[0].error and "truncated" in got[2].error and "not found" in got[3].error
    assert got[0].fake_probability is None and got[0].label is None


def test_grid_crops_average_separately_scored_tiles(tiny, tmp_path):
    eng = DetectionEngine(tiny["detector"], crops="grid", max_crops=16)
    big = write_image(tmp_path / "big.png", (448, 448), seed=3)
    rgb = load_rgb(big)
    quadrants = []
    for i, (t, left) in enumerate([(0, 0), (0, 224), (224, 0), (224, 224)]):
        q = tmp_path / f"q{i}.png"
        from PIL import Image

        Image.fromarray(rgb[t : t + 224, left : left + 224]).save(q)
        quadrants.append(q)
    (d,) = eng.detect_paths([big])
    assert d.crops == 4
    assert d.fake_probability == pytest.approx(float(reference(tiny, quadrants).mean()), rel=1e-5, abs=1e-6)
    # an image no larger than one tile gets exactly the centre crop
    small = tiny["paths"][2]
    (s,) = eng.detect_paths([small])
    assert s.crops == 1 and s.fake_probability == pytest.approx(float(reference(tiny, [small])[0]), abs=1e-6)
    (capped,) = DetectionEngine(tiny["detector"], crops="grid", max_crops=2).detect_paths([big])
    assert capped.crops == 2


@settings(max_examples=200, deadline=None)
@given(h=st.integers(1, 2000), w=st.integers(1, 2000), size=st.sampled_from([7, 32, 224]), cap=st.integers(1, 40))
def test_crop_boxes_properties(h, w, size, cap):
    boxes = crop_boxes(h, w, size, cap)
    rows, cols = max(1, -(-h // size)), max(1, -(-w // size))
    assert 1 <= len(boxes) <= cap
    assert len(set(boxes)) == len(boxes)
    for top, left, th, tw in boxes:
        assert (th, tw) == (min(h, size), min(w, size))
        assert 0 <= top and top + th <= h and 0 <= left and left + tw <= w
    if rows * cols <= cap:  # uncapped: the tiles cover every pixel
        covered = np.zeros((h, w), dtype=bool)
        for top, left, th, tw in boxes:
            covered[top : top + th, left : left + tw] = True
        assert covered.all()
    if h <= size and w <= size:
        assert boxes == [(0, 0, h, w)]


def test_single_tile_per_axis_sits_at_the_centre_crop():
    # 2 x 5 tiles thinned to 1 x 2 (the denser axis first): the single row sits at torchvision CenterCrop's
    # offset round((300 - 224) / 2) = 38, the two columns at both ends
    assert crop_boxes(300, 1000, 224, 3) == [(38, 0, 224, 224), (38, 776, 224, 224)]


def test_backbone_mismatch_is_refused_when_the_backbone_is_loaded(tiny, tmp_path):
    det_dir = tmp_path / "det"
    shutil.copytree(tiny["detector"], det_dir)
    info = json.loads((det_dir / "detector.json").read_text())
    # the recorded CLIP folder now holds a model with another projection: other feature dim
    other = save_tiny_clip(tmp_path / "clip8", projection_dim=8)
    info["backbone"]["model"] = str(other)
    (det_dir / "detector.json").write_text(json.dumps(info))
    with pytest.raises(DetectorError, match=r"backbone mismatch: the head takes 16-d features .* gives 8-d"):
        DetectionEngine(det_dir)
    # same dim, different architecture (3 layers instead of 2)
    deeper = save_tiny_clip(tmp_path / "clip3", num_hidden_layers=3)
    info["backbone"]["model"] = str(deeper)
    (det_dir / "detector.json").write_text(json.dumps(info))
    with pytest.raises(DetectorError, match=r"backbone mismatch: architecture\.layers: recorded 2, loaded 3"):
        DetectionEngine(det_dir)
    # --backbone pointing at another architecture is refused the same way; at a copy of the weights it works
    with pytest.raises(DetectorError, match="architecture.layers"):
        DetectionEngine(tiny["detector"], backbone_model=str(deeper))
    copy = tmp_path / "copy-of-clip"
    shutil.copytree(tiny["clip"], copy)
    eng = DetectionEngine(tiny["detector"], backbone_model=str(copy))
    ref = list(DetectionEngine(tiny["detector"]).detect_paths(tiny["paths"][:2]))
    assert [d.fake_probability for d in eng.detect_paths(tiny["paths"][:2])] == [d.fake_probability for d in ref]


def test_preprocessing_mismatch_is_refused(tiny, tmp_path):
    det_dir = tmp_path / "det"
    shutil.copytree(tiny["detector"], det_dir)
    info = json.loads((det_dir / "detector.json").read_text())
    info["preprocessing"]["mean"] = [0.5, 0.5, 0.5]
    (det_dir / "detector.json").write_text(json.dumps(info))
    with pytest.raises(DetectorError, match="preprocessing mismatch"):
        DetectionEngine(det_dir)


def test_pickled_detector_is_refused(tiny, tmp_path, capsys):
    det_dir = tmp_path / "det"
    shutil.copytree(tiny["detector"], det_dir)
    import pickle

    (det_dir / "extra.pkl").write_bytes(pickle.dumps({"x": 1}))
    with pytest.raises(DetectorError, match="pickle"):
        DetectionEngine(det_dir)
    assert main(["detect", str(det_dir), str(tiny["paths"][0])]) == 2
    err = capsys.readouterr().err
    assert "extra.pkl" in err and "pickle" in err and "Traceback" not in err


def test_backbone_spec_rebuilds_every_known_kind():
    crop = {"mode": "crop"}
    clip = {"name": "clip", "model": "org/m", "revision": "abc", "feature": "pooled", "normalize": True}
    assert backbone_spec(clip, crop) == (
        "org/m",
        {"feature": "pooled", "normalize": True, "revision": "abc", "preprocessing_mode": "crop"},
    )
    spectrum = {"name": "spectrum", "size": 64, "normalize": "dc"}
    npr = {"name": "npr", "size": 64}
    assert backbone_spec({"name": "concat", "parts": [spectrum, npr]}, crop) == (
        "spectrum:size=64,normalize=dc+npr:size=64",
        {},
    )
    rnd = {"name": "clip-random", "arch": "vit-b-32", "weights": "RANDOM (seed 7), not pretrained"}
    assert backbone_spec(rnd, crop)[0] == "clip-random:arch=vit-b-32,seed=7"
    assert backbone_spec({"name": "concat", "parts": [clip, npr]}, crop, model="/local/m")[0] == "/local/m+npr:size=64"
    with pytest.raises(DetectorError, match="cannot rebuild a backbone named 'mystery'"):
        backbone_spec({"name": "mystery"}, crop)
    with pytest.raises(DetectorError, match="has none"):
        backbone_spec(npr, crop, model="/local/m")


def test_expand_inputs(tmp_path):
    a = write_image(tmp_path / "a.png", (8, 8))
    write_image(tmp_path / "d" / "b.JPG", (8, 8), fmt="JPEG")
    write_image(tmp_path / "d" / "e" / "c.webp", (8, 8), fmt="WEBP")
    (tmp_path / "d" / "notes.txt").write_text("x")
    (tmp_path / "d" / ".hidden.png").write_bytes(b"")
    (tmp_path / "empty").mkdir()
    named = tmp_path / "named.dat"  # an explicitly named file is tried whatever its suffix
    named.write_bytes(b"")
    paths, problems, skipped = expand_inputs(
        [str(a), str(tmp_path / "d"), str(tmp_path / "*.png"), str(named), str(tmp_path / "nope.png"),
         str(tmp_path / "zz*.png"), str(tmp_path / "empty")]
    )  # fmt: skip
    assert paths == [str(a), str(tmp_path / "d" / "b.JPG"), str(tmp_path / "d" / "e" / "c.webp"), str(named)]
    assert [(p.name, p.error) for p in problems] == [
        (str(tmp_path / "nope.png"), "no such file or directory"),
        (str(tmp_path / "zz*.png"), "no file matches this pattern"),
        (str(tmp_path / "empty"), "no image files in this folder"),
    ]
    assert skipped == 1
    recursive, _, _ = expand_inputs([str(tmp_path / "**" / "*.webp")])
    assert recursive == [str(tmp_path / "d" / "e" / "c.webp")]


# ------------------------------------------------------------------------------------------------- the CLI


def test_cli_formats_agree_with_the_engine(tiny, engine, capsys, tmp_path):
    expected = {str(d.name): d for d in engine.detect_paths(tiny["paths"])}
    assert main(["detect", str(tiny["detector"]), str(tiny["imgs"]), "--format", "csv", "-q"]) == 0
    out, err = capsys.readouterr()
    rows = list(csv.DictReader(io.StringIO(out)))
    assert {r["path"] for r in rows} == set(expected)  # the folder, recursively
    for r in rows:
        d = expected[r["path"]]
        assert float(r["fake_probability"]) == d.fake_probability and r["label"] == d.label and r["error"] == ""
    assert "5 image(s) scored" in err

    out_file = tmp_path / "res.jsonl"
    args = ["detect", str(tiny["detector"]), *map(str, tiny["paths"][:2]), "--format", "jsonl", "-o", str(out_file)]
    assert main([*args, "-q"]) == 0
    lines = [json.loads(x) for x in out_file.read_text().splitlines()]
    assert [x["path"] for x in lines] == [str(p) for p in tiny["paths"][:2]]
    assert [x["fake_probability"] for x in lines] == [expected[x["path"]].fake_probability for x in lines]

    assert main(["detect", str(tiny["detector"]), str(tiny["paths"][0]), "-q"]) == 0
    table = capsys.readouterr().out.splitlines()
    d = expected[str(tiny["paths"][0])]
    assert table[0].split() == ["p_fake", "label", "path"]
    assert table[1].split() == [f"{d.fake_probability:.4f}", d.label, str(tiny["paths"][0])]


def test_cli_exit_codes(tiny, engine, tmp_path, capsys):
    det = str(tiny["detector"])
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    good = str(tiny["paths"][0])
    # 1: some inputs unusable; the good one is still scored and each bad one is reported with its reason
    assert main(["detect", det, good, str(bad), str(tmp_path / "missing.png"), "--format", "jsonl", "-q"]) == 1
    out, err = capsys.readouterr()
    rows = [json.loads(x) for x in out.splitlines()]
    assert {r["path"]: r["error"] for r in rows} == {
        str(tmp_path / "missing.png"): "no such file or directory",
        good: None,
        str(bad): "not an image (unrecognised format)",
    }
    assert f"{bad}: not an image" in err and "2 unusable" in err
    # 3: --fail-on-fake and something labelled fake (threshold 0 makes everything fake); 0 without a fake
    assert main(["detect", det, good, "--threshold", "0", "--fail-on-fake", "-q"]) == 3
    assert main(["detect", det, good, "--threshold", "1", "--fail-on-fake", "-q"]) == 0
    assert main(["detect", det, good, str(bad), "--threshold", "0", "--fail-on-fake", "-q"]) == 3
    # 2: model errors and usage errors
    capsys.readouterr()
    assert main(["detect", det, good, "--threshold", "2", "-q"]) == 2
    assert "must be a probability" in capsys.readouterr().err
    assert main(["detect", str(tmp_path), good, "-q"]) == 2
    assert "detector.json" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["detect", det])  # no PATH
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        main(["detect", det, good, "--format", "xml"])
    assert exc.value.code == 2


def test_cli_grid_reports_crops(tiny, capsys, tmp_path):
    big = write_image(tmp_path / "big.png", (700, 500), seed=1)
    assert main(["detect", str(tiny["detector"]), str(big), "--crops", "grid", "--format", "jsonl", "-q"]) == 0
    (row,) = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert row["crops"] == 12  # ceil(500/224) x ceil(700/224) = 3 x 4
    info = read_detector(tiny["detector"])
    assert row["label"] == ("fake" if row["fake_probability"] > info.threshold else "real")


def test_detect_and_serve_share_the_engine_flags(tiny, monkeypatch, capsys):
    """detect and serve take the same engine flags (one definition): --compile reaches torch.compile from both
    (here traced by the eager backend, in seconds), and --threshold outside [0, 1] is refused by both."""
    import causalclip.cli.serve as serve_cli

    det, good = str(tiny["detector"]), str(tiny["paths"][0])
    real_compile, backends = torch.compile, []

    def traced(model, *, backend):
        backends.append(backend)
        return real_compile(model, backend="eager")

    monkeypatch.setattr(torch, "compile", traced)
    monkeypatch.setattr(serve_cli, "run_server", lambda app, **kw: None)
    torch._dynamo.reset()
    assert main(["detect", det, good, "--compile", "--batch-size", "2", "--format", "jsonl", "-q"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[0])["error"] is None
    assert main(["serve", det, "--compile", "--batch-size", "2", "--threads", "1"]) == 0
    assert backends == ["inductor", "inductor"]
    torch._dynamo.reset()
    capsys.readouterr()
    assert main(["serve", det, "--threshold", "1.5"]) == 2
    assert "must be a probability" in capsys.readouterr().err
