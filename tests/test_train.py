"""Training runs: determinism, run folder, configuration layering, early stopping, safe weights."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

import causalclip
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

QUICK = {"epochs": 3, "nc_probe_every": 1, "batch_size": 64, "min_epochs": 1}


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
        assert {"mask_mean", "mask_frac_above_half", "hsic", "nhsic", "adv_acc", "nc_probe_acc"} <= set(metrics.columns)
        assert {"grad_cls", "grad_adv", "grad_inv", "grad_l1", "grad_indep"} <= set(metrics.columns)
        sel = pd.read_csv(run / "mask_selection.csv")
        assert len(sel) == 48 and sel["frequency"].between(0, 1).all()
        assert np.load(run / "mask_frequency.npy").shape == (3, 48)
        assert 0 <= json.loads((run / "summary.json").read_text())["diagnostics"]["nc_probe_acc"] <= 1
    # the saved head is the best epoch's and predicts exactly as the returned one
    loaded = load_head(run)
    fs = open_feature_set(scm_sets["val"])
    np.testing.assert_array_equal(predict(loaded.head, fs), predict(res.head, fs))
    best = metrics.loc[metrics["val_ap"] == metrics["val_ap"].max(), "epoch"].max()  # ties: the later epoch
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
    once = {"min_epochs": 1}  # every epoch may be selected and counted towards patience
    rc = resolve_run_config("univfd", overrides={"epochs": 50, "lr": 1e-4, "patience": 2, "min_lr": 1e-6, **once})
    res = train(train_set=easy, val_set=easy, out=tmp_path / "d", run_config=rc, progress=False)
    # epochs 1..3 at 1e-4, 4..5 at 1e-5, 6..7 at 1e-6, then 1e-7 < min_lr: stop after epoch 7
    assert list(res.history["lr"]) == pytest.approx([1e-4] * 3 + [1e-5] * 2 + [1e-6] * 2, rel=1e-12)
    assert res.best_epoch == 7 and "plateau" in res.stop_reason  # every epoch ties at AP 1: the last one is kept
    rc = resolve_run_config("univfd", overrides={"epochs": 50, "patience": 2, "lr_decay_on_plateau": False, **once})
    res = train(train_set=easy, val_set=easy, out=tmp_path / "z", run_config=rc, progress=False)
    assert len(res.history) == 3 and "no val ap improvement for 2 epochs" in res.stop_reason
    # on the saturated AP, validation loss still improves: the best epoch is the one with the lowest loss
    rc = resolve_run_config("univfd", overrides={"epochs": 6, "lr": 1e-3, "early_stop_metric": "loss", **once})
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


def test_selection_waits_for_min_epochs_and_takes_the_later_epoch_on_ties(tmp_path):
    """On a set every epoch separates perfectly (validation AP 1.0 throughout), the saved epoch is the last one,
    and never one before min_epochs even when an earlier epoch scored higher."""
    from causalclip import write_feature_set
    from conftest import make_samples

    rng = np.random.default_rng(0)
    df = make_samples(200)
    x = rng.normal(size=(200, 8)).astype(np.float32) + 6.0 * df["label"].to_numpy()[:, None]
    fs = write_feature_set(tmp_path / "easy", x, df, meta={"backbone": {"name": "test"}})
    rc = resolve_run_config("univfd", overrides={"epochs": 4, "min_epochs": 2, "batch_size": 50, "lr": 1e-2})
    res = train(train_set=fs, val_set=fs, out=tmp_path / "run", run_config=rc, progress=False)
    assert (res.history["val_ap"] == 1.0).all()
    assert res.best_epoch == 4
    rc = resolve_run_config("univfd", overrides={"epochs": 6, "min_epochs": 5, "batch_size": 50, "lr": 1e-2})
    res = train(train_set=fs, val_set=fs, out=tmp_path / "run5", run_config=rc, progress=False)
    assert res.best_epoch >= 5


def test_real_loop_moves_only_the_phase_groups_parameters(tiny_set, tmp_path, monkeypatch):
    """The real ``train`` (not a re-implementation of its loop): in each phase exactly one optimiser steps, the
    phase's own, and it moves all of that group's parameters and nothing else; in particular the mask phase
    never moves h or d, and h changes only in the classifier phase. Spied on from inside: the head's
    ``training_phases`` snapshots every parameter at each phase boundary (after the loop has stepped), and a
    global optimiser step hook records which optimiser stepped during which phase."""
    from torch.optim.optimizer import register_optimizer_step_post_hook

    from causalclip.heads.causalclip import CausalCLIPHead

    original = CausalCLIPHead.training_phases
    state: dict = {"phase": None, "last": None, "owner": None, "head": None}
    moves: list[tuple[str, set[str]]] = []  # (phase or "between batches", names of the parameters it changed)
    steps: list[tuple[str | None, str]] = []  # (phase in progress, group of the optimiser that stepped)

    def snapshot(head):
        return {n: p.detach().clone() for n, p in head.named_parameters()}

    def changed(a, b):
        return {n for n in a if not torch.equal(a[n], b[n])}

    def spy(self, e, y):
        state["head"] = self
        ids = {id(p): n for n, p in self.named_parameters()}
        state["owner"] = {ids[id(p)]: g for g, ps in self.param_groups().items() for p in ps}
        before = snapshot(self)
        if state["last"] is not None:
            moves.append(("between batches", changed(state["last"], before)))
        for group, loss, logs in original(self, e, y):
            state["phase"] = group
            yield group, loss, logs  # the loop runs backward and steps here
            after = snapshot(self)
            moves.append((group, changed(before, after)))
            before = after
        state["phase"], state["last"] = None, before

    def on_step(opt, args, kwargs):
        params = [q for pg in opt.param_groups for q in pg["params"]]
        names = {n for n, p in state["head"].named_parameters() if any(p is q for q in params)}
        if names:  # an optimiser of the head's (not, e.g., one inside a metric)
            groups = {state["owner"][n] for n in names}
            assert len(groups) == 1, f"one optimiser spans the groups {groups}"
            steps.append((state["phase"], groups.pop()))

    monkeypatch.setattr(CausalCLIPHead, "training_phases", spy)
    handle = register_optimizer_step_post_hook(on_step)
    try:
        rc = resolve_run_config(
            "causalclip", overrides={"epochs": 1, "batch_size": 16, "lr": 1e-2, "nc_probe_every": 0}
        )
        res = train(train_set=tiny_set, val_set=tiny_set, out=tmp_path / "r", run_config=rc, progress=False)
    finally:
        handle.remove()

    owner = state["owner"]
    members = {g: {n for n, gg in owner.items() if gg == g} for g in ("adversary", "classifier", "mask")}
    assert members["classifier"] == {"h.weight", "h.bias"} and members["adversary"] and members["mask"]
    phases = [p for p, _ in moves if p != "between batches"]
    assert phases == ["adversary", "classifier", "mask"] * 4  # 64 samples in batches of 16
    for phase, names in moves:
        if phase == "between batches":
            assert not names, f"parameters changed between two batches: {sorted(names)}"
        else:
            assert names == members[phase], f"{phase} phase changed {sorted(names)}, expected {sorted(members[phase])}"
    # Nothing moves after the last phase either: the returned head (epoch 1, the best) is the last snapshot.
    final = snapshot(res.head)
    assert not changed(final, state["last"])
    assert steps == [(p, p) for p in phases], "each phase steps exactly its own group's optimiser, once"


def test_code_revision_outside_a_git_checkout_names_the_version(monkeypatch):
    """An installed wheel has no git checkout: the run records the package version instead (and does not fail)."""
    import subprocess

    from causalclip.core import revision

    def no_git(*args, **kwargs):
        raise FileNotFoundError("git")

    first = revision.code_revision()
    monkeypatch.setattr(subprocess, "run", no_git)
    assert revision.code_revision() == first  # remembered: a checkout that moves on mid-job does not change it
    revision.code_revision.cache_clear()
    try:
        assert revision.code_revision() == f"causalclip {causalclip.__version__} (not a git checkout)"
    finally:
        revision.code_revision.cache_clear()


def test_heldout_generators_drive_model_selection(tmp_path):
    """With a held-out generator's set, the saved epoch is the one best on it, not on the saturated in-distribution
    set; here the held-out set's labels are the reverse of what training learns, so its AP falls as training
    proceeds and selection must keep the first eligible epoch."""
    from causalclip import write_feature_set
    from conftest import make_samples

    rng = np.random.default_rng(0)
    df = make_samples(200)
    x = rng.normal(size=(200, 8)).astype(np.float32) + 1.5 * df["label"].to_numpy()[:, None]
    fs = write_feature_set(tmp_path / "a", x, df, meta={"backbone": {"name": "test"}})
    flipped = df.assign(label=1 - df["label"], generator="other")
    held = write_feature_set(tmp_path / "b", x, flipped, meta={"backbone": {"name": "test"}})
    rc = resolve_run_config("univfd", overrides={"epochs": 5, "min_epochs": 1, "batch_size": 50, "lr": 1e-2})
    res = train(train_set=fs, val_set=fs, heldout_sets=[held], out=tmp_path / "r", run_config=rc, progress=False)
    h = res.history
    assert {"heldout_ap", "heldout_acc", "heldout_loss"} <= set(h.columns)
    best = h.loc[h["heldout_ap"] == h["heldout_ap"].max(), "epoch"].max()
    assert res.best_epoch == best and res.best_epoch < len(h)
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["selected_on"] == "heldout"
    recorded = json.loads((tmp_path / "r" / "run.json").read_text())["data"]["heldout"][0]["path"]
    assert recorded == str(open_feature_set(held).root)


def test_cli_val_roles(tmp_path, tiny_set):
    from causalclip.cli.main import main

    out = tmp_path / "run"
    args = ["train", "--head", "univfd", "--train", str(tiny_set), "--out", str(out), "--epochs", "2", "-q"]
    assert main([*args, "--val", str(tiny_set), f"heldout={tiny_set}"]) == 0
    assert json.loads((out / "summary.json").read_text())["selected_on"] == "heldout"
    assert main([*args, "--overwrite", "--val", f"heldout={tiny_set}"]) == 2  # no in-distribution set
    assert main([*args, "--overwrite", "--val", str(tiny_set), f"val={tiny_set}"]) == 2  # two of them
