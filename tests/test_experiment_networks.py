"""`causalclip experiment --networks`: networks trained on the preset's images get rows beside the paper's."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("transformers")
from causalclip.cli.main import main  # noqa: E402
from causalclip.paper.tables import TEST_SETS, paper_table  # noqa: E402
from test_experiment import _args, setup  # noqa: E402, F401  (the fake tree and tiny CLIP of test_experiment)

TINY_NPR = [
    *("--network-set", "npr.layers=[1, 1]", "--network-set", "npr.widths=[8, 16]", "--network-set", "npr.stem_width=8"),
    *("--network-set", "recipe.train_crop=32", "--network-set", "recipe.test_crop=32"),
    *("--network-set", "recipe.train_resize=null", "--network-set", "recipe.batch_size=8"),
    *("--network-set", "recipe.epochs=2", "--network-set", "train.workers=0"),
]


def test_networks_train_on_the_preset_images_and_join_the_tables(setup, tmp_path):  # noqa: F811
    root, roots = setup
    out = tmp_path / "out"
    argv = ["experiment", *_args(root, roots, out, "--heads", "--networks", "npr", *TINY_NPR)]
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(argv) == 0
    run = out / "runs" / "npr-seed0"
    info = json.loads((run / "run.json").read_text())
    assert info["method"] == "npr" and info["recipe"]["lr"] == 2e-4  # the authors' learning rate, not overridden
    metrics = pd.read_csv(run / "eval" / "metrics.csv").set_index("generator")
    assert set(metrics.index) == {*TEST_SETS, "mean"}
    written = pd.read_csv(out / "results_ap.csv", index_col="method")
    assert list(written.index) == ["NPR (paper)", "NPR (ours)"]
    assert written.at["NPR (paper)", "Avg"] == paper_table(1).at["NPR", "Avg"]
    for t in TEST_SETS:
        assert written.at["NPR (ours)", t] == pytest.approx(100 * metrics.at[t, "ap"], abs=0.006)
    assert written.at["NPR (ours)", "Avg"] == pytest.approx(
        100 * np.mean([metrics.at[t, "ap"] for t in TEST_SETS]), abs=0.006
    )
    assert "| NPR (ours) |" in buf.getvalue()
    record = json.loads((out / "experiment.json").read_text())
    assert [r["name"] for r in record["runs"]] == ["npr-seed0"] and record["networks"] == ["npr"]
    # a second run reuses the trained network
    buf = io.StringIO()
    with contextlib.redirect_stderr(buf), contextlib.redirect_stdout(io.StringIO()):
        assert main(argv) == 0
    assert "npr-seed0: reused" in buf.getvalue()
