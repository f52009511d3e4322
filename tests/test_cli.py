"""The command line end to end, in-process, on a small feature set."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from causalclip import write_feature_set
from causalclip.cli.main import main


def test_train_then_evaluate(scm_sets, tmp_path, capsys):
    run, ev = tmp_path / "run", tmp_path / "eval"
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"train": {"batch_size": 64}, "causalclip": {"tau": 0.5}}))
    rc = main(
        ["train", "--head", "causalclip", "--train", str(scm_sets["train"]), "--val", str(scm_sets["val"]),
         "--out", str(run), "--seed", "1", "--epochs", "2", "--config", str(cfg), "--set", "lambda2=0.5", "-q"]
    )  # fmt: skip
    assert rc == 0
    assert "trained causalclip" in capsys.readouterr().out
    info = json.loads((run / "run.json").read_text())
    assert info["train"]["seed"] == 1 and info["train"]["epochs"] == 2 and info["train"]["batch_size"] == 64
    assert info["causalclip"]["tau"] == 0.5 and info["causalclip"]["lambda2"] == 0.5

    assert main(["evaluate", str(run), "--test", str(scm_sets["test"]), "--out", str(ev)]) == 0
    out = capsys.readouterr().out
    metrics = pd.read_csv(ev / "metrics.csv")
    assert list(metrics.columns)[:7] == ["generator", "n_real", "n_fake", "ap", "acc", "real_acc", "fake_acc"]
    assert list(metrics["generator"]) == ["gen0", "gen1", "gen2", "mean"]
    assert (metrics["n_real"][:3] == 150).all() and (metrics["n_fake"][:3] == 150).all()
    assert metrics.loc[3, "ap"] == pytest.approx(metrics["ap"][:3].mean())
    preds = pd.read_csv(ev / "predictions.csv")
    assert list(preds.columns) == ["path", "generator", "label", "score"]
    assert len(preds) == 900 and preds["score"].between(0, 1).all()
    # the table's numbers come from the same computation as the file
    for _, r in metrics.iterrows():
        assert f"{100 * r['ap']:.2f}" in out
    # recompute one generator's metrics from predictions.csv independently
    from sklearn.metrics import average_precision_score

    g1 = preds[preds["generator"] == "gen1"]
    assert metrics.loc[1, "ap"] == pytest.approx(average_precision_score(g1["label"], g1["score"]))
    assert metrics.loc[1, "acc"] == pytest.approx(((g1["score"] > 0.5) == g1["label"]).mean())


@pytest.mark.parametrize("head", ["univfd", "vib"])
def test_baselines_and_ablation_through_cli(scm_sets, tmp_path, head):
    args = ["train", "--train", str(scm_sets["train"]), "--val", str(scm_sets["val"]), "--epochs", "1", "-q"]
    assert main([*args, "--head", head, "--out", str(tmp_path / head)]) == 0
    assert main([*args, "--ablation", "factorization", "--out", str(tmp_path / "abl")]) == 0
    assert json.loads((tmp_path / "abl" / "run.json").read_text())["causalclip"]["adversarial_masking"] is False


def test_evaluate_balances_and_reports_one_class_generators(scm_sets, tmp_path, capsys):
    run = tmp_path / "run"
    main(["train", "--head", "univfd", "--train", str(scm_sets["train"]), "--val", str(scm_sets["val"]),
          "--out", str(run), "--epochs", "1", "-q"])  # fmt: skip
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"path": [f"p{i}" for i in range(30)], "label": [0] * 20 + [1] * 10, "generator": ["big"] * 30})
    write_feature_set(tmp_path / "unbal", rng.normal(size=(30, 48)).astype(np.float32), df)
    assert main(["evaluate", str(run), "--test", str(tmp_path / "unbal"), "--out", str(tmp_path / "e")]) == 0
    m = pd.read_csv(tmp_path / "e" / "metrics.csv")
    assert (m.loc[0, "n_real"], m.loc[0, "n_fake"]) == (10, 10)
    assert "balanced by seeded sampling" in capsys.readouterr().err
    assert main(["evaluate", str(run), "--test", str(tmp_path / "unbal"), "--no-balance"]) == 0
    one = df.assign(label=1, generator="onlyfake")
    write_feature_set(tmp_path / "one", rng.normal(size=(30, 48)).astype(np.float32), one)
    capsys.readouterr()
    assert main(["evaluate", str(run), "--test", str(tmp_path / "one")]) == 2
    err = capsys.readouterr().err
    assert "onlyfake" in err and "both real and fake" in err


def test_cli_errors_are_one_line_and_name_the_file(scm_sets, tmp_path, capsys):
    assert (
        main(
            ["train", "--train", str(tmp_path / "missing"), "--val", str(scm_sets["val"]), "--out", str(tmp_path / "r")]
        )
        == 2
    )
    assert "missing: not a directory" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path / "norun"), "--test", str(scm_sets["test"])]) == 2
    assert "norun: not a directory" in capsys.readouterr().err
    assert main(["train", "--train", str(scm_sets["train"]), "--val", str(scm_sets["val"]), "--out", str(tmp_path / "r"), "--set", "tau=-1"]) == 2  # fmt: skip
    assert "tau must be > 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--head", "resnet"])


def test_a_reader_that_goes_away_ends_the_command_quietly(tmp_path, tiny_set):
    """`causalclip inspect DIR | head -1`: no BrokenPipeError traceback, exit status 0."""
    import subprocess
    import sys

    proc = subprocess.Popen(
        [sys.executable, "-m", "causalclip", "inspect", str(tiny_set)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    proc.stdout.close()  # the reader is gone before anything is written
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0, err
    assert "Traceback" not in err and "BrokenPipe" not in err
