"""Presets resolve the paper's protocols against dataset trees on disk (fake trees of tiny images)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from causalclip.paper.presets import PRESETS, PresetError, holdout_mask, resolve_preset
from causalclip.paper.tables import DIFFUSION_TEST_SETS, GP_TEST_SETS, TEST_SETS, canonical_test_set, column_order

# GenImage generator folders as released (some with the extra release level, some re-organised without it).
GENIMAGE = {
    "stable_diffusion_v_1_4": "imagenet_ai_0419_sdv4",
    "stable_diffusion_v_1_5": "imagenet_ai_0424_sdv5",
    "ADM": "imagenet_ai_0508_adm",
    "glide": None,
    "Midjourney": "imagenet_midjourney",
    "wukong": None,
    "VQDM": "imagenet_ai_0419_vqdm",
    "BigGAN": "imagenet_ai_0419_biggan",  # in GenImage, but not one of the paper's test sets
}
# CNNDetection test folders: generator -> class folders (None: 0_real/1_fake directly).
CNN_TEST = {
    "progan": ["airplane", "cat"],
    "cyclegan": ["horse", "zebra"],
    "biggan": None,
    "stylegan": ["bedroom", "car"],
    "stargan": None,
    "gaugan": None,
    "deepfake": None,
    "san": None,
    "whichfaceisreal": None,  # in the CNNDetection test set, not in the paper's tables
}


def _images(folder: Path, n: int, label: int, rng: np.random.Generator) -> None:
    """n tiny images; fakes brighter than reals so that heads have something to learn."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        base = 150 if label else 90
        arr = np.clip(rng.normal(base, 40, (24, 24, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(arr).save(folder / f"{i:03d}.png")


def build_fake_tree(root: Path, *, n_test: int = 3, n_train: int = 10, seed: int = 0) -> dict[str, Path]:
    """GenImage and CNNDetection (train/val/test) trees with ``n_test`` images per class and test folder and
    ``n_train`` per class in the SD1.4 train split and each ProGAN training class. Returns the roots."""
    rng = np.random.default_rng(seed)
    gi, cnn = root / "GenImage", root / "CNNDetection"
    for gen, inner in GENIMAGE.items():
        holder = gi / gen / inner if inner else gi / gen
        splits = {"val": n_test} | ({"train": n_train} if gen == "stable_diffusion_v_1_4" else {})
        for split, n in splits.items():
            _images(holder / split / "nature", n, 0, rng)
            _images(holder / split / "ai", n, 1, rng)
    for gen, classes in CNN_TEST.items():
        for leaf in [cnn / "test" / gen / c for c in classes] if classes else [cnn / "test" / gen]:
            _images(leaf / "0_real", max(1, n_test // (len(classes) if classes else 1)), 0, rng)
            _images(leaf / "1_fake", max(1, n_test // (len(classes) if classes else 1)), 1, rng)
    for split, n in (("train", n_train // 2), ("val", 2)):
        for cls in ("airplane", "bird"):
            _images(cnn / split / cls / "0_real", n, 0, rng)
            _images(cnn / split / cls / "1_fake", n, 1, rng)
    return {"genimage": gi, "cnndetection": cnn}


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return build_fake_tree(tmp_path_factory.mktemp("data"))


def test_presets_are_the_papers_protocols():
    assert set(PRESETS) == {"sd14", "progan"}
    for name, preset in PRESETS.items():
        assert sorted(preset.test_sets) == sorted(TEST_SETS) and len(preset.test_sets) == 15
        assert preset.test_sets == column_order(name)
    assert PRESETS["sd14"].train_set == "SD1.4" and PRESETS["sd14"].train_dataset == "genimage"
    assert PRESETS["progan"].train_set == "ProGAN" and PRESETS["progan"].train_dataset == "cnndetection"


def test_sd14_resolves_every_set_to_the_right_folder(tree):
    r = resolve_preset("sd14", tree)
    assert [ds.name for ds in r.test] == list(column_order("sd14"))
    for ds in r.test:
        assert ds.role == "test"
        # the folder the preset picked is the one whose (release) name maps to that test set
        names = {ds.root.name, *(p.name for p in ds.root.iterdir())}
        assert ds.name in {canonical_test_set(n) for n in names}
        if ds.name in DIFFUSION_TEST_SETS:
            assert (ds.dataset, ds.layout, ds.split) == ("genimage", "genimage", "val")
            assert ds.root.parent == tree["genimage"]
        else:
            assert (ds.dataset, ds.layout) == ("cnndetection", "cnndetection")
            assert ds.root.parent == tree["cnndetection"] / "test"
    assert r.train.root == r.val.root == tree["genimage"] / "stable_diffusion_v_1_4"
    assert (r.train.split, r.val.split) == ("train", "train")
    assert (r.train.holdout.part, r.val.holdout.part) == ("train", "val")
    # folders the protocol does not use are reported, not silently dropped
    assert any(u.endswith("BigGAN") for u in r.unused) and any(u.endswith("whichfaceisreal") for u in r.unused)
    assert any("held-out" in n for n in r.notes)


def test_listings_label_generators_and_keep_validation_disjoint(tree):
    r = resolve_preset("sd14", tree, val_fraction=0.3, val_seed=1)
    tr, va = r.train.list(), r.val.list()
    full = len(tr.samples) + len(va.samples)
    assert full == 20  # 10 ai + 10 nature in the SD1.4 train split
    assert not set(tr.samples["path"]) & set(va.samples["path"])
    assert set(tr.samples["generator"]) == set(va.samples["generator"]) == {"SD1.4"}
    for part in (tr, va):  # both classes on both sides; labels from folder names (ai = fake)
        assert set(part.samples["label"]) == {0, 1}
        assert (part.samples["label"] == part.samples["path"].str.contains("/ai/").astype(int)).all()
    assert all("/train/" in "/" + p for p in tr.samples["path"])
    for ds in r.test:
        s = ds.list().samples
        assert set(s["generator"]) == {ds.name} and set(s["label"]) == {0, 1}
        if ds.dataset == "genimage":
            assert all("/val/" in "/" + p for p in s["path"])
    capped = r.train.list(max_per_class=2, seed=0).samples
    assert capped.groupby("label").size().tolist() == [2, 2]
    assert set(capped["path"]) <= set(tr.samples["path"])


def test_holdout_is_stable_per_image_and_stratified():
    import pandas as pd

    paths = [f"x/{i}.png" for i in range(2000)]
    df = pd.DataFrame({"path": paths, "label": np.arange(2000) % 2, "generator": "g"})
    m = holdout_mask(df, 0.1, 0)
    assert 0.07 < m.mean() < 0.13
    # membership of an image does not depend on the others: drop half the rows, the rest keep their side
    half = df.iloc[::2].reset_index(drop=True)
    np.testing.assert_array_equal(holdout_mask(half, 0.1, 0), m[::2])
    assert not np.array_equal(holdout_mask(df, 0.1, 1), m)  # the seed matters
    tiny = df.iloc[:4].reset_index(drop=True)  # two per class: one on each side whatever the hashes
    mt = holdout_mask(tiny, 0.01, 0)
    for label in (0, 1):
        assert mt[tiny["label"].to_numpy() == label].sum() == 1
    with pytest.raises(ValueError, match="fraction"):
        holdout_mask(df, 1.0, 0)


def test_progan_uses_train_and_val_folders_and_falls_back_to_a_holdout(tree, tmp_path):
    r = resolve_preset("progan", tree)
    assert r.train.root == tree["cnndetection"] / "train" and r.train.holdout is None
    assert r.val.root == tree["cnndetection"] / "val" and r.val.holdout is None
    assert [ds.name for ds in r.test] == list(column_order("progan"))
    s = r.train.list().samples
    assert set(s["generator"]) == {"ProGAN"} and set(s["class"]) == {"airplane", "bird"}
    # separate roots: test set alone under --cnndetection, training set given on its own, no validation set
    test_only = tmp_path / "CNN_synth_testset"
    shutil.copytree(tree["cnndetection"] / "test", test_only)
    r2 = resolve_preset(
        "progan",
        {"genimage": tree["genimage"], "cnndetection": test_only, "cnndetection_train": tree["cnndetection"] / "train"},
    )
    assert r2.train.root == r2.val.root == tree["cnndetection"] / "train"
    assert (r2.train.holdout.part, r2.val.holdout.part) == ("train", "val")
    assert any("no ProGAN validation set" in n for n in r2.notes)
    assert {ds.root for ds in r2.test if ds.dataset == "cnndetection"} == {
        test_only / d for d in ("progan", "cyclegan", "biggan", "stylegan", "stargan", "gaugan", "deepfake", "san")
    }


def test_every_missing_folder_is_named_in_one_message(tree, tmp_path):
    gi = tmp_path / "gi"
    shutil.copytree(tree["genimage"], gi)
    shutil.rmtree(gi / "ADM")
    shutil.rmtree(gi / "glide" / "val")
    cnn = tmp_path / "cnn"
    shutil.copytree(tree["cnndetection"] / "test", cnn)
    shutil.rmtree(cnn / "san")
    with pytest.raises(PresetError) as e:
        resolve_preset("sd14", {"genimage": gi, "cnndetection": cnn})
    msg = str(e.value)
    assert "3 problem(s)" in msg
    assert "GenImage ADM: no folder" in msg and "imagenet_ai_0508_adm" in msg
    assert f"{gi / 'glide'} has no val/ folder" in msg
    assert "CNNDetection SAN: no folder" in msg
    assert "--allow-missing" in msg
    # with allow_missing the rest runs and the missing sets are listed
    r = resolve_preset("sd14", {"genimage": gi, "cnndetection": cnn}, allow_missing=True)
    assert [ds.name for ds in r.test] == [t for t in column_order("sd14") if t not in ("ADM", "GLIDE", "SAN")]
    assert len(r.missing) == 3
    # a missing root blocks all its sets at once; without the training set nothing runs
    with pytest.raises(PresetError) as e:
        resolve_preset("sd14", {"cnndetection": cnn})
    assert "--genimage not given: needed for SD1.4 (training)" in str(e.value)
    with pytest.raises(PresetError, match="--genimage not given"):
        resolve_preset("sd14", {"cnndetection": cnn}, allow_missing=True)
    r = resolve_preset("progan", {"cnndetection": tree["cnndetection"]}, allow_missing=True)
    assert [ds.name for ds in r.test] == list(GP_TEST_SETS)
    assert len(r.missing) == 1 and "--genimage not given" in r.missing[0]
    with pytest.raises(PresetError, match="ProGAN training set not found"):
        resolve_preset("progan", {"genimage": tree["genimage"], "cnndetection": cnn})
    with pytest.raises(PresetError, match="unknown preset"):
        resolve_preset("sd15", {})
    with pytest.raises(PresetError, match="unknown dataset root"):
        resolve_preset("sd14", {"genimages": gi})


def test_cache_names_say_what_the_set_holds(tree):
    r = resolve_preset("sd14", tree)
    names = {ds.cache_name(max_per_class=100, seed=3) for ds in (r.train, r.val, *r.test)}
    assert len(names) == 17  # all distinct
    assert r.val.cache_name() == "genimage-train-SD1.4-val0.05h0"
    assert r.test[0].cache_name(max_per_class=100, seed=3) == "genimage-val-SD1.4-max100s3"
