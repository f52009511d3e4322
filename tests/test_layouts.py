"""Dataset layouts: labels by folder name, generators, the optional levels, nothing skipped silently, a stable
order, balanced sampling and errors that say what was expected. Trees are built from empty files."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest

from causalclip.images.layouts import LAYOUTS, LayoutError, LayoutResult, list_samples


def make_tree(root, files):
    """Create empty files (relative POSIX paths) under ``root``; returns ``root``."""
    for rel in files:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
    return root


def imgs(prefix, n, ext=".png"):
    return [f"{prefix}/{i:03d}{ext}" for i in range(n)]


def labels_of(res: LayoutResult) -> dict[str, int]:
    return dict(zip(res.samples["path"], res.samples["label"], strict=True))


def counts(res: LayoutResult) -> dict[tuple[str, int], int]:
    return {k: int(v) for k, v in res.samples.groupby(["generator", "label"]).size().items()}


def assert_sorted(samples: pd.DataFrame) -> None:
    keys = list(zip(samples["generator"], samples["label"], samples["path"], strict=True))
    assert keys == sorted(keys)


def test_registry_holds_every_documented_layout():
    assert set(LAYOUTS) == {"genimage", "cnndetection", "pairs", "folders", "manifest"}
    with pytest.raises(LayoutError, match="unknown layout 'imagefolder'.*available"):
        list_samples(".", "imagefolder")


# ---------------------------------------------------------------------------------------------------------
# GenImage


def test_genimage_labels_by_name_not_alphabet_and_both_depths(tmp_path):
    # ai < nature alphabetically: an ImageFolder-style reader would call the fakes class 0.
    make_tree(
        tmp_path,
        imgs("ADM/imagenet_ai_0508_adm/train/ai", 3)  # the release's extra level
        + imgs("ADM/imagenet_ai_0508_adm/train/nature", 2)
        + imgs("ADM/imagenet_ai_0508_adm/val/ai", 1)
        + imgs("ADM/imagenet_ai_0508_adm/val/nature", 1)
        + imgs("glide/train/ai", 1)  # no extra level
        + imgs("glide/train/nature", 4),
    )
    res = list_samples(tmp_path, "genimage", split="train")
    lab = labels_of(res)
    assert all(lab[p] == 1 for p in imgs("ADM/imagenet_ai_0508_adm/train/ai", 3))
    assert all(lab[p] == 0 for p in imgs("ADM/imagenet_ai_0508_adm/train/nature", 2))
    assert counts(res) == {("ADM", 0): 2, ("ADM", 1): 3, ("glide", 0): 4, ("glide", 1): 1}
    assert res.root == tmp_path
    assert (tmp_path / res.samples["path"].iloc[0]).is_file()
    assert res.samples["label"].dtype == np.int64
    assert_sorted(res.samples)
    assert len(res.ignored) == 0  # the other split is a choice, not a loss
    with pytest.raises(LayoutError, match=r"glide: no val/ folder for generator 'glide'"):
        list_samples(tmp_path, "genimage", split="val")  # glide has no val/: loud, not a silent gap
    assert counts(list_samples(tmp_path / "ADM", "genimage", split="val")) == {("ADM", 0): 1, ("ADM", 1): 1}


def test_genimage_root_may_be_one_generator_folder(tmp_path):
    gen = make_tree(
        tmp_path / "stable_diffusion_v_1_4",
        imgs("imagenet_ai_0419_sdv4/train/ai", 2) + imgs("imagenet_ai_0419_sdv4/train/nature", 2),
    )
    res = list_samples(gen, "genimage", split="train")
    assert set(res.samples["generator"]) == {"stable_diffusion_v_1_4"}
    assert res.samples["path"].iloc[0].startswith("imagenet_ai_0419_sdv4/train/")
    direct = make_tree(tmp_path / "sdv5", imgs("val/ai", 1) + imgs("val/nature", 1))
    assert set(list_samples(direct, "genimage", split="val").samples["generator"]) == {"sdv5"}
    named = list_samples(gen, "genimage", split="train", generator="sd14")
    assert set(named.samples["generator"]) == {"sd14"}


def test_genimage_errors_say_what_was_expected(tmp_path):
    make_tree(tmp_path, imgs("glide/train/ai", 1) + imgs("glide/train/nature", 1))
    with pytest.raises(LayoutError, match="needs split='train' or split='val'"):
        list_samples(tmp_path, "genimage")
    with pytest.raises(LayoutError, match="needs split"):
        list_samples(tmp_path, "genimage", split="test")
    with pytest.raises(LayoutError, match=r"no val/ folder.*found \['train/'\]"):
        list_samples(tmp_path, "genimage", split="val")
    make_tree(tmp_path, imgs("wukong/train/fake", 1) + imgs("wukong/train/nature", 1))
    with pytest.raises(LayoutError, match=r"wukong/train: expected ai/ .* and nature/.*found \['fake/', 'nature/'\]"):
        list_samples(tmp_path, "genimage", split="train")
    zipped = make_tree(
        tmp_path / "zips", ["VQDM/imagenet_vqdm.zip", "glide/train/ai/a.png", "glide/train/nature/b.png"]
    )
    with pytest.raises(LayoutError, match=r"VQDM: expected train/ and val/.*imagenet_vqdm\.zip"):
        list_samples(zipped, "genimage", split="train")
    with pytest.raises(LayoutError, match="folder not found"):
        list_samples(tmp_path / "missing", "genimage", split="train")


# ---------------------------------------------------------------------------------------------------------
# CNNDetection


def test_cnndetection_class_level_present_and_absent_in_one_tree(tmp_path):
    make_tree(
        tmp_path,
        imgs("progan/airplane/0_real", 2)
        + imgs("progan/airplane/1_fake", 3)
        + imgs("progan/cat/0_real", 1)
        + imgs("progan/cat/1_fake", 1)
        + imgs("biggan/0_real", 4)
        + imgs("biggan/1_fake", 5),
    )
    res = list_samples(tmp_path, "cnndetection")
    s = res.samples
    assert counts(res) == {("biggan", 0): 4, ("biggan", 1): 5, ("progan", 0): 3, ("progan", 1): 4}
    assert s.loc[s["generator"] == "biggan", "class"].isna().all()
    progan = s[s["generator"] == "progan"]
    assert sorted(progan["class"].unique()) == ["airplane", "cat"]
    assert all(c in p for p, c in zip(progan["path"], progan["class"], strict=True))
    assert (s["label"] == s["path"].str.contains("/1_fake/").astype(int)).all()
    assert_sorted(s)


def test_cnndetection_training_set_folder_is_one_generator_named_without_suffix(tmp_path):
    root = make_tree(
        tmp_path / "progan_train",
        imgs("airplane/0_real", 1) + imgs("airplane/1_fake", 1) + imgs("train/0_real", 2) + imgs("train/1_fake", 2),
    )
    res = list_samples(root, "cnndetection")  # "train" here is an LSUN class, not a split
    assert set(res.samples["generator"]) == {"progan"}
    assert sorted(res.samples["class"].unique()) == ["airplane", "train"]
    with pytest.raises(LayoutError, match=r"looks like a class folder next to \['airplane'\], not a split"):
        list_samples(root, "cnndetection", split="train")
    # A ROOT of single-class generators with unknown names: each sub-folder is a generator.
    other = make_tree(
        tmp_path / "mytests",
        imgs("sdxl/0_real", 1) + imgs("sdxl/1_fake", 1) + imgs("mj/0_real", 1) + imgs("mj/1_fake", 1),
    )
    res = list_samples(other, "cnndetection")
    assert set(res.samples["generator"]) == {"sdxl", "mj"}
    assert res.samples["class"].isna().all()
    # ...unless generator= says ROOT is one generator with classes.
    res = list_samples(other, "cnndetection", generator="mygan")
    assert set(res.samples["generator"]) == {"mygan"} and set(res.samples["class"]) == {"sdxl", "mj"}


def test_cnndetection_split_folders(tmp_path):
    make_tree(
        tmp_path,
        imgs("train/progan/horse/0_real", 2)
        + imgs("train/progan/horse/1_fake", 2)
        + imgs("test/gaugan/0_real", 1)
        + imgs("test/gaugan/1_fake", 1),
    )
    res = list_samples(tmp_path, "cnndetection", split="test")
    assert counts(res) == {("gaugan", 0): 1, ("gaugan", 1): 1}
    assert res.samples["path"].str.startswith("test/gaugan/").all()
    assert res.root == tmp_path
    with pytest.raises(LayoutError, match=r"split folders \['test', 'train'\]; pass split="):
        list_samples(tmp_path, "cnndetection")
    with pytest.raises(LayoutError, match="no val/ folder"):
        list_samples(tmp_path, "cnndetection", split="val")


def test_cnndetection_errors(tmp_path):
    make_tree(tmp_path, imgs("stargan/0_real", 1) + imgs("stargan/fake", 1))
    with pytest.raises(LayoutError, match=r"stargan: expected both 0_real/ and 1_fake/.*found \['0_real/', 'fake/'\]"):
        list_samples(tmp_path, "cnndetection")
    empty = make_tree(tmp_path / "e", ["crn/0_real/a.png", "crn/1_fake/readme.txt"])
    with pytest.raises(LayoutError, match=r"crn/1_fake: no image files \(1 other"):
        list_samples(empty, "cnndetection")
    with pytest.raises(LayoutError, match="does not take pairs="):
        list_samples(empty, "cnndetection", pairs={"a": ("x", "y")})


# ---------------------------------------------------------------------------------------------------------
# pairs


def test_pairs_with_a_shared_real_root(tmp_path):
    make_tree(
        tmp_path,
        imgs("laion/0_real", 3) + imgs("dalle/1_fake", 2) + imgs("glide_100_10/1_fake", 1) + imgs("imagenet", 2),
    )
    make_tree(tmp_path, imgs("guided/1_fake", 1))
    pairs = {"dalle": ("laion", "dalle"), "glide_100_10": ("laion", "glide_100_10"), "guided": ("imagenet", "guided")}
    res = list_samples(tmp_path, "pairs", pairs=pairs)
    assert counts(res) == {
        ("dalle", 0): 3,
        ("dalle", 1): 2,
        ("glide_100_10", 0): 3,
        ("glide_100_10", 1): 1,
        ("guided", 0): 2,
        ("guided", 1): 1,
    }
    s = res.samples
    shared = s[s["path"].str.startswith("laion/")]
    assert len(shared) == 6 and set(shared["generator"]) == {"dalle", "glide_100_10"}  # once per generator
    assert (shared["label"] == 0).all()
    assert res.root == tmp_path
    assert all((tmp_path / p).is_file() for p in s["path"])
    assert_sorted(s)


def test_pairs_roots_outside_root_and_a_cnndetection_folder_as_both_roots(tmp_path):
    make_tree(tmp_path / "a", imgs("real", 2))
    make_tree(tmp_path / "b", imgs("fake", 1))
    make_tree(tmp_path / "cnn/progan", imgs("cat/0_real", 2) + imgs("cat/1_fake", 3))
    pairs = {"x": (tmp_path / "a/real", str(tmp_path / "b/fake")), "progan": ("../cnn/progan", "../cnn/progan")}
    res = list_samples(tmp_path / "b", "pairs", pairs=pairs)  # relative roots are relative to ROOT
    assert res.root == tmp_path  # the roots' common folder, since not all lie inside ROOT
    assert counts(res) == {("progan", 0): 2, ("progan", 1): 3, ("x", 0): 2, ("x", 1): 1}
    s = res.samples
    assert all((res.root / p).is_file() for p in s["path"])
    progan = s[s["generator"] == "progan"]
    assert (progan["label"] == progan["path"].str.contains("/1_fake/").astype(int)).all()


def test_pairs_errors(tmp_path):
    make_tree(tmp_path, imgs("mixed", 2) + imgs("reals", 1))
    with pytest.raises(LayoutError, match="under both the real and the fake root"):
        list_samples(tmp_path, "pairs", pairs={"g": ("mixed", "mixed")})
    with pytest.raises(LayoutError, match="fake root of generator 'g' not found"):
        list_samples(tmp_path, "pairs", pairs={"g": ("reals", "nope")})
    with pytest.raises(LayoutError, match="needs pairs="):
        list_samples(tmp_path, "pairs")
    with pytest.raises(LayoutError, match=r"expected \(real_root, fake_root\)"):
        list_samples(tmp_path, "pairs", pairs={"g": "reals"})
    with pytest.raises(LayoutError, match="does not take split="):
        list_samples(tmp_path, "pairs", pairs={"g": ("reals", "mixed")}, split="train")


# ---------------------------------------------------------------------------------------------------------
# folders


@pytest.mark.parametrize(("real", "fake"), [("real", "fake"), ("0_real", "1_fake"), ("nature", "ai"), ("REAL", "FAKE")])
def test_folders_accepts_each_naming(tmp_path, real, fake):
    root = make_tree(tmp_path / "my_set_val", imgs(real, 2) + imgs(f"{fake}/deeper", 3))
    res = list_samples(root, "folders")
    assert counts(res) == {("my_set", 0): 2, ("my_set", 1): 3}  # trailing _val dropped from the name
    assert all(lab == (0 if p.startswith(f"{real}/") else 1) for p, lab in labels_of(res).items())
    assert set(list_samples(root, "folders", generator="mine").samples["generator"]) == {"mine"}


def test_folders_split_and_errors(tmp_path):
    cifake = make_tree(
        tmp_path / "cifake", imgs("train/REAL", 2) + imgs("train/FAKE", 2) + imgs("test/REAL", 1) + imgs("test/FAKE", 1)
    )
    res = list_samples(cifake, "folders", split="test")
    assert counts(res) == {("cifake", 0): 1, ("cifake", 1): 1}  # a bare split folder takes its parent's name
    assert res.samples["path"].str.startswith("test/").all()
    with pytest.raises(LayoutError, match="pass split="):
        list_samples(cifake, "folders")
    odd = make_tree(tmp_path / "odd", imgs("real", 1) + imgs("ai", 1))
    with pytest.raises(
        LayoutError,
        match=r"expected real/ and fake/ or 0_real/ and 1_fake/ or nature/ and ai/; found \['ai/', 'real/'\]",
    ):
        list_samples(odd, "folders")
    both = make_tree(tmp_path / "both", imgs("real", 1) + imgs("fake", 1) + imgs("0_real", 1) + imgs("1_fake", 1))
    with pytest.raises(LayoutError, match="several real/fake folder pairs"):
        list_samples(both, "folders")


# ---------------------------------------------------------------------------------------------------------
# manifest


def test_manifest_relative_and_absolute_paths_and_word_labels(tmp_path):
    data = make_tree(tmp_path / "data", ["x/a.png", "x/b.png"])
    elsewhere = make_tree(tmp_path / "elsewhere", ["c.jpg"])
    df = pd.DataFrame(
        {
            "path": ["x/b.png", str(elsewhere / "c.jpg"), "x/a.png", "x/a.png"],
            "label": ["Fake", "real", " 0", "1"],
            "generator": ["sd", "sd", "sd", "other"],  # the same file under two generators is allowed
            "source": ["s1", "s2", "s3", "s4"],
        }
    )
    df.to_csv(data / "list.csv", index=False)
    res = list_samples(data / "list.csv", "manifest")
    assert res.root == data
    s = res.samples
    assert list(s.columns) == ["path", "label", "generator", "source"]
    assert list(zip(s["generator"], s["label"], s["path"], strict=True)) == [
        ("other", 1, "x/a.png"),
        ("sd", 0, str(elsewhere / "c.jpg")),
        ("sd", 0, "x/a.png"),
        ("sd", 1, "x/b.png"),
    ]
    assert all((res.root / p).is_file() for p in s["path"])  # root / absolute path = the absolute path
    df.assign(label=[1, 0, 0, 1]).to_parquet(data / "list.parquet", index=False)
    pq = list_samples(data / "list.parquet", "manifest").samples
    pd.testing.assert_frame_equal(pq[["path", "label", "generator"]], s[["path", "label", "generator"]])


def test_manifest_errors_name_the_file_and_the_first_bad_row(tmp_path):
    bad_label = tmp_path / "m.csv"
    pd.DataFrame({"path": ["a.png", "b.png", "c.png"], "label": [0, 2, "maybe"], "generator": "g"}).to_csv(
        bad_label, index=False
    )
    with pytest.raises(
        LayoutError,
        match=r"m\.csv: column 'label' must be 0/1 or real/fake; 2 row\(s\) are not, first at row 1 \(line 3\): '2'",
    ):
        list_samples(bad_label, "manifest")
    no_gen = tmp_path / "n.csv"
    pd.DataFrame({"path": ["a.png"], "label": [0]}).to_csv(no_gen, index=False)
    with pytest.raises(LayoutError, match=r"n\.csv: missing column\(s\) \['generator'\]"):
        list_samples(no_gen, "manifest")
    empty_path = tmp_path / "p.parquet"
    pd.DataFrame({"path": ["a.png", ""], "label": [0, 1], "generator": "g"}).to_parquet(empty_path)
    with pytest.raises(LayoutError, match=r"p\.parquet: column 'path' is empty in 1 row\(s\), first at row 1"):
        list_samples(empty_path, "manifest")
    dup = tmp_path / "d.csv"
    pd.DataFrame({"path": ["a.png", "b.png", "a.png"], "label": [0, 1, 1], "generator": "g"}).to_csv(dup, index=False)
    with pytest.raises(LayoutError, match=r"'a\.png' is listed twice for generator 'g', at row 0 .* and row 2"):
        list_samples(dup, "manifest")
    with pytest.raises(LayoutError, match="manifest file not found"):
        list_samples(tmp_path / "missing.csv", "manifest")
    (tmp_path / "m.json").write_text("{}")
    with pytest.raises(LayoutError, match=r"m\.json: a manifest must be a \.csv or \.parquet file"):
        list_samples(tmp_path / "m.json", "manifest")


# ---------------------------------------------------------------------------------------------------------
# What every folder layout shares


def test_non_images_hidden_files_and_stray_entries_are_reported_not_dropped(tmp_path):
    make_tree(
        tmp_path,
        imgs("biggan/0_real", 2, ext=".JPG")  # extensions are case-insensitive
        + imgs("biggan/1_fake", 1, ext=".webp")
        + ["biggan/0_real/notes.txt", "biggan/1_fake/.DS_Store", "biggan/1_fake/.cache/x.png", "biggan/1_fake/a.heic"]
        + ["biggan/labels.csv", "biggan/extra/y.png", "README.md", ".gitattributes"],
    )
    os.symlink(tmp_path / "nowhere.png", tmp_path / "biggan/1_fake/broken.png")
    res = list_samples(tmp_path, "cnndetection")
    assert counts(res) == {("biggan", 0): 2, ("biggan", 1): 1}
    reasons = dict(zip(res.ignored["path"], res.ignored["reason"], strict=True))
    assert reasons["biggan/0_real/notes.txt"] == "not an image file extension"
    assert reasons["biggan/1_fake/a.heic"] == "not an image file extension"
    assert reasons["biggan/1_fake/.DS_Store"] == "hidden file"
    assert reasons["biggan/1_fake/.cache/"] == "hidden folder; not scanned"
    assert "broken link" in reasons["biggan/1_fake/broken.png"]
    assert "not part of the layout" in reasons["biggan/extra/"]
    assert "outside" in reasons["biggan/labels.csv"] and "outside" in reasons["README.md"]
    assert reasons[".gitattributes"] == "hidden file"
    assert len(reasons) == 9
    assert list(res.ignored.columns) == ["path", "reason"]


def test_file_names_that_are_not_utf8_are_reported_not_listed(tmp_path):
    make_tree(tmp_path, imgs("real", 1) + imgs("fake", 1))
    try:
        os.close(os.open(os.fsencode(tmp_path / "fake") + b"/bad\xff.png", os.O_CREAT | os.O_WRONLY))
    except OSError:  # pragma: no cover - a filesystem that refuses such names
        pytest.skip("filesystem does not accept non-UTF-8 names")
    res = list_samples(tmp_path, "folders")
    assert counts(res)[(tmp_path.name, 1)] == 1
    assert res.ignored.to_dict("records") == [{"path": "fake/bad\\xff.png", "reason": "name is not valid UTF-8"}]


def test_symlink_loops_are_not_followed(tmp_path):
    make_tree(tmp_path, imgs("set/real", 1) + imgs("set/fake/sub", 1))
    os.symlink(tmp_path / "set/fake", tmp_path / "set/fake/sub/loop")
    res = list_samples(tmp_path / "set", "folders")
    assert counts(res) == {("set", 0): 1, ("set", 1): 1}
    assert "already scanned" in res.ignored.set_index("path").loc["fake/sub/loop/", "reason"]


def test_order_is_deterministic_whatever_the_creation_order(tmp_path):
    files = imgs("g1/0_real", 30) + imgs("g1/1_fake", 30) + imgs("g0/0_real", 5) + imgs("g0/1_fake", 7)
    a = make_tree(tmp_path / "a", files)
    b = make_tree(tmp_path / "b", files[::-1])
    ra, rb = list_samples(a, "cnndetection"), list_samples(b, "cnndetection")
    pd.testing.assert_frame_equal(ra.samples, rb.samples)
    pd.testing.assert_frame_equal(ra.samples, list_samples(a, "cnndetection").samples)
    assert_sorted(ra.samples)
    assert list(ra.samples["generator"].unique()) == ["g0", "g1"]


def test_balanced_sampling_counts_seed_and_determinism(tmp_path):
    files = imgs("big/0_real", 40) + imgs("big/1_fake", 25) + imgs("small/0_real", 3) + imgs("small/1_fake", 12)
    make_tree(tmp_path, files)
    full = list_samples(tmp_path, "cnndetection")
    res = list_samples(tmp_path, "cnndetection", max_per_class=10, seed=1)
    assert counts(res) == {("big", 0): 10, ("big", 1): 10, ("small", 0): 3, ("small", 1): 10}
    assert_sorted(res.samples)  # order preserved
    assert set(res.samples["path"]) <= set(full.samples["path"])
    again = list_samples(tmp_path, "cnndetection", max_per_class=10, seed=1)
    pd.testing.assert_frame_equal(res.samples, again.samples)
    other = list_samples(tmp_path, "cnndetection", max_per_class=10, seed=2)
    assert set(other.samples["path"]) != set(res.samples["path"])
    assert len(res.ignored) == 0  # left out by choice: not "ignored"
    # A generator's choice does not depend on which other generators are in the tree.
    alone = list_samples(tmp_path / "small", "cnndetection", max_per_class=10, seed=1)
    in_tree = res.samples.loc[res.samples["generator"] == "small", "path"]
    assert set("small/" + alone.samples["path"]) == set(in_tree)
    with pytest.raises(LayoutError, match="max_per_class"):
        list_samples(tmp_path, "cnndetection", max_per_class=0)
