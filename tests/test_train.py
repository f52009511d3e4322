"""Training runs: determinism, run folder, configuration layering, early stopping, safe weights."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from causalclip import (
    CheckpointError,
    ConfigError,
    build_head,
    load_head,
    open_feature_set,
    predict,
    resolve_run_config,
    train,
)
from causalclip.heads.checkpoint import save_head

QUICK = {"epochs": 3, "nc_probe_every": 1, "batch_size": 64}


def test_same_seed_gives_identical_metrics(scm_sets, tmp_path):
    rc = resolve_run_config("causalclip", overrides={**QUICK, "seed": 3})
    a = train(train_set=scm_sets["train"], val_set=scm_sets["val"], out=tmp_path / "a", run_config=rc, progress=False)
    b = train(train_set=scm_sets["train"], val_set=scm_sets["val"], out=tmp_path / "b", run_config=rc, progress=False)
    cols = [c for c in a.history.columns if c not in ("train_seconds", "samples_per_s")]
    pd.testing.assert_frame_equal(a.history[cols], b.history[cols])
    wa, wb = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    rc2 = resolve_run_config("causalclip", overrides={**QUICK, "seed": 4})
    c = train(train_set=scm_sets["train"], val_set=scm_sets["val"], out=tmp_path / "c", run_config=rc2, progress=False)
    assert not a.history["val_ap"].equals(c.history["val_ap"])


@pytest.mark.parametrize("head", ["causalclip", "univfd", "vib"])
def test_run_folder_is_complete_and_reloadable(scm_sets, tmp_path, head):
    rc = resolve_run_config(head, overrides=QUICK)
    res = train(
        train_set=scm_sets["train"], val_set=scm_sets["val"], out=tmp_path / "run", run_config=rc, progress=False
    )
    run = tmp_path / "run"
    for name in ("config.json", "model.safetensors", "run.json", "metrics.csv", "summary.json"):
        assert (run / name).is_file(), name
    info = json.loads((run / "run.json").read_text())
    assert info["head"] == head and info["train"]["epochs"] == 3 and info["code_revision"]
    metrics = pd.read_csv(run / "metrics.csv")
    assert list(metrics["epoch"]) == [1, 2, 3]
    assert {"val_ap", "val_acc", "train_cls", "samples_per_s"} <= set(metrics.columns)
    if head == "causalclip":
        assert {"mask_mean", "mask_frac_above_half", "hsic", "adv_acc", "nc_probe_acc"} <= set(metrics.columns)
        sel = pd.read_csv(run / "mask_selection.csv")
        assert len(sel) == 48 and sel["frequency"].between(0, 1).all()
        assert np.load(run / "mask_frequency.npy").shape == (3, 48)
        assert 0 <= json.loads((run / "summary.json").read_text())["diagnostics"]["nc_probe_acc"] <= 1
    # the saved head is the best epoch's and predicts exactly as the returned one
    loaded = load_head(run)
    fs = open_feature_set(scm_sets["val"])
    np.testing.assert_array_equal(predict(loaded.head, fs), predict(res.head, fs))
    best = metrics.loc[metrics["val_ap"].idxmax(), "epoch"]
    assert res.best_epoch == best
    assert loaded.info["features"]["backbone"]["name"] == "synthetic-scm"


def test_training_learns(scm_sets, tmp_path):
    rc = resolve_run_config("causalclip", overrides={"epochs": 15, "batch_size": 64, "lr": 1e-3, "nc_probe_every": 0})
    res = train(train_set=scm_sets["train"], val_set=scm_sets["val"], out=tmp_path / "r", run_config=rc, progress=False)
    assert res.history["val_ap"].max() > 0.9
    assert res.history["val_ap"].iloc[-1] > res.history["val_ap"].iloc[0]


def test_existing_run_is_not_overwritten(scm_sets, tmp_path):
    rc = resolve_run_config("univfd", overrides={"epochs": 1})
    train(train_set=scm_sets["train"], val_set=scm_sets["val"], out=tmp_path / "r", run_config=rc, progress=False)
    with pytest.raises(FileExistsError):
        train(train_set=scm_sets["train"], val_set=scm_sets["val"], out=tmp_path / "r", run_config=rc, progress=False)
    train(
        train_set=scm_sets["train"],
        val_set=scm_sets["val"],
        out=tmp_path / "r",
        run_config=rc,
        progress=False,
        overwrite=True,
    )


def test_early_stopping_decays_lr_then_stops(tmp_path):
    from causalclip import write_feature_set
    from conftest import make_samples

    # Perfectly separable: val AP is 1.0 from epoch 1 and can never improve again.
    df = make_samples(200)
    x = np.random.default_rng(0).normal(size=(200, 8)).astype(np.float32) + 20.0 * df["label"].to_numpy()[:, None]
    easy = write_feature_set(tmp_path / "easy", x, df)
    rc = resolve_run_config("univfd", overrides={"epochs": 50, "lr": 1e-4, "patience": 2, "min_lr": 1e-6})
    res = train(train_set=easy, val_set=easy, out=tmp_path / "d", run_config=rc, progress=False)
    # epochs 1..3 at 1e-4, 4..5 at 1e-5, 6..7 at 1e-6, then 1e-7 < min_lr: stop after epoch 7
    assert list(res.history["lr"]) == pytest.approx([1e-4] * 3 + [1e-5] * 2 + [1e-6] * 2, rel=1e-12)
    assert res.best_epoch == 1 and "plateau" in res.stop_reason
    rc = resolve_run_config("univfd", overrides={"epochs": 50, "patience": 2, "lr_decay_on_plateau": False})
    res = train(train_set=easy, val_set=easy, out=tmp_path / "z", run_config=rc, progress=False)
    assert len(res.history) == 3 and "no val ap improvement for 2 epochs" in res.stop_reason
    # on the saturated AP, validation loss still improves: the best epoch is the one with the lowest loss
    rc = resolve_run_config("univfd", overrides={"epochs": 6, "lr": 1e-3, "early_stop_metric": "loss"})
    res = train(train_set=easy, val_set=easy, out=tmp_path / "l", run_config=rc, progress=False)
    assert res.best_epoch == int(res.history["val_loss"].idxmin()) + 1 and res.best_epoch > 1


def test_config_layers_defaults_file_overrides(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text("[train]\nepochs = 7\nlr = 0.001\n\n[causalclip]\ntau = 0.5\n\n[vib]\nbeta_vib = 0.1\n")
    rc = resolve_run_config(
        "causalclip", config_file=cfg, overrides=["tau=0.25", "train.patience=2"], ablation="masking"
    )
    assert (rc.train.epochs, rc.train.lr, rc.train.patience) == (7, 0.001, 2)
    assert rc.head_config.tau == 0.25 and rc.head_config.factorization is False
    assert resolve_run_config("vib", config_file=cfg).head_config.beta_vib == 0.1
    js = tmp_path / "c.json"
    js.write_text(json.dumps({"train": {"epochs": 2}}))
    assert resolve_run_config("univfd", config_file=js).train.epochs == 2


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"overrides": ["nope=1"]}, "not a field"),
        ({"overrides": ["epochs=three"]}, "epochs: expected an integer"),
        ({"overrides": ["train.early_stop_metric=f1"]}, "not one of"),
        ({"overrides": ["vib.beta_vib=1"]}, "not a field"),
        ({"ablation": "everything"}, "unknown ablation"),
    ],
)
def test_config_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        resolve_run_config("causalclip", **kwargs)


def test_config_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[train]\nepochz = 1\n")
    with pytest.raises(ConfigError, match="bad.toml.*epochz"):
        resolve_run_config("causalclip", config_file=bad)
    bad.write_text("[train\n")
    with pytest.raises(ConfigError, match="bad.toml: not valid TOML"):
        resolve_run_config("causalclip", config_file=bad)
    bad.write_text("[model]\n")
    with pytest.raises(ConfigError, match="unknown section"):
        resolve_run_config("causalclip", config_file=bad)


class _Payload:
    """Unpickling this creates a marker file: proof that a loader ran pickle."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_weights_hidden_in_a_pickle_are_refused(tmp_path):
    head = build_head("univfd", dim=8)
    good = save_head(tmp_path / "good", head)
    marker = tmp_path / "PWNED"
    # 1) a folder with only pickle-format weights
    pk = tmp_path / "pickled"
    pk.mkdir()
    (pk / "config.json").write_text((good / "config.json").read_text())
    torch.save({"fc.weight": torch.zeros(1, 8), "fc.bias": torch.zeros(1), "x": _Payload(marker)}, pk / "model.pt")
    with pytest.raises(CheckpointError, match="pickle-based files.*model.pt"):
        load_head(pk)
    # ... also beside valid-looking safetensors weights
    (pk / "model.safetensors").write_bytes((good / "model.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match="pickle-based files.*model.pt"):
        load_head(pk)
    # 2) a pickle renamed to model.safetensors
    (pk / "model.pt").unlink()
    (pk / "model.safetensors").write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(CheckpointError, match="model.safetensors: not a valid safetensors file"):
        load_head(pk)
    assert not marker.exists()
    # 3) the good folder loads; mismatched weights are refused
    load_head(good)
    cfg = json.loads((good / "config.json").read_text())
    cfg["dim"] = 9
    (good / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="do not match"):
        load_head(good)


def test_train_refuses_mismatched_or_one_class_sets(scm_sets, tmp_path):
    from causalclip import write_feature_set
    from conftest import make_samples

    one = write_feature_set(tmp_path / "one", np.zeros((4, 48), np.float32), make_samples(4).assign(label=1))
    with pytest.raises(ValueError, match="needs real and fake"):
        train(train_set=one, val_set=scm_sets["val"], out=tmp_path / "x", progress=False)
    other = write_feature_set(tmp_path / "o", np.zeros((4, 5), np.float32), make_samples(4))
    with pytest.raises(ValueError, match="dim"):
        train(train_set=scm_sets["train"], val_set=other, out=tmp_path / "y", progress=False)
    diff = write_feature_set(
        tmp_path / "p", np.zeros((4, 48), np.float32), make_samples(4), meta={"backbone": {"name": "other"}}
    )
    with pytest.raises(ValueError, match="made differently"):
        train(train_set=scm_sets["train"], val_set=diff, out=tmp_path / "z", progress=False)
