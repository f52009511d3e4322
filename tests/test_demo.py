"""The offline demo (causalclip.demo): the tiny preset end to end through the CLI with the network disabled,
determinism, scene-disjoint splits, the build cache, the spread over training seeds, the leave-one-out protocol, and
errors for bad input."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import socket
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from sklearn.metrics import average_precision_score

pytest.importorskip("skimage")  # the built-in photos ship with scikit-image (extra "demo")

from causalclip.cli.demo import PROTOCOL_NAMES  # noqa: E402
from causalclip.cli.main import main  # noqa: E402
from causalclip.demo.build import BUILD_SIZES, BuildConfig, build_benchmark, to_grey  # noqa: E402  # noqa: E402
from causalclip.demo.generators import FamilyConfig  # noqa: E402
from causalclip.demo.photos import BUILTIN_PHOTOS, DemoError, builtin_photos, load_photo, split_scenes, tile_grid
from causalclip.demo.run import PROTOCOLS, DemoConfig, run_demo  # noqa: E402
from causalclip.detector.folder import read_detector  # noqa: E402
from causalclip.features.featureset import open_feature_set  # noqa: E402

TINY = BUILD_SIZES["tiny"]
# Heads on features, then every network on pixels (the default set: every method that needs no downloaded weights)
METHODS = ("causalclip", "univfd", "vib", "npr", "cnnspot", "fredect", "fusing", "lgrad")
LGRAD_LABEL = "LGrad (scratch; transform: tconv-gan's discriminator)"
FAMILIES = TINY.families
TRAIN_ON = ("tconv-gan", "vae")
FAST_TRAIN = tuple({"train.epochs": 3, "train.batch_size": 16, "train.lr": 1e-3, "train.num_threads": 1}.items())


def _no_network(*args, **kwargs):
    raise AssertionError("the demo tried to use the network")


def _run_cli(argv: list[str], printed: Path) -> None:
    """``causalclip <argv>`` with every way of opening a connection disabled; what it prints goes to ``printed``."""
    buf = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(buf):
        mp.setattr(socket.socket, "connect", _no_network)
        mp.setattr(socket, "create_connection", _no_network)
        mp.setattr(socket, "getaddrinfo", _no_network)
        code = main(argv)
    printed.write_text(buf.getvalue())
    assert code == 0


@pytest.fixture(scope="module")
def tiny_demo(tmp_path_factory):
    """`causalclip demo --preset tiny` through the CLI (one seed); printed output in printed.txt."""
    root = tmp_path_factory.mktemp("demo")
    argv = ["demo", "--preset", "tiny", "--out", str(root / "out"), "--cache", str(root / "cache"), "-q"]
    _run_cli([*argv, "--train-families", *TRAIN_ON], root / "printed.txt")
    return root


SEEDS = (0, 1, 2)


@pytest.fixture(scope="module")
def seeds_demo(tiny_demo):
    """The tiny demo with three training seeds, on the benchmark cached by ``tiny_demo``."""
    out = tiny_demo / "seeds"
    argv = ["demo", "--preset", "tiny", "--out", str(out), "--cache", str(tiny_demo / "cache"), "-q", "--no-plots"]
    _run_cli([*argv, "--train-families", *TRAIN_ON, "--seeds", *map(str, SEEDS)], tiny_demo / "printed-seeds.txt")
    return out


def test_demo_runs_the_protocol_end_to_end(tiny_demo, capsys):
    out = tiny_demo / "out"
    results = pd.read_csv(out / "results.csv")
    heads = set(METHODS)
    assert set(results["head"]) == heads and set(results["train_family"]) == set(TRAIN_ON)
    assert set(results["test_family"]) == set(FAMILIES)
    assert len(results) == len(TRAIN_ON) * len(heads) * len(FAMILIES)
    assert (results["seen"] == (results["train_family"] == results["test_family"])).all()
    assert (results["n_real"] == results["n_fake"]).all() and (results["n_real"] > 0).all()
    # every AP recomputed from the saved predictions with sklearn
    for (fam, head), group in results.groupby(["train_family", "head"]):
        preds = pd.read_csv(out / "eval" / fam / f"{head}-seed0" / "predictions.csv")
        for _, row in group.iterrows():
            p = preds[preds["generator"] == row["test_family"]]
            assert row["ap"] == pytest.approx(average_precision_score(p["label"], p["score"]), abs=1e-6)
    md = (out / "results.md").read_text()
    assert "| CausalCLIP |" in md and "| VIB-Net |" in md and "tconv-gan (train)" in md
    assert "| NPR |" in md and "| CNNSpot (scratch) |" in md and "narrow versions of the authors' networks" in md
    # the networks are tested on the very tiles whose features the heads are tested on
    for fam in TRAIN_ON:
        heads_pred = pd.read_csv(out / "eval" / fam / "univfd-seed0" / "predictions.csv")
        net_pred = pd.read_csv(out / "eval" / fam / "npr-seed0" / "predictions.csv")
        assert sorted(heads_pred["path"]) == sorted(net_pred["path"])
        run = json.loads((out / "runs" / fam / "cnnspot-seed0" / "run.json").read_text())
        assert run["init"]["method"] == "scratch" and run["recipe"]["train_crop"] == TINY.tile
    info = json.loads((out / "demo.json").read_text())
    assert info["backbone"] == "spectrum:size=32+npr:size=32" and info["seconds"]["total"] > 0
    assert info["backbone_record"]["name"] == "concat"
    if _has_matplotlib():
        for name in ("unseen_ap.png", "cross_family_ap.png"):
            with Image.open(out / "plots" / name) as im:
                assert im.size[0] > 100
    det = read_detector(out / "detector")
    assert det.feature_dim == 22 + 90  # spectrum rings of a 32 px tile + NPR statistics
    assert det.backbone["name"] == "concat" and det.preprocessing["size"] == 32
    assert det.provenance["train_family"] == "tconv-gan"


def test_printed_ranking_says_which_detector_transfers_in_the_summarys_order(tiny_demo):
    """The line that answers "which detector transfers" lists every method once, in decreasing order of the
    summary table's Avg column (results.csv: mean over training families of the mean AP on unseen families)."""
    out = tiny_demo / "out"
    results = pd.read_csv(out / "results.csv")
    unseen = results[~results["seen"]].groupby(["head", "train_family"])["ap"].mean().groupby("head").mean()
    printed = (tiny_demo / "printed.txt").read_text()
    line = next(x for x in printed.splitlines() if x.startswith("Which detector transfers:"))
    assert line in (out / "results.md").read_text()
    assert "LGrad's transformation model has seen tconv-gan's fakes" in line
    ranking = line.split(": ", 2)[-1].split(". LGrad's")[0]
    pairs = [item.rsplit(" ", 1) for item in ranking.rstrip(".").split(", ")]
    labels = DemoConfig.preset("tiny").method_labels()
    assert sorted(name for name, _ in pairs) == sorted(labels[m] for m in unseen.index)
    values = [float(v) for _, v in pairs]
    assert values == sorted(values, reverse=True)
    by_label = {labels[m]: 100 * v for m, v in unseen.items()}
    for name, value in pairs:
        assert float(value) == pytest.approx(by_label[name], abs=0.006)


def test_lgrad_and_fusing_run_and_every_table_names_lgrads_transform(tiny_demo):
    """LGrad's transformation model is tconv-gan's trained discriminator (the file the benchmark keeps, loaded into
    the network unchanged); every table's LGrad row says so, and the notes say its tconv-gan column is not unseen."""
    from safetensors.torch import load_file

    out = tiny_demo / "out"
    results = pd.read_csv(out / "results.csv")
    bench = build_benchmark(TINY, tiny_demo / "cache")
    disc_file = bench.discriminator("tconv-gan")
    assert disc_file.parent == bench.family_dirs["tconv-gan"]
    disc = load_file(str(disc_file))
    for fam in TRAIN_ON:
        for net in ("lgrad", "fusing"):
            rows = results[(results["head"] == net) & (results["train_family"] == fam)]
            assert sorted(rows["test_family"]) == sorted(FAMILIES) and rows["ap"].between(0, 1).all()
        run = json.loads((out / "runs" / fam / "lgrad-seed0" / "run.json").read_text())
        cfg = run["lgrad"]
        assert (cfg["transform_arch"], cfg["resolution"], cfg["input"]) == ("dcgan", TINY.tile, "image")
        assert Path(cfg["transform"]) == disc_file and cfg["dcgan_width"] == TINY.family_config("tconv-gan").width
        saved = load_file(str(out / "runs" / fam / "lgrad-seed0" / "model.safetensors"))
        inside = {k.removeprefix("discriminator."): v for k, v in saved.items() if k.startswith("discriminator.")}
        assert inside.keys() == disc.keys() and all(torch.equal(inside[k], disc[k]) for k in disc)
        fusing = json.loads((out / "runs" / fam / "fusing-seed0" / "run.json").read_text())["fusing"]
        assert fusing["patches_per_window"] == [1, 1] and fusing["local_size"] == TINY.tile // 2
    md = (out / "results.md").read_text()
    printed = (tiny_demo / "printed.txt").read_text()
    for text in (md, printed):
        tables = [block for block in text.split("\n\n") if block.startswith("| Method |")]
        assert len(tables) >= 1 + len(TRAIN_ON)  # the summary and at least one table per training family
        assert all(f"| {LGRAD_LABEL} |" in t and "| Fusing (scratch) |" in t for t in tables)
    assert md.count("on the tconv-gan test column LGrad is not unseen") == 1 + 2 * len(TRAIN_ON)
    assert "Not run: CLIPping's prompt tuning" in md
    info = json.loads((out / "demo.json").read_text())
    assert info["method_labels"]["lgrad"] == LGRAD_LABEL
    assert info["lgrad_transform"] == {"family": "tconv-gan", "file": str(disc_file)}
    # the GAN families keep their discriminator, the others have none
    assert {f for f in FAMILIES if (bench.family_dirs[f] / "discriminator.safetensors").is_file()} == {
        "tconv-gan",
        "resize-gan",
    }
    with pytest.raises(DemoError, match="no trained discriminator"):
        bench.discriminator("vae")


def test_lgrad_transform_must_be_a_gan_family_of_the_benchmark(tmp_path):
    for fam, families in (("vae", FAMILIES), ("tconv-gan", ("vae", "diffusion"))):
        cfg = DemoConfig.preset("tiny", build=dataclasses.replace(TINY, families=families), lgrad_transform_family=fam)
        with pytest.raises(DemoError, match=f"GAN family '{fam}'"):
            run_demo(tmp_path / "o", cfg, cache=tmp_path / "cache")
    assert not (tmp_path / "cache").exists()  # refused before building anything


def _has_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def test_no_scene_is_in_two_splits(tiny_demo):
    bench = next((tiny_demo / "cache").glob("real-*"))
    tiles = pd.read_csv(bench / "tiles.csv")
    assert tiles.groupby("scene")["split"].nunique().max() == 1
    assert set(tiles["split"]) == {"train", "val", "test"}
    for path, split in zip(tiles["path"], tiles["split"], strict=True):
        assert path.startswith(f"real/{split}/") and (bench / path).is_file()
    # fakes pair with the reals of their own split (the vae re-synthesises exactly those tiles)
    for folder in bench.glob("fakes-*"):
        fakes = pd.read_csv(folder / "fakes.csv")
        src = fakes.merge(tiles, left_on="source", right_on="tile", suffixes=("", "_real"))
        assert len(src) == len(fakes) and (src["split"] == src["split_real"]).all()
        assert (fakes.groupby("split").size() == tiles.groupby("split").size()).all()  # balanced per split


def test_full_preset_split_keeps_scenes_together():
    """The full preset's split, computed from all the built-in photos without building anything."""
    cfg = BUILD_SIZES["full"]
    rows = []
    for photo in builtin_photos():
        rgb = load_photo(photo)
        corners = tile_grid(
            rgb, size=cfg.tile, max_tiles=cfg.max_tiles_per_photo, min_std=cfg.min_std, rng=np.random.default_rng(0)
        )
        rows.append((photo.scene, len(corners), bool((rgb[..., 0] == rgb[..., 2]).all())))
    per_scene = (
        pd.DataFrame(rows, columns=["scene", "n_tiles", "grey"])
        .groupby("scene")
        .agg(n_tiles=("n_tiles", "sum"), grey=("grey", "all"))
    )
    split = split_scenes(per_scene.reset_index(), fractions=cfg.fractions, seed=0)
    assert set(split) == set(per_scene.index)  # every scene, each in exactly one split (a dict)
    assert len({s for *_, s in BUILTIN_PHOTOS}) == len(per_scene) == 19  # the motorcycle pair is one scene
    for grey in (True, False):  # colour and grey scenes in every split
        assert {split[s] for s in per_scene.index[per_scene["grey"] == grey]} == {"train", "val", "test"}
    counts = per_scene.groupby(pd.Series(split))["n_tiles"].sum() / per_scene["n_tiles"].sum()
    assert counts["train"] == pytest.approx(0.6, abs=0.1)


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.suffix in (".jpg", ".csv", ".safetensors")
    }


def test_same_seed_same_tiles_and_metrics(tmp_path, tiny_demo):
    """The CLI run of the fixture again, through the API, into a fresh cache: the same bytes, the same numbers."""
    cfg = DemoConfig.preset("tiny", train_families=TRAIN_ON)
    again = run_demo(tmp_path / "out", cfg, cache=tmp_path / "cache")
    first = next((tiny_demo / "cache").glob("real-*"))
    assert again.benchmark.root.name == first.name  # the same cache key
    a, b = _digest(first), _digest(again.benchmark.root)
    assert len(a) > 100 and a == b  # every tile, generator and table byte-identical
    cols = ["train_family", "head", "test_family", "ap", "acc", "real_acc", "fake_acc"]
    before = pd.read_csv(tiny_demo / "out" / "results.csv")[cols]
    after = pd.read_csv(tmp_path / "out" / "results.csv")[cols]
    pd.testing.assert_frame_equal(before, after)
    other = build_benchmark(dataclasses.replace(TINY, seed=1, families=("tconv-gan", "vae")), tmp_path / "cache2")
    assert _digest(other.root)["tiles.csv"] != a["tiles.csv"]  # another seed: other tiles


def test_cache_is_reused_and_rebuilt_only_where_parameters_changed(tmp_path, tiny_demo):
    cache = tiny_demo / "cache"
    again = build_benchmark(TINY, cache)
    assert again.seconds == {}  # nothing rebuilt
    budgets = dict(TINY.family_configs)
    budgets["vae"] = FamilyConfig(steps=3, batch_size=8, width=4)
    changed = build_benchmark(dataclasses.replace(TINY, family_configs=tuple(budgets.items())), cache)
    assert set(changed.seconds) == {"vae"} and changed.root == again.root
    assert changed.family_dirs["vae"] != again.family_dirs["vae"]
    assert changed.family_dirs["tconv-gan"] == again.family_dirs["tconv-gan"]


def test_fakes_of_grey_scenes_are_grey_like_their_reals(tiny_demo):
    bench = next((tiny_demo / "cache").glob("real-*"))
    tiles = pd.read_csv(bench / "tiles.csv")
    assert tiles["grey"].any() and not tiles["grey"].all()
    for folder in bench.glob("fakes-*"):
        fakes = pd.read_csv(folder / "fakes.csv")
        for path, grey in zip(fakes["path"][:12], fakes["grey"][:12], strict=True):
            rgb = np.asarray(Image.open(folder / path).convert("RGB")).astype(int)
            assert rgb.shape == (TINY.tile, TINY.tile, 3)
            if grey:  # grey up to JPEG rounding, like the grey reals
                assert np.abs(rgb[..., 0] - rgb[..., 2]).max() <= 2
    rgb = np.random.default_rng(0).integers(0, 256, (4, 4, 3), dtype=np.uint8)
    g = to_grey(rgb)
    assert (g[..., 0] == g[..., 1]).all() and (g[..., 1] == g[..., 2]).all()


def test_own_photos_and_errors(tmp_path, capsys):
    photos = tmp_path / "photos"
    rng = np.random.default_rng(0)
    for scene in ("a", "b"):
        (photos / scene).mkdir(parents=True)
        for k in range(2):
            Image.fromarray(rng.integers(0, 256, (80, 80, 3), dtype=np.uint8)).save(photos / scene / f"{k}.png")
    cfg = BuildConfig(
        builtin=False, photo_dirs=(str(photos),), tile=32, max_tiles_per_photo=2, family_configs=TINY.family_configs
    )
    with pytest.raises(DemoError, match="at least 3 scenes"):
        build_benchmark(cfg, tmp_path / "cache")
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(photos / "single.png")
    bench = build_benchmark(cfg, tmp_path / "cache")
    assert set(bench.tiles["scene"]) == {"user/a", "user/b", "user/single.png"}
    assert bench.tiles.groupby("scene")["split"].nunique().max() == 1

    code = main(
        [
            "demo",
            "--preset",
            "tiny",
            "--out",
            str(tmp_path / "o"),
            "--photos",
            str(tmp_path / "missing"),
            "--cache",
            str(tmp_path / "cache"),
        ]
    )
    assert code == 2 and "missing: photo folder not found" in capsys.readouterr().err
    with pytest.raises(DemoError, match="unknown generator family"):
        build_benchmark(dataclasses.replace(TINY, families=("tconv-gan", "stylegan")), tmp_path / "cache")


def test_an_output_folder_holds_one_demo(tiny_demo):
    other = DemoConfig(build=TINY, backbone="spectrum:size=32", train_overrides=FAST_TRAIN)
    with pytest.raises(DemoError, match="another benchmark or backbone"):
        run_demo(tiny_demo / "out", other, cache=tiny_demo / "cache")


def _spread_by_hand(results: pd.DataFrame) -> dict[tuple[str, str], dict[str, float]]:
    """(head, training family or "all") -> mean and ddof=1 std over seeds of the per-seed mean unseen AP/ACC,
    computed from results.csv without the demo's code: per seed, the mean over the unseen test families of each
    training family; "all" then averages those over the training families before taking the spread."""
    unseen = results[~results["seen"].astype(bool)]
    per_fam = unseen.groupby(["head", "train_family", "seed"])[["ap", "acc"]].mean()
    per_all = per_fam.groupby(["head", "seed"]).mean()
    out = {}
    for (head, fam), grp in per_fam.groupby(["head", "train_family"]):
        out[(head, fam)] = {f"{m}_{s}": getattr(grp[m], s)() for m in ("ap", "acc") for s in ("mean", "std")}
    for head, grp in per_all.groupby("head"):
        out[(head, "all")] = {
            f"{m}_{s}": float(np.mean(grp[m]) if s == "mean" else np.std(grp[m].to_numpy(), ddof=1))
            for m in ("ap", "acc")
            for s in ("mean", "std")
        }
    return out


def test_spread_over_seeds_is_the_std_of_per_seed_means(seeds_demo, tiny_demo):
    results = pd.read_csv(seeds_demo / "results.csv")
    assert sorted(results["seed"].unique()) == list(SEEDS)
    spread = pd.read_csv(seeds_demo / "seeds.csv")
    heads = list(METHODS)
    assert len(spread) == len(heads) * 2 * (len(TRAIN_ON) + 1) and (spread["n_seeds"] == len(SEEDS)).all()
    unseen = spread[spread["test"] == "unseen"].set_index(["head", "train_family"])
    expected = _spread_by_hand(results)
    assert set(unseen.index) == set(expected)
    for key, values in expected.items():
        for col, value in values.items():
            assert unseen.at[key, col] == pytest.approx(value, abs=2e-6), (key, col)
    assert (unseen["ap_std"] > 0).any()  # the seeds do train different heads: a spread of 0 would test nothing
    # in distribution: per seed the mean over training families of the AP on the own family; lowest single AP
    seen_rows = results[results["seen"].astype(bool)]
    per_seed = seen_rows.groupby(["head", "seed"])["ap"].mean().groupby("head")
    seen = spread[(spread["test"] == "seen") & (spread["train_family"] == "all")].set_index("head")
    for head in heads:
        assert seen.at[head, "ap_mean"] == pytest.approx(per_seed.mean()[head], abs=2e-6)
        assert seen.at[head, "ap_std"] == pytest.approx(per_seed.std(ddof=1)[head], abs=2e-6)
        assert seen.at[head, "ap_min"] == pytest.approx(seen_rows[seen_rows["head"] == head]["ap"].min(), abs=2e-6)
    # printed, in results.md and in demo.json: mean ± std in percent, 2 decimals
    printed = (tiny_demo / "printed-seeds.txt").read_text()
    md = (seeds_demo / "results.md").read_text()
    for head, label in (("causalclip", "CausalCLIP"), ("univfd", "UnivFD"), ("vib", "VIB-Net"), ("lgrad", LGRAD_LABEL)):
        v = expected[(head, "all")]
        ap, acc = (
            f"{100 * v['ap_mean']:.2f} ± {100 * v['ap_std']:.2f}",
            f"{100 * v['acc_mean']:.2f} ± {100 * v['acc_std']:.2f}",
        )
        assert f"| {label} | {ap} | {acc} |" in printed
        assert f"| {label} | {ap} | {acc} |" in md
    info = json.loads((seeds_demo / "demo.json").read_text())
    assert info["seeds"] == list(SEEDS) and len(info["seed_spread"]) == len(spread)
    assert info["code_revision"]


def test_one_seed_has_no_spread(tiny_demo):
    out = tiny_demo / "out"
    assert not (out / "seeds.csv").exists()
    assert "±" not in (tiny_demo / "printed.txt").read_text() and "±" not in (out / "results.md").read_text()
    assert "done in" in (tiny_demo / "printed.txt").read_text()
    assert json.loads((out / "demo.json").read_text())["seed_spread"] is None


def _one_family_summary_by_hand(results: pd.DataFrame) -> dict[tuple[str, str], float]:
    """(head, training family) -> the mean over seeds and over the test families other than the training family of
    the AP, in %, from results.csv without the ``seen`` column (the one-family definition before leave-one-out)."""
    other = results[results["train_family"] != results["test_family"]]
    per = other.groupby(["head", "train_family", "test_family"])["ap"].mean().groupby(["head", "train_family"])
    return {key: 100 * value for key, value in per.mean().items()}


def test_one_family_protocol_is_unchanged(tiny_demo):
    """The default protocol: runs trained on features/<family>/train (that family's fakes and the reals), ``seen``
    only on the own family, the summary the mean AP over the other families, and results.md says which protocol."""
    out = tiny_demo / "out"
    results = pd.read_csv(out / "results.csv")
    info = json.loads((out / "demo.json").read_text())
    assert info["protocol"] == "one-family" and info["left_out_families"] is None
    assert info["train_families"] == list(TRAIN_ON)
    summary = info["summary_unseen_ap"]
    for (head, fam), value in _one_family_summary_by_hand(results).items():
        assert summary[info["method_labels"][head]][fam] == pytest.approx(value, abs=0.006)
    bench = build_benchmark(TINY, tiny_demo / "cache")
    for fam in TRAIN_ON:
        data = json.loads((out / "runs" / fam / "causalclip-seed0" / "run.json").read_text())["data"]
        assert Path(data["train"]["path"]) == out / "features" / fam / "train"
        train = open_feature_set(data["train"]["path"])
        expected = bench.samples("train")
        expected = expected[expected["generator"].isin(["real", fam])]
        assert sorted(train.paths) == sorted(expected["path"]) and set(train.generators) == {fam}
        assert not (out / "features" / f"all-but-{fam}").exists()
    assert "Protocol `one-family`" in (out / "results.md").read_text()
    assert "Protocol `one-family`" in (tiny_demo / "printed.txt").read_text()
    assert "# Offline demo: train on one generator family, test on all" in (out / "results.md").read_text()


LEAVE_OUT = ("tconv-gan", "vae")
LOO_SEEDS = (0, 1)


@pytest.fixture(scope="module")
def loo_demo(tiny_demo):
    """The tiny demo with --protocol leave-one-out, leaving out each of LEAVE_OUT in turn, two training seeds."""
    out = tiny_demo / "loo"
    argv = ["demo", "--preset", "tiny", "--out", str(out), "--cache", str(tiny_demo / "cache"), "-q", "--no-plots"]
    argv += ["--protocol", "leave-one-out", "--train-families", *LEAVE_OUT, "--seeds", *map(str, LOO_SEEDS)]
    _run_cli(argv, tiny_demo / "printed-loo.txt")
    return out


def test_leave_one_out_trains_on_exactly_the_other_families(loo_demo, tiny_demo):
    bench = build_benchmark(TINY, tiny_demo / "cache")
    everything = {split: open_feature_set(loo_demo / "features" / "all" / split) for split in ("train", "val")}
    for fam in LEAVE_OUT:
        others = [f for f in FAMILIES if f != fam]
        for head in ("causalclip", "univfd", "vib"):
            for seed in LOO_SEEDS:
                data = json.loads(
                    (loo_demo / "runs" / f"all-but-{fam}" / f"{head}-seed{seed}" / "run.json").read_text()
                )
                for split in ("train", "val"):
                    assert Path(data["data"][split]["path"]) == loo_demo / "features" / f"all-but-{fam}" / split
        for split in ("train", "val"):
            fs = open_feature_set(loo_demo / "features" / f"all-but-{fam}" / split)
            expected = bench.samples(split)
            expected = expected[expected["generator"] != fam]  # every other family's fakes and the reals, once
            got = fs.samples[["path", "label", "generator"]].sort_values("path").reset_index(drop=True)
            want = expected.sort_values("path").reset_index(drop=True)
            pd.testing.assert_frame_equal(got, want, check_dtype=False)
            counts = fs.samples[fs.samples["label"] == 1]["generator"].value_counts().to_dict()
            assert counts == bench.samples(split).query("label == 1")["generator"].value_counts()[others].to_dict()
            assert set(counts) == set(others) and len(fs) == len(expected)
            # the features are those extracted for the same tiles
            row = {path: i for i, path in enumerate(everything[split].paths)}
            idx = [row[path] for path in fs.paths]
            np.testing.assert_array_equal(fs.take(np.arange(len(fs))), everything[split].take(idx))


def test_leave_one_out_tests_on_all_and_sees_all_but_the_one_left_out(loo_demo, tiny_demo):
    results = pd.read_csv(loo_demo / "results.csv")
    heads = set(METHODS)
    assert set(results["train_family"]) == {f"all-but-{fam}" for fam in LEAVE_OUT}
    assert len(results) == len(LEAVE_OUT) * len(heads) * len(LOO_SEEDS) * len(FAMILIES)
    for (_train, _head, _seed), group in results.groupby(["train_family", "head", "seed"]):
        assert sorted(group["test_family"]) == sorted(FAMILIES)
    left_out = results["train_family"].str.removeprefix("all-but-")
    assert (results["seen"].astype(bool) == (results["test_family"] != left_out)).all()
    assert (results["n_real"] == results["n_fake"]).all() and (results["n_real"] > 0).all()
    info = json.loads((loo_demo / "demo.json").read_text())
    assert info["protocol"] == "leave-one-out" and info["left_out_families"] == list(LEAVE_OUT)
    assert info["train_families"] == [f"all-but-{fam}" for fam in LEAVE_OUT]
    assert read_detector(loo_demo / "detector").provenance["train_family"] == f"all-but-{LEAVE_OUT[0]}"


def test_leave_one_out_summary_is_the_ap_on_the_family_left_out(loo_demo, tiny_demo):
    results = pd.read_csv(loo_demo / "results.csv")
    summary = json.loads((loo_demo / "demo.json").read_text())["summary_unseen_ap"]
    spread = pd.read_csv(loo_demo / "seeds.csv")
    unseen = spread[spread["test"] == "unseen"].set_index(["head", "train_family"])
    printed = (tiny_demo / "printed-loo.txt").read_text()
    md = (loo_demo / "results.md").read_text()
    labels = json.loads((loo_demo / "demo.json").read_text())["method_labels"]
    for head in METHODS:  # the demo's heads and networks
        label = labels[head]
        per_fam = []
        for fam in LEAVE_OUT:
            rows = results[
                (results["head"] == head)
                & (results["train_family"] == f"all-but-{fam}")
                & (results["test_family"] == fam)
            ]
            assert len(rows) == len(LOO_SEEDS)
            assert summary[label][f"all-but-{fam}"] == pytest.approx(100 * rows["ap"].mean(), abs=0.006)
            assert unseen.at[(head, f"all-but-{fam}"), "ap_mean"] == pytest.approx(rows["ap"].mean(), abs=2e-6)
            assert unseen.at[(head, f"all-but-{fam}"), "ap_std"] == pytest.approx(rows["ap"].std(ddof=1), abs=2e-6)
            per_fam.append(rows.set_index("seed")["ap"])
        per_seed = pd.concat(per_fam, axis=1).mean(axis=1)
        assert summary[label]["Avg"] == pytest.approx(100 * per_seed.mean(), abs=0.006)
        assert f"| {label} | {100 * per_seed.mean():.2f} ± {100 * per_seed.std(ddof=1):.2f} |" in printed
    assert (unseen["ap_std"] > 0).any()  # the seeds train different heads
    for text in (printed, md):
        assert "Protocol `leave-one-out`" in text and "AP (%) on the family left out of training" in text
        assert "left-out AP" in text and "unseen AP" not in text and "Unseen" not in text
    assert "# Offline demo, leave-one-out" in md and "Trained on all families but **vae**" in md
    assert "| Method | tconv-gan (train) | resize-gan (train) | vae | diffusion (train) | Left out | Avg |" in md


def test_protocol_names_and_errors(tmp_path):
    assert PROTOCOL_NAMES == PROTOCOLS
    with pytest.raises(DemoError, match="unknown protocol"):
        run_demo(tmp_path / "o", DemoConfig.preset("tiny", protocol="leave-two-out"), cache=tmp_path / "cache")
    assert not (tmp_path / "cache").exists()  # refused before building anything


@pytest.mark.parametrize("head", ["causalclip", "univfd", "vib", "clipping-lp"])
def test_every_demo_head_trains_under_the_demos_protocol_with_its_recipes_optimiser(head):
    """The demo's training overrides put every head on the same protocol (plateau schedule, early stopping on
    validation BCE, the demo's lr and batch), so clipping-lp's fixed constant-rate recipe does not run 60 epochs
    without stopping; the optimiser stays the recipe's."""
    from causalclip.demo.run import DEFAULT_TRAIN
    from causalclip.heads.registry import HEADS
    from causalclip.training.config import TrainConfig, resolve_run_config

    train = resolve_run_config(head, overrides=dict(DEFAULT_TRAIN)).train
    assert (train.lr_schedule, train.warmup_epochs, train.lr, train.batch_size, train.patience) == (
        "plateau", 0, 1e-3, 64, 5)  # fmt: skip
    recipe_optimizer = dict(HEADS[head].train_recipe).get("optimizer", TrainConfig().optimizer)
    assert train.optimizer == recipe_optimizer
