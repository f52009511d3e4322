"""Folders written by the code before the package was split into stages (commit 8ff02e8; tests/data/formats_v1,
made by its make_formats_v1.py) load and score exactly as that code scored them."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import causalclip as cc
from causalclip.features.job import ExtractConfig

D = Path(__file__).parent / "data" / "formats_v1"
EXP = json.loads((D / "expected.json").read_text())
IMAGES = ["a.png", "b.png", "c.jpg", "d.png", "e.png"]
HEADS = ["univfd", "causalclip", "vib"]


def _metrics_equal(got: pd.DataFrame, expected: list[dict]) -> None:
    want = pd.DataFrame(expected)
    assert list(got.columns) == list(want.columns)
    pd.testing.assert_frame_equal(got.reset_index(drop=True), want, check_dtype=False, rtol=1e-9, atol=1e-12)


def test_the_feature_set_reads_back_bit_for_bit():
    fs = cc.open_feature_set(D / "features")
    exp = EXP["feature_set"]
    x = fs.take(np.arange(len(fs)))
    assert list(x.shape) == exp["shape"] and str(x.dtype) == exp["dtype"]
    assert hashlib.sha256(np.ascontiguousarray(x).tobytes()).hexdigest() == exp["array_sha256"]
    assert fs.samples["path"].tolist() == exp["paths"]
    assert fs.samples["label"].tolist() == exp["labels"]
    assert fs.samples["generator"].tolist() == exp["generators"]


@pytest.mark.parametrize("head", HEADS)
def test_each_run_folder_loads_and_predicts_as_before(head):
    exp = EXP["runs"][head]
    loaded = cc.load_head(D / "runs" / head)
    assert loaded.info["head"] == exp["head"] and loaded.info["dim"] == exp["dim"]
    fs = cc.open_feature_set(D / "features")
    np.testing.assert_allclose(cc.predict(loaded.head, fs), exp["predict"], rtol=0, atol=1e-6)
    res = cc.evaluate(D / "runs" / head, [D / "features"])
    _metrics_equal(res.metrics, exp["evaluate"]["metrics"])


def test_the_detector_folder_scores_features_as_before():
    from causalclip.detector.folder import read_detector

    det = read_detector(D / "detector")
    exp = EXP["detector"]
    assert det.threshold == exp["threshold"] and det.feature_dim == exp["feature_dim"]
    x = cc.open_feature_set(D / "features").take(np.arange(48))
    np.testing.assert_allclose(det.score(x), exp["score_feature_set"], rtol=0, atol=1e-6)
    _metrics_equal(cc.evaluate(D / "detector", [D / "features"]).metrics, exp["evaluate_metrics"])


@pytest.fixture(scope="module")
def backbone():
    pytest.importorskip("transformers")
    return cc.load_backbone(str(D / "clip"), precision="fp32").eval()


def test_the_tiny_clip_gives_the_same_features(backbone):
    exp = EXP["backbone"]
    assert {k: v for k, v in backbone.describe().items() if k != "model"} == exp["describe_without_model"]
    assert backbone.preprocessing.to_dict() == exp["preprocessing"]
    with torch.inference_mode():
        for rel, want in exp["features_fp32"].items():
            x = torch.from_numpy(backbone.preprocessing(cc.load_rgb(D / rel)))[None]
            np.testing.assert_allclose(backbone(x)[0].numpy(), want, rtol=0, atol=1e-5)


@pytest.mark.parametrize("crops", ["center", "grid"])
def test_the_detector_scores_image_files_as_before(crops):
    pytest.importorskip("transformers")
    engine = cc.load_detector(D / "detector", backbone_model=str(D / "clip"), crops=crops)
    got = list(engine.detect_paths([D / "images" / n for n in IMAGES]))
    want = EXP["detector"][crops]
    assert [os.path.basename(g.name) for g in got] == [os.path.basename(w["name"]) for w in want]
    np.testing.assert_allclose([g.fake_probability for g in got], [w["fake_probability"] for w in want], atol=1e-5)
    assert [(g.label, g.crops, g.error) for g in got] == [(w["label"], w["crops"], w["error"]) for w in want]


def test_score_takes_paths_pil_images_and_arrays_alike():
    """The one-call API: the same image as a path, a PIL image and an RGB array gets the same score."""
    pytest.importorskip("transformers")
    engine = cc.load_detector(D / "detector", backbone_model=str(D / "clip"))
    want = {os.path.basename(w["name"]): w for w in EXP["detector"]["center"]}
    inputs, names = [], []
    for n in IMAGES:
        with Image.open(D / "images" / n) as im:
            im.load()
            inputs += [str(D / "images" / n), im.copy(), np.asarray(im.convert("RGB"))]
        names += [n] * 3
    got = engine.score(inputs)
    assert len(got) == len(inputs)
    for n, g in zip(names, got, strict=True):
        assert g.ok, g.error
        assert g.fake_probability == pytest.approx(want[n]["fake_probability"], abs=1e-5)
        assert g.label == want[n]["label"]


def test_score_reports_unusable_inputs_in_place():
    pytest.importorskip("transformers")
    engine = cc.load_detector(D / "detector", backbone_model=str(D / "clip"), max_pixels=300 * 300)
    big = Image.new("RGB", (400, 400))
    got = engine.score(
        [np.zeros((8, 8), np.uint8), D / "missing.png", 42, big, str(D / "images" / "a.png"), np.zeros((5, 5, 3))]
    )
    assert [g.ok for g in got] == [False, False, False, False, True, False]
    assert "uint8" in got[0].error and "int" in got[2].error and "decompression bomb" in got[3].error
    assert got[5].error and "float64" in got[5].error


def test_re_extraction_writes_the_same_features(backbone, tmp_path):
    listing = cc.list_samples(D / "features_src", "cnndetection")
    res = cc.extract(
        listing.samples,
        root=listing.root,
        out=tmp_path / "f",
        backbone=backbone,
        config=ExtractConfig(workers=0, processes=1),
        ignored=listing.ignored,
        progress=False,
    )
    assert res.n_ok == 48
    fs, old = cc.open_feature_set(tmp_path / "f"), cc.open_feature_set(D / "features")
    np.testing.assert_array_equal(fs.take(np.arange(48)), old.take(np.arange(48)))
    pd.testing.assert_frame_equal(fs.samples, old.samples)
    errors = pd.read_csv(D / "features" / "errors.csv")
    pd.testing.assert_frame_equal(res.errors.reset_index(drop=True), errors, check_dtype=False)


def test_score_refuses_a_bare_image_and_the_engine_says_what_it_holds():
    pytest.importorskip("transformers")
    engine = cc.load_detector(D / "detector", backbone_model=str(D / "clip"))
    with pytest.raises(TypeError, match=r"list of images; got one str: pass \[image\]"):
        engine.score(str(D / "images" / "a.png"))  # a string would otherwise be scored character by character
    assert "DetectionEngine(" in repr(engine) and "detector" in repr(engine) and "clip" in repr(engine)
