"""How the folders next to this file were made: kept as the record, NOT run by the test suite.

It was run against commit 8ff02e8 ("Tests: one tiny CLIP config and tiny_clip fixture in conftest"), the last
commit with the old flat module layout (``causalclip.features``, ``causalclip.extract``, ``causalclip.train``,
``causalclip.detector``, ``causalclip.detect``, ...). Those import paths are used below on purpose: the folders
are the on-disk formats that code wrote, and ``expected.json`` is what that code computed from them, so that a
test can check that later code still loads and scores them identically. After the package was restructured
this script no longer runs against the working tree; to run it again, check out 8ff02e8 and point PYTHONPATH
at that checkout's ``src``::

    git clone -q . /tmp/golden-src && git -C /tmp/golden-src checkout -q 8ff02e8
    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONPATH=/tmp/golden-src/src python tests/data/formats_v1/make_formats_v1.py

It refuses to run unless ``causalclip`` is imported from a clean checkout of 8ff02e8. Everything is seeded and
runs in one thread, so ``expected.json`` comes out identical on every run (run.json, summary.json,
threshold.json, metrics.csv and detector.json also hold timestamps, timings and versions that do not).

Everything is first written into a fixed staging folder, STAGE below, with relative paths wherever the code
records the path it was given (sample paths, the extraction root, train/val set paths). Two kinds of path are
made absolute by the code itself: the local CLIP folder (``backbone.model`` in meta.json, job.json, the runs'
config.json/run.json and detector.json) and the detector's ``provenance.run``. They therefore name STAGE, which
the script deletes at the end: the recorded CLIP folder exists nowhere, and a detector must be loaded with
``backbone_model=`` pointing at ``clip/`` here (README.md).
"""

# The old flat module paths below (causalclip.extract, causalclip.train, ...) may not exist in the tree being
# linted, which would make ruff sort them as third-party imports: keep them as written.
# ruff: noqa: I001

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

COMMIT = "8ff02e8"
STAGE = Path("/tmp/causalclip-formats-v1")  # fixed, so that every run records the same paths
PRODUCED = ("clip", "features_src", "features", "runs", "detector", "images", "expected.json")

# hidden 32, 2 layers, 4 heads, patch 16: ~200 KB of weights; image_size 224 (the 224 crop). initializer_factor 3
# (3x the default initial weights) makes the features of these small, mostly padded images differ clearly.
TINY_VISION = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "image_size": 224,
    "patch_size": 16,
    "projection_dim": 16,
    "initializer_factor": 3.0,
}

TRAIN = {"epochs": 2, "batch_size": 16, "seed": 0, "lr": 1e-2, "num_threads": 1}
HEAD_OVERRIDES = {  # non-default head sizes (small files; and they check that config.json's values are used)
    "univfd": {},
    "causalclip": {"mask_hidden": 32, "adversary_hidden": 16},
    "vib": {"hidden": 32, "bottleneck": 8},
}

# images/ to score with the detector: name -> (width, height, fake-like pattern, mode)
SCORE_IMAGES = {
    "a.png": (240, 240, False, "RGB"),
    "b.png": (240, 240, True, "RGB"),
    "c.jpg": (300, 200, True, "RGB"),  # shorter than 224: the centre crop pads it; grid: 2 tiles
    "d.png": (480, 240, False, "RGB"),  # grid: 2 x 3 tiles
    "e.png": (64, 64, True, "L"),  # smaller than the crop, greyscale
}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def floats(a) -> list:
    """float64 values as plain Python floats (json writes repr: the full precision)."""
    return np.asarray(a, dtype=np.float64).tolist()


def make_image(rng: np.random.Generator, width: int, height: int, *, fake: bool, tint: int, mode: str) -> Image.Image:
    """A smooth random image (bicubic upsampling of a 4 x 4 grid); fakes carry a faint 4-pixel checkerboard."""
    base = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    img = np.asarray(Image.fromarray(base).resize((width, height), Image.Resampling.BICUBIC), dtype=np.int16)
    img = img + tint
    if fake:
        yy, xx = np.mgrid[0:height, 0:width]
        img = img + np.where(((yy // 4) + (xx // 4)) % 2 == 0, 24, -24)[..., None]
    out = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    return out.convert(mode) if mode != "RGB" else out


def write_sources(root: Path) -> None:
    """features_src/: the cnndetection layout, g1 and g2 with 12 reals and 12 fakes each, one file that is not an
    image (an extraction error) and one file that is not an image suffix (a listing error)."""
    rng = np.random.default_rng(1)
    sizes = [(48, 48), (64, 40), (40, 64), (56, 56)]
    for g, gen in enumerate(("g1", "g2")):
        for label, folder in ((0, "0_real"), (1, "1_fake")):
            d = root / gen / folder
            d.mkdir(parents=True)
            for i in range(12):
                w, h = sizes[i % len(sizes)]
                mode, ext = "RGB", "png"
                if i == 5:
                    mode = "L"  # greyscale
                elif i == 6:
                    mode = "RGBA"  # alpha: composited onto black by load_rgb
                elif i == 7:
                    ext = "jpg"
                elif i == 11:
                    w, h = 232, 240  # larger than the crop: a real 224 centre crop, no padding
                img = make_image(rng, w, h, fake=bool(label), tint=(-30 if g else 30), mode=mode)
                if mode == "RGBA":
                    alpha = np.linspace(64, 255, w * h).reshape(h, w).astype(np.uint8)
                    img.putalpha(Image.fromarray(alpha))
                path = d / f"{i:02d}.{ext}"
                if ext == "jpg":
                    img.save(path, quality=90)
                else:
                    img.save(path)
    (root / "g2" / "1_fake" / "12.png").write_bytes(b"this is not an image\n")
    (root / "g1" / "0_real" / "notes.txt").write_text("a file the listing does not use\n")


def write_score_images(root: Path) -> None:
    rng = np.random.default_rng(2)
    root.mkdir(parents=True)
    for name, (w, h, fake, mode) in SCORE_IMAGES.items():
        img = make_image(rng, w, h, fake=fake, tint=0, mode=mode)
        if name.endswith(".jpg"):
            img.save(root / name, quality=90)
        else:
            img.save(root / name)


def build(stage: Path) -> None:
    """Write every folder into ``stage`` (the working directory), with the old code."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from causalclip import resolve_run_config, train
    from causalclip.backbones import load_backbone
    from causalclip.detector import export_detector_from_feature_set
    from causalclip.extract import ExtractConfig, extract
    from causalclip.layouts import list_samples

    torch.manual_seed(0)
    CLIPVisionModelWithProjection(CLIPVisionConfig(**TINY_VISION)).save_pretrained("clip")

    write_sources(Path("features_src"))
    write_score_images(Path("images"))

    # what `causalclip extract --layout cnndetection --precision fp32 --workers 0` does (default float16 storage)
    listing = list_samples("features_src", "cnndetection")
    bb = load_backbone("clip", precision="fp32")
    res = extract(
        listing.samples,
        root=listing.root,
        out="features",
        backbone=bb,
        config=ExtractConfig(workers=0),
        ignored=listing.ignored,
        progress=False,
    )
    assert res.n_ok == 48 and len(res.errors) == 2, (res.n_ok, res.errors)

    for head, extra in HEAD_OVERRIDES.items():
        rc = resolve_run_config(head, overrides={**TRAIN, **extra})
        train(train_set="features", val_set="features", out=f"runs/{head}", run_config=rc, progress=False)
        torch.set_num_threads(1)

    export_detector_from_feature_set("runs/univfd", "features", "detector")


def detections(engine, names: list[str]) -> list[dict]:
    return [
        {
            "name": d.name,
            "fake_probability": d.fake_probability,
            "label": d.label,
            "crops": d.crops,
            "error": d.error,
        }
        for d in engine.detect_paths(names)
    ]


def compute_expected(here: Path) -> dict:
    """What the old code computes from the folders in ``here`` (the working directory), loaded as a test would."""
    import causalclip
    from causalclip import evaluate, load_head, open_feature_set, predict
    from causalclip.backbones import load_backbone
    from causalclip.detect import DetectionEngine
    from causalclip.detector import load_detector
    from causalclip.imageio import load_rgb
    from causalclip.train import code_revision

    fs = open_feature_set("features")
    x = fs.take(np.arange(len(fs)))
    npy = Path("features") / fs.meta["_shard_files"][0]
    errors = pd.read_csv("features/errors.csv", keep_default_na=False)
    exp: dict = {
        "written_by": {
            "commit": code_revision(),
            "causalclip_version": causalclip.__version__,
            "torch": torch.__version__,
            "numpy": np.__version__,
        },
        "files_sha256": {
            str(p.relative_to(here)): sha256(p.read_bytes())
            for sub in ("clip", "features_src", "images")
            for p in sorted((here / sub).rglob("*"))
            if p.is_file()
        }
        | {str(npy): sha256(npy.read_bytes())},
        "feature_set": {
            "folder": "features",
            "shards": fs.meta["_shard_files"],
            "shape": list(x.shape),
            "dtype": str(x.dtype),
            "array_sha256": sha256(np.ascontiguousarray(x).tobytes()),
            "sum_float64": float(x.astype(np.float64).sum()),
            "values": x.astype(np.float64).tolist(),
            "paths": fs.paths.tolist(),
            "labels": fs.labels.tolist(),
            "generators": fs.generators.tolist(),
            "columns": list(fs.samples.columns),
            "plan_row": fs.samples["plan_row"].tolist(),
            "meta_keys": sorted(k for k in fs.meta if not k.startswith("_")),
            "dim": fs.dim,
            "errors_csv": errors.to_dict(orient="records"),
        },
    }

    # The backbone on its own: features of each scoring image's centre crop and of two source images, in fp32,
    # one image per forward pass.
    bb = load_backbone("clip", precision="fp32")
    bb.eval()

    def feats(path: str) -> list:
        pixels = torch.from_numpy(bb.preprocessing(load_rgb(path)))[None]
        with torch.inference_mode():
            return floats(bb(pixels)[0])

    exp["backbone"] = {
        "load": "load_backbone('clip', precision='fp32') from the formats_v1 folder",
        "dim": bb.dim,
        "describe_without_model": {k: v for k, v in bb.describe().items() if k != "model"},
        "preprocessing": bb.preprocessing.to_dict(),
        "features_fp32": {f"images/{n}": feats(f"images/{n}") for n in SCORE_IMAGES},
        "source_features_fp32": {},
    }
    for row in (0, 6, 11, 47):  # plain, RGBA, 232 x 240, last
        path = fs.paths[row]
        exp["backbone"]["source_features_fp32"][path] = {
            "feature_set_row": row,
            "features": feats(f"features_src/{path}"),
        }

    exp["runs"] = {}
    for head in HEAD_OVERRIDES:
        run = f"runs/{head}"
        loaded = load_head(run)
        probs = predict(loaded.head, fs)
        res = evaluate(run, ["features"])
        threshold = json.loads(Path(run, "threshold.json").read_text())
        summary = json.loads(Path(run, "summary.json").read_text())
        exp["runs"][head] = {
            "files": sorted(str(p.relative_to(run)) for p in Path(run).rglob("*") if p.is_file()),
            "head": loaded.info["head"],
            "dim": loaded.info["dim"],
            "head_config": loaded.info["head_config"],
            "load_head_threshold": loaded.threshold,
            "threshold_json": threshold["threshold"],
            "best_epoch": summary["best_epoch"],
            "predict": floats(probs),
            "evaluate": {
                "metrics": res.metrics.to_dict(orient="records"),
                "predictions_score": floats(res.predictions["score"]),
                "predictions_path": res.predictions["path"].tolist(),
                "notes": res.notes,
            },
        }
        assert np.array_equal(res.predictions["score"].to_numpy(), probs)  # balanced already: every row is used

    det = load_detector("detector")
    names = [f"images/{n}" for n in SCORE_IMAGES]
    exp["detector"] = {
        "load": "DetectionEngine('detector', backbone_model='clip') from the formats_v1 folder",
        "threshold": det.threshold,
        "feature_dim": det.feature_dim,
        "calibration_method": det.calibration.get("method"),
        "score_feature_set": floats(det.score(x)),
        "evaluate_metrics": evaluate("detector", ["features"]).metrics.to_dict(orient="records"),
    }
    for crops in ("center", "grid"):
        engine = DetectionEngine("detector", backbone_model="clip", crops=crops, workers=1)
        assert engine.precision == "fp32", engine.precision
        exp["detector"][crops] = detections(engine, names)
    return exp


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent, help="default: this folder")
    args = ap.parse_args()
    out = args.out.resolve()

    import causalclip
    from causalclip.detect import DetectionEngine
    from causalclip.train import code_revision

    rev = code_revision()
    print(f"causalclip from {causalclip.__file__}, revision {rev}")
    if not rev.startswith(COMMIT) or rev.endswith("-dirty"):
        sys.exit(f"refusing: causalclip must come from a clean checkout of {COMMIT} (PYTHONPATH), got {rev}")
    torch.set_num_threads(1)

    if STAGE.exists():
        shutil.rmtree(STAGE)
    STAGE.mkdir(parents=True)
    cwd = os.getcwd()
    try:
        os.chdir(STAGE)
        build(STAGE)
        # the detector as recorded (its CLIP folder is STAGE/clip, still there): the reference for the check below
        recorded = {
            crops: detections(
                DetectionEngine("detector", crops=crops, workers=1), [f"images/{n}" for n in SCORE_IMAGES]
            )
            for crops in ("center", "grid")
        }
        out.mkdir(parents=True, exist_ok=True)
        for name in PRODUCED:
            target = out / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
        for name in PRODUCED[:-1]:
            shutil.copytree(STAGE / name, out / name)
    finally:
        os.chdir(cwd)
        shutil.rmtree(STAGE, ignore_errors=True)  # the recorded CLIP path must not resolve to anything

    os.chdir(out)
    try:
        exp = compute_expected(out)
    finally:
        os.chdir(cwd)
    for crops in ("center", "grid"):
        assert exp["detector"][crops] == recorded[crops], crops  # backbone_model= changes nothing but the path
    pickles = [p for p in out.rglob("*") if p.suffix.lower() in {".pt", ".pth", ".bin", ".ckpt", ".pkl", ".pickle"}]
    assert not pickles, pickles
    text = json.dumps(exp, indent=1, allow_nan=False) + "\n"
    (out / "expected.json").write_text(text, encoding="utf-8")
    print(f"wrote {out}; expected.json sha256 {sha256(text.encode())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
