"""Images -> features with tiny CLIP models saved and loaded the way users load real ones."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

pytest.importorskip("transformers")
from transformers import CLIPConfig, CLIPModel, CLIPVisionModelWithProjection  # noqa: E402

from causalclip import open_feature_set  # noqa: E402
from causalclip.backbones.base import BackboneError  # noqa: E402
from causalclip.backbones.registry import load_backbone  # noqa: E402
from causalclip.cli.main import main  # noqa: E402
from causalclip.features.extract import extract  # noqa: E402
from causalclip.features.job import ExtractConfig, ExtractError  # noqa: E402
from causalclip.images.decode import load_rgb  # noqa: E402
from causalclip.images.layouts import list_samples  # noqa: E402
from causalclip.images.transforms import Perturbation, Preprocessing  # noqa: E402
from conftest import TINY_VISION  # noqa: E402


@pytest.fixture(scope="module")
def image_tree(tmp_path_factory):
    """ROOT/{real,fake}/*.png|jpg of assorted sizes (smaller and larger than 224, odd sizes)."""
    root = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    sizes = [(256, 256), (300, 201), (180, 240), (224, 224), (97, 333), (500, 260)]
    rows = []
    for label, cls in ((0, "real"), (1, "fake")):
        (root / cls).mkdir()
        for i, (w, h) in enumerate(sizes * 2):
            arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            name = f"{cls}/{i:03d}.{'png' if i % 2 else 'jpg'}"
            Image.fromarray(arr).save(root / name)
            rows.append((name, label, "gen"))
    return root, pd.DataFrame(rows, columns=["path", "label", "generator"])


def direct_features(folder, root, paths, prep):
    """Reference: transformers' model on our preprocessing, one image at a time, fp32."""
    model = CLIPVisionModelWithProjection.from_pretrained(folder).eval()
    with torch.no_grad():
        return np.stack(
            [
                model(pixel_values=torch.from_numpy(prep(load_rgb(root / p)))[None]).image_embeds[0].numpy()
                for p in paths
            ]
        )


def test_features_equal_direct_transformers_computation(tiny_clip, image_tree, tmp_path):
    root, samples = image_tree
    bb = load_backbone(str(tiny_clip), precision="fp32")
    assert bb.dim == 16 and bb.preprocessing.mode == "crop"
    res = extract(
        samples,
        root=root,
        out=tmp_path / "f",
        backbone=bb,
        config=ExtractConfig(batch_size=5, shard_size=7, storage_dtype="float32", workers=0),
        progress=False,
    )
    assert res.n_ok == len(samples) and len(res.errors) == 0
    fs = open_feature_set(tmp_path / "f")
    assert list(fs.paths) == list(samples["path"]) and list(fs.labels) == list(samples["label"])
    ref = direct_features(tiny_clip, root, samples["path"], Preprocessing(mode="crop"))
    np.testing.assert_allclose(fs.take(np.arange(len(fs))), ref, rtol=1e-4, atol=1e-5)
    assert fs.meta["backbone"]["model"] == str(tiny_clip) and fs.meta["preprocessing"]["mode"] == "crop"
    assert len(fs.meta["shards"]) == 4  # 24 images in shards of 7


def test_clip_preprocessing_pooled_feature_and_full_clip_checkpoint(image_tree, tmp_path):
    """A full CLIPModel checkpoint (text tower too) loads; 'pooled' gives the pre-projection CLS output."""
    root, samples = image_tree
    torch.manual_seed(1)
    full = CLIPModel(
        CLIPConfig(
            vision_config=TINY_VISION,
            text_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2},
            projection_dim=16,
        )
    )
    full.save_pretrained(tmp_path / "full")
    bb = load_backbone(str(tmp_path / "full"), precision="fp32", feature="pooled", preprocessing_mode="clip")
    assert bb.dim == 32 and bb.preprocessing.mode == "clip"
    sub = samples.iloc[:4]
    extract(
        sub,
        root=root,
        out=tmp_path / "p",
        backbone=bb,
        config=ExtractConfig(storage_dtype="float32", workers=0),
        progress=False,
    )
    got = open_feature_set(tmp_path / "p").take(np.arange(4))
    with torch.no_grad():
        for i, p in enumerate(sub["path"]):
            x = torch.from_numpy(Preprocessing(mode="clip")(load_rgb(root / p)))[None]
            ref = full.vision_model(pixel_values=x).pooler_output[0].numpy()
            np.testing.assert_allclose(got[i], ref, rtol=1e-4, atol=1e-5)


def test_bf16_stays_close_to_fp32(tiny_clip, image_tree):
    root, samples = image_tree
    prep = Preprocessing()
    x = torch.from_numpy(np.stack([prep(load_rgb(root / p)) for p in samples["path"][:8]]))
    f32 = load_backbone(str(tiny_clip), precision="fp32")(x)
    b16 = load_backbone(str(tiny_clip), precision="bf16")(x)
    assert b16.dtype == torch.float32
    cos = torch.nn.functional.cosine_similarity(f32, b16, dim=1)
    assert cos.min().item() > 0.999


def test_loading_errors_are_clear(tmp_path, tiny_clip, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(BackboneError, match="no such folder"):
        load_backbone(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(BackboneError, match="incomplete CLIP folder"):
        load_backbone(str(tmp_path / "empty"))
    pk = tmp_path / "pickled"
    pk.mkdir()
    (pk / "config.json").write_text((tiny_clip / "config.json").read_text())
    torch.save({}, pk / "pytorch_model.bin")
    with pytest.raises(BackboneError, match="pickle-based .bin weights are not loaded"):
        load_backbone(str(pk))
    with pytest.raises(BackboneError, match="offline"):
        load_backbone("no-such-org/no-such-model")


def write_bad_inputs(root):
    (root / "fake").mkdir(parents=True, exist_ok=True)
    (root / "real").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(root / "real" / "good.png")
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(root / "fake" / "good.jpg", quality=90)
    (root / "fake" / "zero.jpg").write_bytes(b"")
    data = (root / "fake" / "good.jpg").read_bytes()
    (root / "fake" / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (root / "fake" / "text.png").write_text("this is not an image")
    (root / "real" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(rng.integers(0, 256, 200, dtype=np.uint8)))
    # a tiny PNG header that declares a huge image: a decompression bomb
    import struct
    import zlib

    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    chunk = lambda t, d: struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))  # noqa: E731
    (root / "real" / "bomb.png").write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))
    (root / "real" / "notes.txt").write_text("ignored by the listing")
    return root


def test_bad_inputs_are_reported_and_the_job_finishes(tiny_clip, tmp_path, capsys):
    root = write_bad_inputs(tmp_path / "bad")
    out = tmp_path / "out"
    rc = main(
        [
            "extract",
            str(root),
            "--layout",
            "folders",
            "--backbone",
            str(tiny_clip),
            "--out",
            str(out),
            "--workers",
            "0",
            "-q",
        ]
    )
    assert rc == 1  # scripts notice
    printed = capsys.readouterr().out
    assert "2 of 7 images extracted" in printed and "errors.csv" in printed
    errors = pd.read_csv(out / "errors.csv")
    reasons = dict(zip(errors["path"].map(lambda p: p.split("/")[-1]), errors["reason"], strict=True))
    assert set(reasons) == {"zero.jpg", "truncated.jpg", "text.png", "corrupt.png", "bomb.png", "notes.txt"}
    assert "zero" in reasons["zero.jpg"].lower() or "empty" in reasons["zero.jpg"].lower()
    assert "truncated" in reasons["truncated.jpg"].lower()
    assert "bomb" in reasons["bomb.png"].lower()
    fs = open_feature_set(out)
    assert sorted(p.split("/")[-1] for p in fs.paths) == ["good.jpg", "good.png"]


def test_unreadable_file_is_reported(tiny_clip, tmp_path):
    if os.geteuid() == 0:
        # root reads any file; a directory named like an image is unreadable as a file for everyone
        root = write_bad_inputs(tmp_path / "u")
        (root / "fake" / "dir.png").mkdir()
        samples = pd.DataFrame({"path": ["fake/good.jpg", "fake/dir.png"], "label": [1, 1], "generator": "g"})
    else:
        root = write_bad_inputs(tmp_path / "u")
        os.chmod(root / "fake" / "good.jpg", 0)
        samples = pd.DataFrame({"path": ["real/good.png", "fake/good.jpg"], "label": [0, 1], "generator": "g"})
    res = extract(
        samples,
        root=root,
        out=tmp_path / "o",
        backbone=load_backbone(str(tiny_clip)),
        config=ExtractConfig(workers=0),
        progress=False,
    )
    assert len(res.errors) == 1 and res.n_ok == 1


def test_metadata_mismatch_is_refused(tiny_clip, image_tree, tmp_path):
    root, samples = image_tree
    cfg = ExtractConfig(workers=0, shard_size=8)
    bb = load_backbone(str(tiny_clip))
    extract(samples.iloc[:8], root=root, out=tmp_path / "m", backbone=bb, config=cfg, progress=False)
    with pytest.raises(ExtractError, match="different preprocessing"):
        extract(
            samples,
            root=root,
            out=tmp_path / "m",
            backbone=load_backbone(str(tiny_clip), preprocessing_mode="clip"),
            config=cfg,
            progress=False,
        )
    with pytest.raises(ExtractError, match="different perturbation"):
        extract(
            samples,
            root=root,
            out=tmp_path / "m",
            backbone=bb,
            perturbation=Perturbation(jpeg_quality=50),
            config=cfg,
            progress=False,
        )
    with pytest.raises(ExtractError, match="different backbone"):
        extract(
            samples,
            root=root,
            out=tmp_path / "m",
            backbone=load_backbone(str(tiny_clip), feature="pooled"),
            config=cfg,
            progress=False,
        )
    # the same settings may add rows: new images are appended
    res = extract(samples.iloc[:10], root=root, out=tmp_path / "m", backbone=bb, config=cfg, progress=False)
    assert res.n_ok == 10 and res.n_extracted_now == 2  # shard 0 (rows 0-7) kept; shard 1 holds the new rows
    assert list(open_feature_set(tmp_path / "m").paths) == list(samples["path"][:10])


def test_perturbation_is_recorded_and_applied(tiny_clip, image_tree, tmp_path):
    root, samples = image_tree
    bb = load_backbone(str(tiny_clip), precision="fp32")
    cfg = ExtractConfig(workers=0, storage_dtype="float32")
    extract(samples.iloc[:2], root=root, out=tmp_path / "c", backbone=bb, config=cfg, progress=False)
    pert = Perturbation(jpeg_quality=30, blur_sigma=1.0)
    extract(samples.iloc[:2], root=root, out=tmp_path / "j", backbone=bb, perturbation=pert, config=cfg, progress=False)
    clean, jpg = open_feature_set(tmp_path / "c"), open_feature_set(tmp_path / "j")
    assert jpg.meta["perturbation"] == pert.to_dict() and clean.meta["perturbation"] is None
    assert not np.allclose(clean.take([0, 1]), jpg.take([0, 1]))
    model = CLIPVisionModelWithProjection.from_pretrained(tiny_clip).eval()
    x = torch.from_numpy(Preprocessing()(pert.apply(load_rgb(root / samples["path"][0]))))[None]
    with torch.no_grad():
        np.testing.assert_allclose(
            jpg.take([0])[0], model(pixel_values=x).image_embeds[0].numpy(), rtol=1e-4, atol=1e-5
        )


KILL_SCRIPT = """
import sys, pandas as pd
from causalclip.backbones.registry import load_backbone
from causalclip.features.extract import extract
from causalclip.features.job import ExtractConfig
samples = pd.read_parquet(sys.argv[3])
extract(samples, root=sys.argv[1], out=sys.argv[2], backbone=load_backbone(sys.argv[4], precision="fp32"),
        config=ExtractConfig(batch_size=2, shard_size=4, workers=0), progress=False)
"""


def test_resume_after_kill_equals_clean_run(tiny_clip, image_tree, tmp_path):
    root, samples = image_tree
    big = pd.concat([samples] * 4, ignore_index=True)
    # the same files listed repeatedly under different generators
    big["generator"] = np.repeat(["a", "b", "c", "d"], len(samples))
    big.to_parquet(tmp_path / "plan.parquet")
    cfg = ExtractConfig(batch_size=2, shard_size=4, workers=0)
    clean = tmp_path / "clean"
    extract(
        big, root=root, out=clean, backbone=load_backbone(str(tiny_clip), precision="fp32"), config=cfg, progress=False
    )
    out = tmp_path / "killed"
    for attempt in range(3):  # kill at different moments until one lands mid-run
        proc = subprocess.Popen(
            [sys.executable, "-c", KILL_SCRIPT, str(root), str(out), str(tmp_path / "plan.parquet"), str(tiny_clip)]
        )
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            done = list((out / "parts").glob("shard-*.json")) if (out / "parts").exists() else []
            if len(done) >= 2 + 3 * attempt:
                break
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if not (out / "meta.json").exists():
            break
    assert not (out / "meta.json").exists(), "the job was never interrupted mid-run"
    res = extract(
        big, root=root, out=out, backbone=load_backbone(str(tiny_clip), precision="fp32"), config=cfg, progress=False
    )
    assert 0 < res.n_extracted_now < len(big)
    a, b = open_feature_set(clean), open_feature_set(out)
    pd.testing.assert_frame_equal(a.samples, b.samples)
    np.testing.assert_array_equal(a.take(np.arange(len(a))), b.take(np.arange(len(b))))


def test_crash_between_shard_files_is_recovered(tiny_clip, image_tree, tmp_path, monkeypatch):
    """A crash after a shard's features were written but before its marker: the shard is redone, not duplicated."""
    import causalclip.features.extract as ex

    root, samples = image_tree
    cfg = ExtractConfig(batch_size=3, shard_size=6, workers=0)
    bb = load_backbone(str(tiny_clip), precision="fp32")
    real_write = ex.LocalFolder.write
    calls = {"n": 0}

    def flaky(self, name, data):
        if name.startswith("parts/shard-"):
            calls["n"] += 1
            if calls["n"] == 2:
                raise KeyboardInterrupt  # dies just before the 2nd marker
        real_write(self, name, data)

    monkeypatch.setattr(ex.LocalFolder, "write", flaky)
    with pytest.raises(KeyboardInterrupt):
        extract(samples, root=root, out=tmp_path / "x", backbone=bb, config=cfg, progress=False)
    monkeypatch.setattr(ex.LocalFolder, "write", real_write)
    res = extract(samples, root=root, out=tmp_path / "x", backbone=bb, config=cfg, progress=False)
    assert res.n_extracted_now == len(samples) - 6
    fs = open_feature_set(tmp_path / "x")
    assert list(fs.paths) == list(samples["path"])


def write_images(root, names, *, seed):
    rng = np.random.default_rng(seed)
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(root / name)


def test_resume_after_the_dataset_grew(tiny_clip, tmp_path):
    """Images added to the dataset after a finished run: the same command extends the set. With shards of 4, the
    first 6 images leave shard 1 part-full (rows 4-5); after 5 more files, shard 1 covers rows 4-7 and is redone,
    shard 2 (rows 8-10) is new, shard 0 is kept. Every listed image ends up in the set exactly once, in plan order
    (the first listing, then the new images), with the features of a fresh extraction."""
    root = tmp_path / "data"
    write_images(root, [f"{c}/{n}.png" for c in ("real", "fake") for n in "bdf"], seed=0)
    cfg = ExtractConfig(batch_size=3, shard_size=4, workers=0, storage_dtype="float32")
    bb = load_backbone(str(tiny_clip), precision="fp32")
    first = list_samples(root, "folders").samples
    res = extract(first, root=root, out=tmp_path / "grown", backbone=bb, config=cfg, progress=False)
    assert res.n_ok == 6 and len(open_feature_set(tmp_path / "grown").meta["shards"]) == 2

    # the new files sort between the old ones in the listing; the plan appends them
    write_images(root, ["real/a.png", "real/e.png", "fake/c.png", "fake/g.png", "fake/h.png"], seed=1)
    grown = list_samples(root, "folders").samples
    assert len(grown) == 11 and set(first["path"]) < set(grown["path"])
    res = extract(grown, root=root, out=tmp_path / "grown", backbone=bb, config=cfg, progress=False)
    assert res.n_planned == res.n_ok == 11 and len(res.errors) == 0
    assert res.n_extracted_now == 7  # shard 0 kept; shard 1 redone with its new range; shard 2 new
    fs = open_feature_set(tmp_path / "grown")
    assert sorted(fs.paths) == sorted(grown["path"])  # each listed image exactly once
    plan_order = pd.concat([first, grown[~grown["path"].isin(first["path"])]], ignore_index=True)
    assert list(fs.paths) == list(plan_order["path"]) and list(fs.labels) == list(plan_order["label"])
    assert len(fs.meta["shards"]) == 3

    extract(plan_order, root=root, out=tmp_path / "fresh", backbone=bb, config=cfg, progress=False)
    ref = open_feature_set(tmp_path / "fresh")
    pd.testing.assert_frame_equal(fs.samples, ref.samples)
    np.testing.assert_array_equal(fs.take(np.arange(len(fs))), ref.take(np.arange(len(ref))))


def test_a_listing_without_new_images_changes_nothing(tiny_clip, tmp_path):
    """The plan only grows: a later listing in another order, or without some planned images (files deleted),
    extracts nothing and leaves the set as it was, in the first run's order; images no longer listed stay in it."""
    root = tmp_path / "data"
    write_images(root, [f"{c}/{n}.png" for c in ("real", "fake") for n in "abc"], seed=0)
    cfg = ExtractConfig(batch_size=3, shard_size=4, workers=0, storage_dtype="float32")
    bb = load_backbone(str(tiny_clip), precision="fp32")
    listing = list_samples(root, "folders").samples
    extract(listing, root=root, out=tmp_path / "f", backbone=bb, config=cfg, progress=False)
    before = open_feature_set(tmp_path / "f")
    x = before.take(np.arange(len(before)))

    (root / "real" / "b.png").unlink()
    (root / "fake" / "c.png").unlink()
    shrunk = list_samples(root, "folders").samples
    assert len(shrunk) == 4
    for later in (listing.iloc[::-1], shrunk, shrunk.iloc[::-1]):
        res = extract(later, root=root, out=tmp_path / "f", backbone=bb, config=cfg, progress=False)
        assert res.n_extracted_now == 0 and res.n_planned == res.n_ok == 6 and len(res.errors) == 0
        after = open_feature_set(tmp_path / "f")
        pd.testing.assert_frame_equal(after.samples, before.samples)
        np.testing.assert_array_equal(after.take(np.arange(len(after))), x)


def test_training_augmentation_is_deterministic_per_image(tiny_clip, image_tree, tmp_path):
    from causalclip.images.transforms import Augmentation

    root, samples = image_tree
    bb = load_backbone(str(tiny_clip), precision="fp32")
    cfg = ExtractConfig(workers=0, storage_dtype="float32", shard_size=5)
    aug = Augmentation(blur_prob=0.5, jpeg_prob=0.5)
    sub = samples.iloc[:10]
    for name in ("a", "b"):
        extract(
            sub,
            root=root,
            out=tmp_path / name,
            backbone=bb,
            augmentation=aug,
            augment_seed=3,
            config=cfg,
            progress=False,
        )
    extract(sub, root=root, out=tmp_path / "clean", backbone=bb, config=cfg, progress=False)
    a, b, clean = (open_feature_set(tmp_path / n).take(np.arange(10)) for n in ("a", "b", "clean"))
    np.testing.assert_array_equal(a, b)
    changed = [not np.allclose(a[i], clean[i]) for i in range(10)]
    expected = [not aug.draw(seed=3, index=i).is_identity for i in range(10)]
    assert changed == expected and any(expected) and not all(expected)
    assert open_feature_set(tmp_path / "a").meta["augmentation"]["seed"] == 3
