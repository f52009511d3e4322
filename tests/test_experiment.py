"""`causalclip experiment`, `ablation` and `robustness` end to end on a fake dataset tree with a tiny CLIP."""

from __future__ import annotations

import contextlib
import io
import json
import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image

pytest.importorskip("transformers")
import torch  # noqa: E402
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection  # noqa: E402

import causalclip.paper.experiment as experiment  # noqa: E402
from causalclip import open_feature_set  # noqa: E402
from causalclip.cli.main import main  # noqa: E402
from causalclip.paper.tables import GP_TEST_SETS, TEST_SETS, column_order, paper_table  # noqa: E402
from conftest import TINY_VISION  # noqa: E402
from test_presets import build_fake_tree  # noqa: E402  (tests/ is on sys.path under pytest)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("exp")
    roots = build_fake_tree(root / "data", n_test=4, n_train=12)
    # inputs that cannot be used: a corrupt image in a test folder, a stray text file in a training folder
    (roots["genimage"] / "ADM" / "imagenet_ai_0508_adm" / "val" / "ai" / "broken.png").write_bytes(b"not a png")
    (roots["genimage"] / "stable_diffusion_v_1_4" / "imagenet_ai_0419_sdv4" / "train" / "notes.txt").write_text("x")
    torch.manual_seed(0)
    CLIPVisionModelWithProjection(CLIPVisionConfig(**TINY_VISION)).save_pretrained(root / "clip")
    return root, roots


def _args(root, roots, out, *extra, preset="sd14"):
    return [
        "--preset", preset, "--genimage", str(roots["genimage"]), "--cnndetection", str(roots["cnndetection"]),
        "--out", str(out), "--backbone", str(root / "clip"), "--precision", "fp32", "--workers", "0", "--processes", "1",
        "--val-fraction", "0.3", "--epochs", "2", "-q", *extra,
    ]  # fmt: skip


class _CountLoads:
    def __init__(self, monkeypatch):
        self.n = 0
        real = experiment._load_backbone

        def load(options):
            self.n += 1
            return real(options)

        monkeypatch.setattr(experiment, "_load_backbone", load)


@pytest.fixture(scope="module")
def first_run(setup):
    """The experiment command once (two heads, two seeds); its stdout and the backbone-load count."""
    root, roots = setup
    out = root / "out"
    mp = pytest.MonkeyPatch()  # the monkeypatch fixture is function-scoped
    try:
        loads = _CountLoads(mp)
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            rc = main(["experiment", *_args(root, roots, out, "--heads", "causalclip", "univfd", "--seeds", "0", "1")])
    finally:
        mp.undo()
    assert rc == 0
    return out, buf.getvalue(), loads.n


def test_tables_equal_the_evaluations_metrics(first_run):
    out, stdout, loads = first_run
    assert loads == 1
    for metric in ("ap", "acc"):
        written = pd.read_csv(out / f"results_{metric}.csv", index_col="method")
        assert list(written.columns) == [*column_order("sd14"), "Avg"]
        for method, head in (("CausalCLIP (ours)", "causalclip"), ("UnivFD (ours)", "univfd")):
            per_seed = [pd.read_csv(out / "runs" / f"{head}-seed{s}" / "eval" / "metrics.csv") for s in (0, 1)]
            for m in per_seed:
                assert set(m["generator"]) == {*TEST_SETS, "mean"}
            expected = {t: np.mean([m.set_index("generator").at[t, metric] for m in per_seed]) for t in TEST_SETS}
            for t, v in expected.items():
                assert written.at[method, t] == pytest.approx(100 * v, abs=0.006)
            assert written.at[method, "Avg"] == pytest.approx(100 * np.mean(list(expected.values())), abs=0.006)
            # the printed table is the written Markdown, row for row
            row = (out / f"results_{metric}.md").read_text().splitlines()
            line = next(r for r in row if r.startswith(f"| {method} |"))
            assert line in stdout
            cells = [c.strip().strip("*").removeprefix("<u>").removesuffix("</u>") for c in line.split("|")[2:-1]]
            assert [float(c) for c in cells] == [round(written.at[method, c], 2) for c in written.columns]
        # the paper's rows for the heads we ran come first, as printed in the paper
        paper = paper_table(1 if metric == "ap" else 2)
        assert written.at["CausalCLIP (paper)", "Avg"] == paper.at["CausalCLIP", "Avg"]
        assert list(written.index) == ["UnivFD (paper)", "CausalCLIP (paper)", "CausalCLIP (ours)", "UnivFD (ours)"]
    for name in ("results_ap.md", "results_ap.tex", "results_acc.tex", "metrics_long.csv", "experiment.json"):
        assert (out / name).is_file()
    long = pd.read_csv(out / "metrics_long.csv")
    assert len(long) == 2 * 2 * 15 and set(long["seed"]) == {0, 1}


def test_unusable_inputs_are_reported(first_run):
    out, stdout, _ = first_run
    errors = pd.read_csv(out / "input_errors.csv")
    assert any(errors["path"].str.endswith("broken.png")) and any(errors["path"].str.endswith("notes.txt"))
    assert set(errors.loc[errors["path"].str.endswith("broken.png"), "set"]) == {"ADM test"}
    assert "inputs not used: 2" in stdout and "ADM test (clean): 1" in stdout
    assert "not part of preset sd14" in stdout and "BigGAN" in stdout  # GenImage's BigGAN folder is not used
    # the broken image is not among the ADM test features; every other listed image is
    ev = pd.read_csv(out / "runs" / "causalclip-seed0" / "eval" / "predictions.csv")
    assert not ev["path"].str.endswith("broken.png").any()


def test_second_run_reuses_features_and_runs(setup, first_run, capsys, monkeypatch):
    root, roots = setup
    out = first_run[0]
    feats = sorted((out / "features").rglob("features-*.npy"))
    assert len(feats) == 17  # train part, validation part, 15 test sets
    before = {p: p.stat().st_mtime_ns for p in feats}
    runs_before = {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*/model.safetensors")}
    loads = _CountLoads(monkeypatch)
    rc = main(["experiment", *_args(root, roots, out, "--heads", "causalclip", "univfd", "--seeds", "0", "1")])
    assert rc == 0
    assert loads.n == 0  # nothing to extract: the backbone is not even loaded
    assert {p: p.stat().st_mtime_ns for p in feats} == before
    assert {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*/model.safetensors")} == runs_before
    text = capsys.readouterr()
    assert "17 reused from the cache, 0 image(s) extracted now" in text.out
    assert text.err.count(": reused ->") == 4
    # a changed configuration is refused rather than silently mixed with the old runs
    rc = main(["experiment", *_args(root, roots, out, "--heads", "univfd", "--seeds", "0", "--set", "lr=0.001")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "different configuration" in err and "train.lr: 0.0001 -> 0.001" in err and "--retrain" in err
    assert len(json.loads((out / "experiment.json").read_text())["runs"]) == 4  # the record is left as it was


def test_changed_dataset_extracts_only_what_changed(setup, first_run, tmp_path, capsys, monkeypatch):
    root, roots = setup
    data = tmp_path / "data"
    shutil.copytree(roots["genimage"].parent, data)
    out = tmp_path / "out"
    shutil.copytree(first_run[0] / "features", out / "features")
    # a new fake image in one test folder: that set is completed (extract redoes its last, now longer, shard);
    # the other 16 sets are reused untouched
    new = data / "CNNDetection" / "test" / "san" / "1_fake" / "new.png"
    Image.fromarray(np.full((24, 24, 3), 200, np.uint8)).save(new)
    new_roots = {"genimage": data / "GenImage", "cnndetection": data / "CNNDetection"}
    rc = main(["experiment", *_args(root, new_roots, out, "--heads", "univfd", "--epochs", "1")])
    assert rc == 0
    assert "16 reused from the cache" in capsys.readouterr().out
    san = open_feature_set(next((out / "features").rglob("clean/cnndetection-all-SAN")))
    assert "1_fake/new.png" in set(san.paths)
    # --retrain replaces a run whose configuration changed
    rc = main(["experiment", *_args(root, new_roots, out, "--heads", "univfd", "--epochs", "1", "--set", "lr=0.001")])
    assert rc == 2
    rc = main(
        [
            "experiment",
            *_args(root, new_roots, out, "--heads", "univfd", "--epochs", "1", "--set", "lr=0.001", "--retrain"),
        ]
    )
    assert rc == 0 and "univfd-seed0: retrained" in capsys.readouterr().err
    assert json.loads((out / "runs" / "univfd-seed0" / "run.json").read_text())["train"]["lr"] == 0.001
    # an image that disappeared from the dataset: the cache no longer matches and says so
    new.unlink()
    rc = main(["experiment", *_args(root, new_roots, out, "--heads", "univfd", "--epochs", "1")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "does not select" in err and "cnndetection-all-SAN" in err


def test_missing_folders_are_listed_before_anything_runs(setup, tmp_path, capsys):
    root, roots = setup
    rc = main(["experiment", *_args(root, {"genimage": roots["genimage"], "cnndetection": tmp_path}, tmp_path / "o")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "8 problem(s)" in err and all(f"CNNDetection {t}: no folder" in err for t in GP_TEST_SETS)
    assert not (tmp_path / "o").exists()


def test_ablation_reports_op_and_gp_from_the_runs(setup, first_run, tmp_path, capsys):
    root, roots = setup
    out = tmp_path / "abl"
    cache = first_run[0] / "features"
    rc = main(["ablation", *_args(root, roots, out, "--cache", str(cache), "--epochs", "1")])
    assert rc == 0
    printed = capsys.readouterr().out
    table = pd.read_csv(out / "ablation.csv", index_col="method")
    assert "GP = mean over the eight CNNDetection test sets" in printed
    paper = paper_table(5)
    for name in paper.index:
        assert (
            table.loc[f"{name} (paper)", ["ACC OP", "AP GP"]].tolist() == paper.loc[name, ["ACC OP", "AP GP"]].tolist()
        )
    rows = {"none": "Baseline (UnivFD)", "factorization": "Factorization only", "masking": "Masking only"}
    rows["full"] = "CausalCLIP (factorization + masking)"
    for ablation, row in rows.items():
        run = out / "runs" / f"ablation-{ablation}-seed0"
        cfg = json.loads((run / "run.json").read_text())["causalclip"]
        flags = (cfg["factorization"], cfg["adversarial_masking"])
        assert flags == tuple(paper.loc[row, ["factorization", "masking"]])
        m = pd.read_csv(run / "eval" / "metrics.csv").set_index("generator")
        ours = table.loc[f"{row} (ours)"]
        assert ours["AP OP"] == pytest.approx(100 * m.loc[list(TEST_SETS), "ap"].mean(), abs=0.006)
        assert ours["AP GP"] == pytest.approx(100 * m.loc[list(GP_TEST_SETS), "ap"].mean(), abs=0.006)
        assert ours["ACC GP"] == pytest.approx(100 * m.loc[list(GP_TEST_SETS), "acc"].mean(), abs=0.006)
        assert f"| {row} (ours) |" in printed
    assert "0 image(s) extracted now" in printed  # the shared cache held every set


def test_robustness_sweep_from_the_experiment_folder(setup, first_run, tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "rob"
    exp = first_run[0]
    rc = main(["robustness", "--experiment", str(exp), "--out", str(out), "--jpeg", "50", "--blur", "0", "2", "-q"])
    assert rc == 0
    long = pd.read_csv(out / "robustness_long.csv")
    assert list(long.columns) == ["method", "perturbation", "level", "test_set", "ap", "acc"]
    assert len(long) == 2 * 3 * 15  # methods x levels x test sets
    mean = pd.read_csv(out / "robustness_mean.csv")
    assert len(mean) == 2 * 3
    # per-level mean = mean over test sets of the long table
    check = long.groupby(["method", "perturbation", "level"])[["ap", "acc"]].mean()
    for _, r in mean.iterrows():  # the CSVs hold 6 significant digits
        assert r["ap"] == pytest.approx(check.loc[(r["method"], r["perturbation"], r["level"]), "ap"], rel=1e-5)
    # blur 0 is the clean test set: the same numbers as the experiment's own evaluation (mean over seeds)
    clean = pd.read_csv(exp / "metrics_long.csv").groupby(["method", "test_set"])["ap"].mean()
    b0 = long[(long["perturbation"] == "blur") & (long["level"] == 0)].set_index(["method", "test_set"])["ap"]
    pd.testing.assert_series_equal(b0.sort_index(), clean.sort_index(), check_names=False)
    # perturbed features are cached separately, record the perturbation, and differ from the clean ones
    feats = exp / "features"
    jpeg = open_feature_set(next(feats.rglob("jpeg50/genimage-val-ADM")))
    clean_fs = open_feature_set(next(feats.rglob("clean/genimage-val-ADM")))
    assert jpeg.meta["perturbation"] == {"jpeg_quality": 50} and clean_fs.meta["perturbation"] is None
    assert list(jpeg.paths) == list(clean_fs.paths)
    assert not np.allclose(jpeg.take(np.arange(len(jpeg))), clean_fs.take(np.arange(len(jpeg))))
    assert (out / "robustness.png").is_file()


# ---------------------------------------------------------------------------------------------------------
# --protocol leave-one-out


def test_training_groups_are_generators_else_classes():
    # several generators, reals listed under their own "real" generator (a manifest): that group is shared
    samples = pd.DataFrame(
        {
            "path": [f"{i}.png" for i in range(6)],
            "label": [0, 0, 1, 1, 1, 1],
            "generator": ["real", "real", "gan10", "gan2", "gan2", "vae"],
            "class": [None] * 6,
        }
    )
    g = experiment.training_groups(samples, where="x")
    assert (g.column, g.names, g.shared) == ("generator", ("gan2", "gan10", "vae"), ("real",))
    # one generator with class folders (CNNDetection's ProGAN training set): the classes
    one = samples.assign(generator="ProGAN", **{"class": ["cat", "dog", "cat", "dog", "cat", "dog"]})
    g = experiment.training_groups(one, where="x")
    assert (g.column, g.names, g.shared) == ("class", ("cat", "dog"), ())
    # one generator and no classes: an error that names the folder
    with pytest.raises(ValueError, match=r"/data/sd14 .*at least two generators.*\['ProGAN'\]"):
        experiment.training_groups(one.assign(**{"class": None}), where="/data/sd14 (training set)")
    # two groups, but only one of them holds fakes: nothing to leave out against
    with pytest.raises(ValueError, match="at least two generators"):
        experiment.training_groups(samples.assign(generator=["real"] * 2 + ["gan"] * 4), where="x")


@pytest.fixture(scope="module")
def loo_run(setup, first_run):
    """progan preset (training classes airplane and bird), univfd, seeds 0 and 1, both protocols."""
    root, roots = setup
    out = root / "loo"
    args = _args(root, roots, out, "--cache", str(first_run[0] / "features"), preset="progan")
    args += ["--heads", "univfd", "--seeds", "0", "1", "--protocol", "leave-one-out"]
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["experiment", *args]) == 0
    return out, args, buf.getvalue()


def _set_of(run, role):
    info = json.loads((run / "run.json").read_text())["data"]
    return open_feature_set(info[role][0]["path"] if role == "heldout" else info[role]["path"])


def test_leave_one_out_folds_leave_out_one_class_and_select_on_it(loo_run):
    out = loo_run[0]
    full_train, full_val = (
        _set_of(out / "runs" / "univfd-seed0", "train"),
        _set_of(out / "runs" / "univfd-seed0", "val"),
    )
    assert set(full_train.samples["class"]) == {"airplane", "bird"}
    rows = {p: i for i, p in enumerate(full_train.paths)}
    for seed in (0, 1):
        for left, kept in (("airplane", "bird"), ("bird", "airplane")):
            run = out / "runs" / f"univfd-seed{seed}-without-{left}"
            tr, va, held = _set_of(run, "train"), _set_of(run, "val"), _set_of(run, "heldout")
            assert set(tr.samples["class"]) == {kept} and set(va.samples["class"]) == {kept}
            assert len(tr) == int((full_train.samples["class"] == kept).sum())
            assert set(held.samples["class"]) == {left} and sorted(set(held.labels)) == [0, 1]
            assert len(held) + len(va) == len(full_val)
            # the fold's vectors are the full set's, row for row
            idx = [rows[p] for p in tr.paths]
            np.testing.assert_array_equal(tr.take(np.arange(len(tr))), full_train.take(idx))
            summary = json.loads((run / "summary.json").read_text())
            assert summary["selected_on"] == "heldout"
            assert (run / "eval" / "metrics.csv").is_file()
    info = json.loads((out / "experiment.json").read_text())
    assert info["protocol"] == "leave-one-out" and info["leave_one_out"]["left_out"] == ["airplane", "bird"]
    assert len(info["runs"]) == 2 and len(info["leave_one_out"]["runs"]) == 4  # robustness reads "runs" only


def test_leave_one_out_tables_are_means_over_folds_and_seeds(loo_run):
    out, _, stdout = loo_run
    runs = out / "runs"

    def metrics(name):
        return pd.read_csv(runs / name / "eval" / "metrics.csv").set_index("generator")

    folds = {(s, g): metrics(f"univfd-seed{s}-without-{g}") for s in (0, 1) for g in ("airplane", "bird")}
    standard = {s: metrics(f"univfd-seed{s}") for s in (0, 1)}
    for metric in ("ap", "acc"):
        table = pd.read_csv(out / f"results_loo_{metric}.csv", index_col="method")
        assert list(table.index) == ["UnivFD (ours, all groups)", "UnivFD (ours, leave-one-out)"]
        for t in TEST_SETS:
            loo = np.mean([m.at[t, metric] for m in folds.values()])
            std = np.mean([m.at[t, metric] for m in standard.values()])
            assert table.at["UnivFD (ours, leave-one-out)", t] == pytest.approx(100 * loo, abs=0.006)
            assert table.at["UnivFD (ours, all groups)", t] == pytest.approx(100 * std, abs=0.006)
        assert "(paper)" not in " ".join(table.index)
    # seed spread: a seed's Avg is its mean over folds; then mean and sample std over the two seeds
    spread = pd.read_csv(out / "results_loo_seeds.csv").set_index("method")
    per_seed = [
        np.mean([folds[(s, g)].loc[list(TEST_SETS), "ap"].mean() for g in ("airplane", "bird")]) for s in (0, 1)
    ]
    row = spread.loc["UnivFD (ours, leave-one-out)"]
    assert row["ap_mean"] == pytest.approx(np.mean(per_seed), rel=1e-5)
    assert row["ap_std"] == pytest.approx(np.std(per_seed, ddof=1), rel=1e-4, abs=1e-7)
    assert (row["n_folds"], row["n_seeds"]) == (2, 2)
    assert spread.loc["UnivFD (ours, all groups)", "n_folds"] == 1
    fold_table = pd.read_csv(out / "loo_folds.csv")
    assert len(fold_table) == 4 and set(fold_table["selected_on"]) == {"heldout"}
    for _, r in fold_table.iterrows():
        assert r["ap"] == pytest.approx(folds[(r["seed"], r["left_out"])].loc[list(TEST_SETS), "ap"].mean(), rel=1e-5)
    # printed: the standard table, the protocols side by side and the seed spread
    assert "| UnivFD (ours, leave-one-out) |" in stdout and "mean +- standard deviation over seeds" in stdout


def test_leave_one_out_reuses_its_runs(loo_run, capsys):
    out, args, _ = loo_run
    assert main(["experiment", *args]) == 0
    err = capsys.readouterr().err
    assert err.count(": reused ->") == 6  # 2 standard runs, 4 folds


def test_leave_one_out_needs_two_generators_and_names_the_folder(setup, first_run, tmp_path, capsys):
    root, roots = setup
    cache = ["--cache", str(first_run[0] / "features")]
    rc = main(["experiment", *_args(root, roots, tmp_path / "o", *cache, "--protocol", "leave-one-out")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "stable_diffusion_v_1_4" in err and "at least two generators" in err and "SD1.4" in err
    assert not (tmp_path / "o").exists()  # refused before anything ran
    extra = [*cache, "--protocol", "leave-one-out", "--leave-out", "cat"]
    rc = main(["experiment", *_args(root, roots, tmp_path / "o", *extra, preset="progan")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "no class ['cat'] to leave out" in err and "['airplane', 'bird']" in err
    assert "CNNDetection/train" in err  # the training folder


def test_leave_one_out_needs_feature_heads(setup, tmp_path):
    from causalclip.paper.presets import resolve_preset

    root, roots = setup
    preset = resolve_preset("progan", roots)
    cache = experiment.FeatureCache(tmp_path / "f", experiment.ExtractOptions(backbone=str(root / "clip")))
    with pytest.raises(ValueError, match="leave-one-out trains the feature heads"):
        experiment.run_experiment(
            preset, tmp_path / "o", cache=cache, heads=(), networks=("npr",), protocol="leave-one-out"
        )
    assert not (tmp_path / "o").exists()
