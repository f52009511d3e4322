"""The feature loop's optimisers and lr schedules, and the heads' training recipes (CLIPping's is the authors').

References are computed another way: torch's own CosineAnnealingLR for the schedule, the SGD update rule written
out by hand for the optimiser, and the numbers of the authors' files typed in for the recipes.
"""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from causalclip import HEADS, build_head, open_feature_set, write_feature_set
from causalclip.core.config import ConfigError
from causalclip.training.config import TrainConfig, head_recipe, recorded_sections, resolve_run_config
from causalclip.training.loop import train
from causalclip.training.optim import build_optimizer, scheduled_lr
from conftest import make_samples


def _torch_cosine_with_constant_warmup(*, lr: float, epochs: int, warmup: int, warmup_lr: float) -> list[float]:
    """Dassl's schedule rebuilt from torch's own scheduler: `warmup` epochs at warmup_lr, then a fresh
    CosineAnnealingLR(T_max=epochs) (WARMUP_RECOUNT) read before each epoch and stepped after it."""
    lrs = [warmup_lr] * warmup
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    for _ in range(epochs - warmup):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


@pytest.mark.parametrize("epochs, warmup", [(2, 1), (5, 0), (7, 2), (12, 3)])
def test_cosine_with_warmup_equals_torchs_scheduler(epochs, warmup):
    cfg = TrainConfig(
        lr=0.002, epochs=epochs, lr_schedule="cosine", warmup_epochs=warmup, warmup_lr=1e-5, optimizer="sgd"
    )
    want = _torch_cosine_with_constant_warmup(lr=0.002, epochs=epochs, warmup=warmup, warmup_lr=1e-5)
    got = [scheduled_lr(cfg, e) for e in range(1, epochs + 1)]
    assert got == pytest.approx(want, rel=1e-9, abs=1e-15)


def test_the_authors_two_epochs_run_at_the_warmup_lr_then_the_full_lr():
    """CLIPping's vit_l14_ep2: epoch 1 at WARMUP_CONS_LR, epoch 2 at LR (the cosine's epoch 0)."""
    cfg = resolve_run_config("clipping").train
    assert [scheduled_lr(cfg, 1), scheduled_lr(cfg, 2)] == [1e-5, 0.002]
    const = dataclasses.replace(cfg, lr_schedule="constant", warmup_epochs=2, epochs=4)
    assert [scheduled_lr(const, e) for e in range(1, 5)] == [1e-5, 1e-5, 0.002, 0.002]
    assert scheduled_lr(TrainConfig(), 3) is None  # plateau: the selector decides


def _separable(tmp_path, n=40, dim=4, seed=0):
    df = make_samples(n, seed=seed)
    x = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    x[:, 0] += 4.0 * (2 * df["label"].to_numpy() - 1)  # AP 1 from the start: the plateau schedule would stop
    return write_feature_set(tmp_path / f"set{seed}", x, df, meta={"backbone": {"name": "test"}}), x, df


def test_the_loop_trains_every_epoch_at_the_scheduled_lr(tmp_path, monkeypatch):
    """The real loop: every optimiser step of epoch e runs at the schedule's lr for e, all epochs run although the
    validation AP never improves (a plateau run with patience 1 stops), and metrics.csv records those lrs."""
    from torch.optim.optimizer import register_optimizer_step_post_hook

    fs, _, _ = _separable(tmp_path)
    over = {"epochs": 6, "batch_size": 10, "patience": 1, "min_epochs": 1, "lr": 0.1, "optimizer": "sgd"}
    plateau = train(
        train_set=fs,
        val_set=fs,
        out=tmp_path / "p",
        progress=False,
        run_config=resolve_run_config("univfd", overrides={**over, "lr_decay_on_plateau": False}),
    )
    assert len(plateau.history) < 6  # the same data stops a plateau run early

    seen: list[float] = []
    handle = register_optimizer_step_post_hook(lambda opt, a, k: seen.append(opt.param_groups[0]["lr"]))
    try:
        rc = resolve_run_config(
            "univfd", overrides={**over, "lr_schedule": "cosine", "warmup_epochs": 2, "warmup_lr": 1e-3}
        )
        res = train(train_set=fs, val_set=fs, out=tmp_path / "c", run_config=rc, progress=False)
    finally:
        handle.remove()
    want = _torch_cosine_with_constant_warmup(lr=0.1, epochs=6, warmup=2, warmup_lr=1e-3)
    assert len(res.history) == 6 and res.stop_reason == "reached 6 epochs"
    assert list(res.history["lr"]) == pytest.approx(want, rel=1e-9)
    assert seen == pytest.approx([lr for lr in want for _ in range(4)], rel=1e-9)  # 40 samples / batch 10
    assert res.best_epoch == 6  # AP ties at 1 every epoch: the later epoch wins, as under plateau


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_steps_equal_the_update_rule_by_hand(tmp_path, nesterov):
    """A tiny univfd head trained by the loop with SGD (momentum, weight decay, cosine + warm-up) ends with the
    weights the SGD update rule gives when written out by hand: d = g + wd p; b = mu b + d (b = d at the first
    step); p -= lr (d + mu b if nesterov else b)."""
    fs, x, df = _separable(tmp_path, n=24, dim=3)
    over = {
        "optimizer": "sgd", "lr": 0.5, "momentum": 0.9, "weight_decay": 0.05, "nesterov": nesterov,
        "lr_schedule": "cosine", "warmup_epochs": 1, "warmup_lr": 0.01, "epochs": 4, "min_epochs": 4,
        "batch_size": 64, "seed": 3,
    }  # fmt: skip
    res = train(
        train_set=fs,
        val_set=fs,
        out=tmp_path / "run",
        progress=False,
        run_config=resolve_run_config("univfd", overrides=over),
    )

    torch.manual_seed(3)  # the loop seeds torch, then builds the head: the same initial weights
    head = build_head("univfd", dim=3)
    params = [p.detach().clone() for p in (head.fc.weight, head.fc.bias)]
    stored = open_feature_set(fs)  # the features as stored: what the loop reads
    xs = torch.from_numpy(stored.take(np.arange(len(stored))).astype(np.float32))
    ys = torch.tensor(df["label"].to_numpy(), dtype=torch.float32)
    bufs = None
    for epoch in range(1, 5):
        lr = 0.01 if epoch == 1 else 0.5 * (1 + math.cos(math.pi * (epoch - 2) / 4)) / 2
        w, b = (p.clone().requires_grad_(True) for p in params)  # one batch per epoch (24 samples <= 64)
        loss = F.binary_cross_entropy_with_logits((xs @ w.T).squeeze(-1) + b, ys)
        grads = torch.autograd.grad(loss, [w, b])
        d = [g + 0.05 * p for g, p in zip(grads, params, strict=True)]
        bufs = d if bufs is None else [0.9 * bu + di for bu, di in zip(bufs, d, strict=True)]
        step = [di + 0.9 * bu for di, bu in zip(d, bufs, strict=True)] if nesterov else bufs
        params = [p - lr * s for p, s in zip(params, step, strict=True)]
    torch.testing.assert_close(res.head.fc.weight.detach(), params[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(res.head.fc.bias.detach(), params[1], rtol=1e-5, atol=1e-6)
    assert not torch.equal(res.head.fc.weight.detach(), build_head("univfd", dim=3).fc.weight)  # it trained


def test_build_optimizer_follows_the_config():
    p = [torch.nn.Parameter(torch.ones(2))]
    sgd = build_optimizer(p, TrainConfig(optimizer="sgd", lr=0.1, momentum=0.5, weight_decay=0.01, nesterov=True))
    assert isinstance(sgd, torch.optim.SGD)
    g = sgd.param_groups[0]
    assert (g["lr"], g["momentum"], g["weight_decay"], g["nesterov"], g["dampening"]) == (0.1, 0.5, 0.01, True, 0)
    assert type(build_optimizer(p, TrainConfig(optimizer="adamw"))) is torch.optim.AdamW
    assert type(build_optimizer(p, TrainConfig())) is torch.optim.Adam


# ---------------------------------------------------------------------------------------------------------------
# recipes: where each head's training defaults come from


def test_clipping_resolves_to_the_authors_recipe():
    """configs/trainers/CoOp/vit_l14_ep2.yaml over dassl/config/defaults.py (prompt tuning) and train_linear.py
    (linear probe) of sohailahmedkhan/CLIPping-the-Deception at 3298cae, typed in from those files."""
    t = resolve_run_config("clipping").train
    assert (t.optimizer, t.lr, t.momentum, t.weight_decay, t.nesterov) == ("sgd", 0.002, 0.9, 5e-4, False)
    assert (t.lr_schedule, t.warmup_epochs, t.warmup_lr, t.batch_size, t.epochs) == ("cosine", 1, 1e-5, 16, 2)
    lp = resolve_run_config("clipping-lp").train
    # their lr 3e-3 on two rows is 2 x 3e-3 on the rows' difference (test_clipping.py checks the trajectories)
    assert (lp.optimizer, lp.lr, lp.momentum, lp.weight_decay) == ("sgd", 2 * 3e-3, 0.0, 0.0)
    assert (lp.lr_schedule, lp.warmup_epochs, lp.batch_size, lp.epochs) == ("constant", 0, 16, 2)


def test_a_users_settings_win_over_the_recipe(tmp_path):
    rc = resolve_run_config("clipping", overrides=["train.lr=0.01", "epochs=5", "n_ctx=4"])
    assert (rc.train.lr, rc.train.epochs, rc.head_config.n_ctx) == (0.01, 5, 4)
    assert (rc.train.optimizer, rc.train.lr_schedule, rc.train.batch_size) == ("sgd", "cosine", 16)  # the rest
    cfg = tmp_path / "c.toml"
    cfg.write_text('[train]\nbatch_size = 64\noptimizer = "adam"\nlr_schedule = "plateau"\nwarmup_epochs = 0\n')
    t = resolve_run_config("clipping", config_file=cfg).train
    assert (t.batch_size, t.optimizer, t.lr_schedule, t.lr) == (64, "adam", "plateau", 0.002)


@pytest.mark.parametrize("head", ["causalclip", "vib", "univfd"])
def test_existing_heads_keep_adam_and_the_plateau_schedule(head):
    t = resolve_run_config(head).train
    want = "adamw" if head == "univfd" else "adam"  # UnivFD's code trains with AdamW, as before
    assert (t.optimizer, t.lr, t.batch_size, t.epochs, t.weight_decay) == (want, 1e-4, 256, 50, 0.0)
    assert (t.lr_schedule, t.warmup_epochs, t.patience, t.lr_decay_on_plateau, t.min_epochs) == (
        "plateau", 0, 5, True, 5,
    )  # fmt: skip
    assert t.early_stopping
    assert resolve_run_config("causalclip", ablation="none").train == TrainConfig()


def test_every_registered_heads_recipe_is_a_valid_train_config():
    for name in HEADS:
        recipe = head_recipe(name)
        assert set(recipe) <= {f.name for f in dataclasses.fields(TrainConfig)}, name
        assert resolve_run_config(name).train == dataclasses.replace(TrainConfig(), **recipe)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (['train.optimizer="rmsprop"'], "not one of"),
        (['train.lr_schedule="step"'], "not one of"),
        (["momentum=1.0"], "momentum: must be in"),
        (["nesterov=true"], "nesterov: needs optimizer 'sgd'"),
        (['optimizer="sgd"', "momentum=0", "nesterov=true"], "nesterov: needs"),
        (["warmup_epochs=1"], "warmup_epochs: a warm-up needs a fixed schedule"),
        (['lr_schedule="cosine"', "warmup_epochs=-1"], "warmup_epochs: must be >= 0"),
        (['lr_schedule="cosine"', "warmup_epochs=3", "epochs=3"], "train.warmup_epochs=0"),
        (['lr_schedule="cosine"', "warmup_epochs=1", "warmup_lr=0"], "warmup_lr: must be > 0"),
    ],
)
def test_optimiser_and_schedule_errors_name_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message):
        resolve_run_config("causalclip", overrides=overrides)


def test_clipping_with_one_epoch_says_the_warmup_takes_it_all():
    with pytest.raises(ConfigError, match="train.warmup_epochs=0"):
        resolve_run_config("clipping", overrides=["epochs=1"])
    assert resolve_run_config("clipping", overrides=["epochs=1", "warmup_epochs=0"]).train.epochs == 1


# ---------------------------------------------------------------------------------------------------------------
# the optimiser is named in one place: train.optimizer; the head sections' old key maps to it


def test_a_head_sections_optimizer_is_read_as_train_optimizer(tmp_path):
    cfg = tmp_path / "old.toml"
    cfg.write_text('[univfd]\noptimizer = "adam"\ninit_std = 0.05\n')
    rc = resolve_run_config("univfd", config_file=cfg)
    assert (rc.train.optimizer, rc.head_config.init_std) == ("adam", 0.05)
    assert not hasattr(rc.head_config, "optimizer")
    assert resolve_run_config("causalclip", overrides=['causalclip.optimizer="adamw"']).train.optimizer == "adamw"
    cfg.write_text('[train]\noptimizer = "sgd"\n\n[univfd]\noptimizer = "adam"\n')
    with pytest.raises(ConfigError, match=r"old.toml.*keep only train.optimizer"):
        resolve_run_config("univfd", config_file=cfg)
    cfg.write_text('[train]\noptimizer = "adamw"\n\n[univfd]\noptimizer = "adamw"\n')  # agreeing is fine
    assert resolve_run_config("univfd", config_file=cfg).train.optimizer == "adamw"


def test_saved_head_configs_with_the_old_optimizer_key_still_load():
    head = build_head("univfd", dim=4, config={"init_std": 0.02, "optimizer": "adamw"})
    assert head.config.init_std == 0.02
    with pytest.raises(ConfigError, match="unknown key"):
        build_head("univfd", dim=4, config={"init_std": 0.02, "optimiser": "adamw"})  # other keys stay errors


def test_a_run_recorded_before_train_optimizer_compares_equal_to_the_same_run_today():
    """experiment reuses a finished run when its run.json matches: an old univfd run (optimizer in the head
    section, no schedule keys) is the run today's defaults describe; an old clipping run is not today's recipe."""
    today = resolve_run_config("univfd").to_dict()
    old = json.loads(json.dumps(today))
    old["univfd"]["optimizer"] = old["train"].pop("optimizer")
    for key in ("momentum", "nesterov", "lr_schedule", "warmup_epochs", "warmup_lr"):
        del old["train"][key]
    assert recorded_sections(old, "univfd") == recorded_sections(today, "univfd")
    old_clipping = resolve_run_config("clipping", overrides={"optimizer": "adam", "lr_schedule": "plateau",
                                                              "warmup_epochs": 0}).to_dict()  # fmt: skip
    assert recorded_sections(old_clipping, "clipping") != recorded_sections(
        resolve_run_config("clipping").to_dict(), "clipping"
    )
