"""Detector folders: export from a run (+ a feature set's meta), load, score, and every refusal."""

from __future__ import annotations

import json
import pickle
import shutil
from datetime import datetime

import numpy as np
import pandas as pd
import pytest

from causalclip import evaluate, load_head, open_feature_set, predict, resolve_run_config, train, write_feature_set
from causalclip.cli.main import main
from causalclip.core.revision import code_revision
from causalclip.detector.folder import DetectorError, export_detector, export_detector_from_feature_set, read_detector
from causalclip.images.transforms import Preprocessing

DIM = 16
BACKBONE = {"name": "clip", "model": "test/clip-tiny", "revision": None, "feature": "image_embeds", "dim": DIM}
PREPROCESSING = Preprocessing(mode="crop", size=224).to_dict()


def _set(root, n, seed, *, meta=None, generator="sd14"):
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    x = rng.normal(size=(n, DIM)).astype(np.float32) + labels[:, None] * 0.8
    df = pd.DataFrame({"path": [f"{generator}/{i}.png" for i in range(n)], "label": labels, "generator": generator})
    meta = {"backbone": BACKBONE, "preprocessing": PREPROCESSING, "precision": "float32"} if meta is None else meta
    return write_feature_set(root, x, df, meta=meta)


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("det")
    return {"train": _set(root / "train", 200, 0), "val": _set(root / "val", 100, 1), "root": root}


@pytest.fixture(scope="module")
def run(sets):
    out = sets["root"] / "run"
    rc = resolve_run_config("univfd", overrides={"epochs": 1, "batch_size": 64, "lr": 1e-3})
    train(train_set=sets["train"], val_set=sets["val"], out=out, run_config=rc, progress=False)
    return out


@pytest.fixture(scope="module")
def detector(run, sets):
    return export_detector_from_feature_set(run, sets["val"], sets["root"] / "detector")


def _copy(detector, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(detector, dst)
    return dst


def _edit(folder, **changes):
    path = folder / "detector.json"
    info = json.loads(path.read_text())
    for k, v in changes.items():
        if v is None:
            info.pop(k, None)
        else:
            info[k] = v
    path.write_text(json.dumps(info))


def test_export_writes_a_complete_self_describing_folder(detector, run, sets):
    assert sorted(p.name for p in detector.iterdir()) == ["config.json", "detector.json", "model.safetensors"]
    assert (detector / "model.safetensors").read_bytes() == (run / "model.safetensors").read_bytes()
    assert (detector / "config.json").read_text() == (run / "config.json").read_text()
    info = json.loads((detector / "detector.json").read_text())
    assert info["format_version"] == 1 and info["feature_dim"] == DIM
    assert info["backbone"] == BACKBONE and info["preprocessing"] == PREPROCESSING
    cal = json.loads((run / "threshold.json").read_text())
    assert info["threshold"] == cal["threshold"] and info["calibration"]["method"] == "val_balanced_acc"
    assert info["calibration"]["source"] == cal["source"] and info["calibration"]["n_real"] == cal["n_real"]
    prov = info["provenance"]
    assert prov["train"] == str(sets["train"]) and prov["val"] == str(sets["val"])
    assert prov["features"] == str(sets["val"]) and prov["precision"] == "float32"
    assert prov["code_revision"] == code_revision() and prov["training_code_revision"]
    datetime.fromisoformat(prov["exported"])
    datetime.fromisoformat(prov["trained"])


def test_load_detector_scores_like_the_run(detector, run, sets):
    det = read_detector(detector)
    assert not det.head.training  # eval mode
    assert det.backbone == BACKBONE and det.preprocessing == PREPROCESSING and det.feature_dim == DIM
    assert det.threshold == json.loads((run / "threshold.json").read_text())["threshold"]
    fs = open_feature_set(sets["val"])
    x = fs.take(np.arange(len(fs)))
    expected = predict(load_head(run).head, fs)
    np.testing.assert_allclose(det.score(x), expected, rtol=1e-6)
    np.testing.assert_array_equal(det.classify(x), expected > det.threshold)
    with pytest.raises(DetectorError, match=r"shape \(n, 16\)"):
        det.score(np.zeros((2, 8), dtype=np.float32))


def test_evaluate_reads_a_detector_folder_and_its_threshold(detector, sets):
    res = evaluate(detector, [sets["val"]])
    assert res.metrics["threshold_calibrated"].iloc[0] == read_detector(detector).threshold
    assert res.calibration["method"] == "val_balanced_acc"


def test_threshold_choice_at_export(run, sets, tmp_path):
    det = read_detector(export_detector_from_feature_set(run, sets["val"], tmp_path / "a", threshold=0.3))
    assert det.threshold == 0.3 and det.calibration["method"] == "explicit"
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(run / name, bare / name)
    det = read_detector(export_detector_from_feature_set(bare, sets["val"], tmp_path / "b"))
    assert det.threshold == 0.5 and det.calibration["method"] == "default"
    assert evaluate(tmp_path / "b", [sets["val"]]).calibration is None  # 0.5 is no calibration


def test_export_detector_with_explicit_backbone_and_provenance(run, tmp_path):
    nodim = {k: v for k, v in BACKBONE.items() if k != "dim"}
    with pytest.raises(DetectorError, match="feature dim is unknown"):
        export_detector(run, tmp_path / "x", backbone=nodim, preprocessing=PREPROCESSING)
    with pytest.raises(DetectorError, match="trained on features of backbone"):
        export_detector(run, tmp_path / "x", backbone=nodim, preprocessing=PREPROCESSING, feature_dim=DIM)
    with pytest.raises(DetectorError, match="head takes 16-d features but the backbone gives 32-d"):
        export_detector(run, tmp_path / "x", backbone=BACKBONE | {"dim": 32}, preprocessing=PREPROCESSING)
    other_pre = Preprocessing(mode="clip").to_dict()
    with pytest.raises(DetectorError, match="preprocessed with"):
        export_detector(run, tmp_path / "x", backbone=BACKBONE, preprocessing=other_pre)
    with pytest.raises(DetectorError, match="invalid preprocessing"):
        export_detector(run, tmp_path / "x", backbone=BACKBONE, preprocessing={"mode": "stretch"})
    out = export_detector(
        run, tmp_path / "ok", backbone=BACKBONE, preprocessing=PREPROCESSING, provenance={"note": "demo", "train": "t"}
    )
    prov = read_detector(out).provenance
    assert prov["note"] == "demo" and prov["train"] == "t"  # given provenance adds to and overrides the record


def test_export_refusals(run, sets, detector, tmp_path):
    nopre = _set(tmp_path / "nopre", 20, 2, meta={"backbone": BACKBONE})
    with pytest.raises(DetectorError, match=r"nopre/meta.json: records no 'preprocessing'"):
        export_detector_from_feature_set(run, nopre, tmp_path / "x")
    other = _set(
        tmp_path / "other", 20, 3, meta={"backbone": BACKBONE | {"model": "other"}, "preprocessing": PREPROCESSING}
    )
    with pytest.raises(DetectorError, match="trained on features of backbone"):
        export_detector_from_feature_set(run, other, tmp_path / "x")
    with pytest.raises(FileExistsError, match="not empty"):
        export_detector_from_feature_set(run, sets["val"], detector)
    with pytest.raises(DetectorError, match="must differ from the run folder"):
        export_detector_from_feature_set(run, sets["val"], run, overwrite=True)
    with pytest.raises(DetectorError, match="model.safetensors: missing"):
        export_detector_from_feature_set(tmp_path, sets["val"], tmp_path / "y")


def test_refuses_pickle_files_without_reading_them(detector, tmp_path):
    for rel in ("model.pt", "weights.bin", "sub/state.pkl", "x.ckpt", "y.pth"):
        d = _copy(detector, tmp_path / rel.replace("/", "_"))
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        (d / rel).write_bytes(pickle.dumps({"w": 1}))
        with pytest.raises(DetectorError, match=f"pickle-based file.*{rel}"):
            read_detector(d)


@pytest.mark.parametrize("name", ["detector.json", "config.json", "model.safetensors"])
def test_refuses_missing_files(detector, tmp_path, name):
    d = _copy(detector, tmp_path)
    (d / name).unlink()
    with pytest.raises(DetectorError, match=f"{name}: missing"):
        read_detector(d)


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"format_version": 2}, "unknown format_version 2"),
        ({"format_version": "1"}, "unknown format_version '1'"),
        ({"format_version": None}, "unknown format_version None"),
        (
            {"backbone": BACKBONE | {"dim": 32}, "feature_dim": 32},
            "head takes 16-d features but detector.json records a 32-d",
        ),
        ({"feature_dim": 32}, "backbone records dim 16 but the feature dim is 32"),
        ({"threshold": "high"}, "'threshold' must be a finite number"),
        ({"preprocessing": {"size": -1}}, "invalid preprocessing"),
        ({"backbone": None}, "missing key 'backbone'"),
    ],
)
def test_refuses_bad_detector_json(detector, tmp_path, changes, match):
    d = _copy(detector, tmp_path)
    _edit(d, **changes)
    with pytest.raises(DetectorError, match=match):
        read_detector(d)


def test_refuses_broken_json_and_weights(detector, tmp_path):
    d = _copy(detector, tmp_path)
    (d / "detector.json").write_text("{oops")
    with pytest.raises(DetectorError, match="detector.json: cannot read JSON"):
        read_detector(d)
    d2 = _copy(detector, tmp_path / "w")
    (d2 / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(DetectorError, match="not a valid safetensors file"):
        read_detector(d2)
    with pytest.raises(DetectorError, match="not a directory"):
        read_detector(tmp_path / "absent")
    assert issubclass(DetectorError, ValueError)


def test_export_cli(run, sets, tmp_path, capsys):
    out = tmp_path / "det"
    assert main(["export", str(run), "--features", str(sets["val"]), "--out", str(out)]) == 0
    assert "exported" in capsys.readouterr().out
    assert read_detector(out).feature_dim == DIM
    assert main(["export", str(run), "--features", str(sets["val"]), "--out", str(out)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert (
        main(
            ["export", str(run), "--features", str(sets["val"]), "--out", str(out), "--overwrite", "--threshold", "0.7"]
        )
        == 0
    )
    assert read_detector(out).threshold == 0.7
