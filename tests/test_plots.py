"""Figures: robustness curves, the mask report of a CausalCLIP run, and the UMAP/PCA feature maps."""

from __future__ import annotations

import re
import sys

import numpy as np
import pandas as pd
import pytest
import torch

pytest.importorskip("matplotlib")

from causalclip import build_head, load_head, open_feature_set, resolve_run_config, train, write_feature_set
from causalclip.cli.main import main  # noqa: E402
from causalclip.evaluation.plots import MASK_COLUMNS, PlotError, embed_2d, mask_report, plot_robustness, umap_figure  # noqa: E402
from causalclip.heads.checkpoint import save_head

QUICK = {"epochs": 2, "batch_size": 64, "nc_probe_every": 1}


def _is_png(path) -> bool:
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _is_svg(path) -> bool:
    return path.stat().st_size > 0 and b"<svg" in path.read_bytes()[:2000]


def _knn_agreement(xy: np.ndarray, y: np.ndarray, k: int = 5) -> float:
    """Reference computed with plain numpy (the module uses sklearn): majority label of the k nearest others."""
    d = ((xy[:, None, :] - xy[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    nn = np.argsort(d, axis=1, kind="stable")[:, :k]
    return float(((y[nn].mean(1) > 0.5).astype(int) == y).mean())


# ---------------------------------------------------------------------------------------------------------
# robustness


def _robustness_table(methods=("UnivFD", "VIB-Net", "CausalCLIP"), shift: float = 0.0) -> pd.DataFrame:
    rows = []
    for i, m in enumerate(methods):
        for q in (30, 40, 50, 60, 70, 80, 90, 100):  # deliberately unsorted relative to the plot's direction
            rows.append((m, "jpeg", q, 0.95 - 0.03 * i - (100 - q) / 400 + shift, 0.9 - 0.03 * i - (100 - q) / 300))
        for s in (0, 1, 2, 3, 4):
            rows.append((m, "blur", s, 0.95 - 0.03 * i - s / 30 + shift, 0.9 - 0.03 * i - s / 20))
    return pd.DataFrame(rows, columns=["method", "perturbation", "level", "ap", "acc"])


def _line_xs(svg: str, gid: str) -> list[float]:
    m = re.search(rf'<g id="{re.escape(gid)}">\s*<path d="([^"]*)"', svg)
    assert m, gid
    return [float(v) for v in re.findall(r"[ML] ([-\d.]+) [-\d.]+", m.group(1))]


def test_robustness_plot_one_line_per_method_and_panel(tmp_path):
    methods = ("UnivFD", "VIB-Net", "CausalCLIP")
    paths = plot_robustness(_robustness_table(methods), tmp_path / "fig" / "rob.png", title="SD v1.4")
    assert paths == [tmp_path / "fig" / "rob.png", tmp_path / "fig" / "rob.svg"]
    assert _is_png(paths[0]) and _is_svg(paths[1])
    svg = paths[1].read_text()
    ids = re.findall(r'<g id="(line-[^"]+)"', svg)
    assert len(ids) == 4 * len(methods) and len(set(ids)) == len(ids)
    for metric in ("ap", "acc"):
        for kind, n_levels in (("jpeg", 8), ("blur", 5)):
            for m in methods:
                xs = _line_xs(svg, f"line-{metric}-{kind}-{m}")
                assert len(xs) == n_levels
                # points are drawn by increasing level; JPEG's axis runs from 100 down to 30, blur's up from 0
                assert (np.diff(xs) < 0).all() if kind == "jpeg" else (np.diff(xs) > 0).all()
    assert "SD v1.4" in svg


def test_robustness_plot_is_deterministic_and_depends_on_input(tmp_path):
    a = plot_robustness(_robustness_table(), tmp_path / "a")
    b = plot_robustness(_robustness_table(), tmp_path / "b")
    c = plot_robustness(_robustness_table(methods=("UnivFD", "CausalCLIP"), shift=-0.02), tmp_path / "c")
    for i in range(2):  # png, svg
        assert a[i].read_bytes() == b[i].read_bytes()
        assert a[i].read_bytes() != c[i].read_bytes()
    assert len(re.findall(r'<g id="line-', c[1].read_text())) == 8


def test_robustness_plot_rejects_bad_tables(tmp_path):
    t = _robustness_table()
    with pytest.raises(PlotError, match="missing column"):
        plot_robustness(t.drop(columns="acc"), tmp_path / "x")
    with pytest.raises(PlotError, match="outside \\[0, 1\\]"):
        plot_robustness(t.assign(ap=t["ap"] * 100), tmp_path / "x")
    with pytest.raises(PlotError, match="unknown perturbation"):
        plot_robustness(t.assign(perturbation="noise"), tmp_path / "x")
    with pytest.raises(PlotError, match="average over test sets"):
        plot_robustness(pd.concat([t, t.iloc[:1]]), tmp_path / "x")
    with pytest.raises(PlotError, match="not a number"):
        plot_robustness(t.assign(level=t["level"].astype(object).where(t.index > 0, "high")), tmp_path / "x")
    assert not list(tmp_path.iterdir())


def test_missing_matplotlib_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import raises ImportError
    with pytest.raises(PlotError, match=r"causalclip\[plots\]"):
        plot_robustness(_robustness_table(), tmp_path / "x")
    monkeypatch.setitem(sys.modules, "umap", None)
    with pytest.raises(PlotError, match=r"causalclip\[umap\]"):
        embed_2d(np.zeros((10, 3)), method="umap")
    assert not list(tmp_path.iterdir())


# ---------------------------------------------------------------------------------------------------------
# runs for the mask report and the feature maps


@pytest.fixture(scope="module")
def runs(scm_sets, tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("plot_runs")
    out = {}
    for name, head, extra in (
        ("cc0", "causalclip", {"seed": 0}),
        ("cc1", "causalclip", {"seed": 1}),
        ("vib", "vib", {}),
    ):
        rc = resolve_run_config(head, overrides={**QUICK, **extra})
        train(train_set=scm_sets["train"], val_set=scm_sets["val"], out=root / name, run_config=rc, progress=False)
        out[name] = root / name
    # an ablation-"none" run (no mask network): what train writes for it, minus training it
    rc = resolve_run_config("causalclip", ablation="none")
    none = root / "none"
    save_head(none, build_head("causalclip", dim=48, config=rc.head_config))
    out["none"] = none
    return out


# ---------------------------------------------------------------------------------------------------------
# mask report


@pytest.fixture(scope="module")
def report0(runs, tmp_path_factory):
    """The mask report of run cc0, drawn once (each report takes seconds of matplotlib)."""
    out = tmp_path_factory.mktemp("report0")
    return mask_report(runs["cc0"], out, top_k=5)


def test_mask_report_numbers_equal_the_run(runs, report0):
    run, rep = runs["cc0"], report0[0].parent
    names = {p.name for p in report0}
    assert names == {
        "mask_report.csv",
        "mask_top_dimensions.csv",
        "mask_report.md",
        "mask_training.png",
        "mask_training.svg",
        "mask_frequency.png",
        "mask_frequency.svg",
    }
    for p in report0:
        assert p.stat().st_size > 0
        if p.suffix == ".png":
            assert _is_png(p)
    metrics = pd.read_csv(run / "metrics.csv")
    report = pd.read_csv(rep / "mask_report.csv")
    cols = ["epoch", "val_ap", "val_acc", *MASK_COLUMNS]
    assert set(cols) <= set(report.columns)
    pd.testing.assert_frame_equal(report[cols], metrics[cols])
    best = pd.read_json(run / "summary.json", typ="series")["best_epoch"]
    assert report.loc[report["is_best"], "epoch"].tolist() == [best]

    sel = pd.read_csv(run / "mask_selection.csv")
    top = pd.read_csv(rep / "mask_top_dimensions.csv")
    order = np.lexsort((sel["dimension"].to_numpy(), -sel["frequency"].to_numpy()))
    assert top["dimension"].tolist() == sel["dimension"].to_numpy()[order].tolist()
    assert top["rank"].tolist() == list(range(1, len(sel) + 1))

    md = (rep / "mask_report.md").read_text()
    assert f"best epoch (the saved head): {best}" in md
    n_sel = int((sel["frequency"] > 0.5).sum())
    assert f"selects {n_sel} of 48 dimensions" in md
    # the top-5 table lists exactly the five most frequent dimensions, the per-epoch table every epoch
    top_section = md.split("## Top 5 selected dimensions (saved head)")[1]
    listed = [int(line.split("|")[2]) for line in top_section.strip().splitlines()[2:]]
    assert listed == top["dimension"].head(5).tolist()
    assert len(md.split("## Per epoch")[1].split("## Top")[0].strip().splitlines()) == 2 + len(metrics)

    svg = (rep / "mask_training.svg").read_text()
    for col in ("mask_mean", "mask_frac_above_half", "mask_dims_selected", "hsic", "adv_acc", "nc_probe_acc"):
        assert f'id="series-{col}"' in svg


def test_mask_report_cli_is_deterministic_and_depends_on_the_run(runs, report0, tmp_path, capsys):
    assert main(["mask-report", str(runs["cc0"]), "--out", str(tmp_path / "a"), "--top-k", "5"]) == 0
    out = capsys.readouterr().out
    assert "2 epoch(s)" in out and "mask_training.svg" in out
    b = mask_report(runs["cc1"], tmp_path / "b", top_k=5)
    for p0, pb in zip(report0, b, strict=True):
        assert (tmp_path / "a" / p0.name).read_bytes() == p0.read_bytes(), p0.name
        if p0.suffix in (".png", ".svg"):
            assert pb.read_bytes() != p0.read_bytes(), p0.name


def test_mask_report_errors(runs, tmp_path, capsys):
    assert main(["mask-report", str(runs["vib"]), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert str(runs["vib"]) in err and "'vib' run" in err and "CausalCLIP run" in err
    with pytest.raises(PlotError, match="ablation 'none'"):
        mask_report(runs["none"], tmp_path / "x")
    with pytest.raises(PlotError, match="config.json: missing"):
        mask_report(tmp_path, tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_mask_report_refuses_inconsistent_files(runs, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(runs["cc0"], run)
    np.save(run / "mask_frequency.npy", np.zeros((5, 48), dtype=np.float32))
    with pytest.raises(PlotError, match=r"mask_frequency.npy: shape \(5, 48\), expected \(2, 48\)"):
        mask_report(run, tmp_path / "x")
    (run / "mask_frequency.npy").unlink()
    with pytest.raises(PlotError, match="mask_frequency.npy: missing"):
        mask_report(run, tmp_path / "x")


# ---------------------------------------------------------------------------------------------------------
# feature maps (Fig. 3); "pca" is fast; "umap" needs the umap extra (CI installs it) and its first fit in a process
# pays numba's JIT compilation (about 12 s, 25 s on a fresh install; later fits take well under a second), so
# one test fits UMAP


def test_feature_map_panels_match_the_heads(runs, scm_sets, tmp_path):
    paths = umap_figure(
        scm_sets["test"],
        tmp_path / "m" / "map",
        vib_run=runs["vib"],
        causalclip_run=runs["cc0"],
        seen_generators=["gen0"],
        max_per_group=40,
        seed=3,
        method="pca",
    )
    assert [p.name for p in paths] == ["map.png", "map.svg", "map.csv", "map_separation.csv"]
    assert _is_png(paths[0]) and _is_svg(paths[1])
    coords = pd.read_csv(paths[2])
    assert list(pd.unique(coords["representation"])) == ["raw", "vib", "causalclip"]
    fs = open_feature_set(scm_sets["test"])
    for key, part in coords.groupby("representation"):
        # the seeded subsample: 40 per generator and class (the set has 150), rows unique and labelled as stored
        counts = part.groupby(["generator", "label"]).size()
        assert (counts == 40).all() and len(counts) == 6, key
        assert part["row"].is_unique
        np.testing.assert_array_equal(part["label"], fs.labels[part["row"]])
        np.testing.assert_array_equal(part["generator"], fs.generators[part["row"]])
        assert (part["seen"] == (part["generator"] == "gen0")).all()

    # each panel is the PCA of its representation, computed here another way (SVD), up to the sign of each axis
    x = torch.from_numpy(fs.take(coords.loc[coords["representation"] == "raw", "row"].to_numpy()).astype(np.float32))
    with torch.no_grad():
        reps = {
            "raw": x.numpy(),
            "vib": load_head(runs["vib"]).head.encode(x)[0].numpy(),
            "causalclip": load_head(runs["cc0"]).head.split(x, stochastic=False)[1].numpy(),
        }
    for key, z in reps.items():
        z = z.astype(np.float64) - z.mean(0)
        ref = z @ np.linalg.svd(z, full_matrices=False)[2][:2].T
        got = coords.loc[coords["representation"] == key, ["x", "y"]].to_numpy()
        np.testing.assert_allclose(np.abs(got), np.abs(ref), rtol=1e-4, atol=1e-4, err_msg=key)

    sep = pd.read_csv(paths[3])
    for _, r in sep.iterrows():
        part = coords[coords["representation"] == r["representation"]]
        if r["subset"] != "all":
            part = part[part["seen"] == (r["subset"] == "seen")]
        assert r["n"] == len(part)
        assert r["knn_agreement"] == pytest.approx(
            _knn_agreement(part[["x", "y"]].to_numpy(), part["label"].to_numpy())
        )


def test_feature_map_is_seeded(scm_sets, tmp_path):
    def run(seed, name):
        umap_figure(
            scm_sets["test"], tmp_path / name, seen_generators=["gen0"], max_per_group=30, seed=seed, method="pca"
        )
        return pd.read_csv(tmp_path / f"{name}.csv"), (tmp_path / f"{name}.svg").read_bytes()

    (a, sa), (b, sb), (c, sc) = run(0, "a"), run(0, "b"), run(1, "c")
    pd.testing.assert_frame_equal(a, b)
    assert sa == sb
    assert set(a["row"]) != set(c["row"]) and sa != sc


def _easy_set(root, *, separable: bool, n: int = 80, dim: int = 32, seed: int = 0):
    """Two generators; with ``separable`` the classes are far apart in 4 dimensions, otherwise labels are random."""
    rng = np.random.default_rng(seed)
    xs, rows = [], []
    for g in ("seen_gan", "unseen_diffusion"):
        y = np.repeat([0, 1], n)
        x = rng.normal(size=(2 * n, dim))
        if separable:
            x[:, :4] += 6.0 * y[:, None]
        xs.append(x)
        rows += [(f"{g}/{i}", int(lab), g) for i, lab in enumerate(y)]
    df = pd.DataFrame(rows, columns=["path", "label", "generator"])
    return write_feature_set(root, np.concatenate(xs).astype(np.float32), df, meta={"backbone": {"name": "test"}})


@pytest.mark.parametrize("method", ["pca", "umap"])
def test_feature_map_separates_an_easy_set(tmp_path, method):
    if method == "umap":
        pytest.importorskip("umap")
    results = {}
    for separable in (True, False):
        fs = _easy_set(tmp_path / f"set{separable}", separable=separable)
        stem = tmp_path / f"map{separable}"
        umap_figure(fs, stem, seen_generators=["seen_gan"], max_per_group=60, seed=0, method=method)
        coords = pd.read_csv(f"{stem}.csv")
        assert len(coords) == 4 * 60
        results[separable] = _knn_agreement(coords[["x", "y"]].to_numpy(), coords["label"].to_numpy())
    assert results[True] > 0.95
    assert results[False] < 0.7
    if method == "umap":  # deterministic given the seed
        umap_figure(tmp_path / "setTrue", tmp_path / "again", seen_generators=["seen_gan"], max_per_group=60, seed=0)
        pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "mapTrue.csv"), pd.read_csv(tmp_path / "again.csv"))


def test_feature_map_cli_skips_panels_and_checks_runs(runs, scm_sets, tmp_path, capsys):
    stem = tmp_path / "u"
    argv = ["umap", "--features", str(scm_sets["test"]), "--seen", "gen0", "--out", str(stem), "--method", "pca"]
    assert main([*argv, "--vib", str(runs["vib"]), "--max-per-group", "20"]) == 0
    assert "agreement" in capsys.readouterr().out
    coords = pd.read_csv(f"{stem}.csv")
    assert set(coords["representation"]) == {"raw", "vib"} and len(coords) == 2 * 6 * 20
    # a run of the wrong head, an unknown generator, a feature set of another dimension: one-line errors
    assert main([*argv, "--vib", str(runs["cc0"])]) == 2
    err = capsys.readouterr().err
    assert str(runs["cc0"]) in err and "'causalclip' run" in err and "--vib" in err
    assert main([*argv[:4], "nope", *argv[5:]]) == 2
    assert "['nope']" in capsys.readouterr().err
    other = write_feature_set(
        tmp_path / "d16",
        np.zeros((8, 16), np.float32),
        pd.DataFrame({"path": list("abcdefgh"), "label": [0, 1] * 4, "generator": "gen0x"}),
    )
    assert (
        main(
            [
                "umap",
                "--features",
                str(other),
                "--causalclip",
                str(runs["cc0"]),
                "--seen",
                "gen0x",
                "--out",
                str(stem),
                "--method",
                "pca",
            ]
        )
        == 2
    )
    assert "dim 16" in capsys.readouterr().err
