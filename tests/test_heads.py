"""The contract every registered head meets, and CausalCLIP's alternating optimisation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from causalclip import HEADS, build_head
from causalclip.core.config import ConfigError
from causalclip.heads.causalclip import ABLATIONS, CausalCLIPConfig

DIM = 24


def batch(n=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    e = torch.randn(n, DIM, generator=g) + y[:, None].float()
    return e, y


def run_step(head, e, y, lr=1e-2):
    """One training step as the loop does it; returns {group: parameter values before/after}."""
    groups = head.param_groups()
    opts = {g: torch.optim.SGD(ps, lr=lr) for g, ps in groups.items()}
    order = []
    for group, loss, _logs in head.training_phases(e, y):
        opts[group].zero_grad(set_to_none=True)
        loss.backward(inputs=groups[group])
        opts[group].step()
        order.append(group)
    return order


# Heads built on the training set's backbone (clipping: CLIP's text tower) meet the same contract in
# tests/test_clipping.py, with the tiny CLIP they need.
ON_FEATURES_ALONE = sorted(n for n, cls in HEADS.items() if not cls.uses_feature_set)


@pytest.mark.parametrize("name", ON_FEATURES_ALONE)
def test_head_contract(name):
    torch.manual_seed(0)
    head = build_head(name, dim=DIM)
    e, y = batch()
    head.eval()
    out = head(e)
    assert out.shape == (len(e),) and torch.isfinite(out).all()
    # inference is deterministic (no Gumbel noise, no dropout, VIB predicts with mu)
    assert torch.equal(out, head(e))
    # groups are disjoint and cover every trainable parameter
    groups = head.param_groups()
    ids = [id(p) for ps in groups.values() for p in ps]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in head.parameters() if p.requires_grad}


@pytest.mark.parametrize("name", ON_FEATURES_ALONE)
def test_every_trainable_parameter_gets_a_gradient(name):
    torch.manual_seed(0)
    head = build_head(name, dim=DIM)
    head.train()
    e, y = batch()
    groups = head.param_groups()
    got = set()
    for group, loss, _ in head.training_phases(e, y):
        grads = torch.autograd.grad(loss, groups[group], allow_unused=True)
        for p, gr in zip(groups[group], grads, strict=True):
            if gr is not None and torch.isfinite(gr).all() and gr.abs().sum() > 0:
                got.add(id(p))
    missing = [n for n, p in head.named_parameters() if id(p) not in got]
    assert not missing, f"no gradient for {missing}"


@pytest.mark.parametrize("ablation", sorted(ABLATIONS))
def test_each_phase_changes_only_its_own_parameters(ablation):
    torch.manual_seed(0)
    head = build_head("causalclip", dim=DIM, config=ABLATIONS[ablation])
    head.train()
    e, y = batch()
    groups = head.param_groups()
    owner = {id(p): g for g, ps in groups.items() for p in ps}
    names = dict((id(p), n) for n, p in head.named_parameters())
    for group, loss, _ in head.training_phases(e, y):
        before = {id(p): p.detach().clone() for p in head.parameters()}
        opt = torch.optim.SGD(groups[group], lr=0.1)
        head.zero_grad(set_to_none=True)
        loss.backward(inputs=groups[group])
        # only the phase's own group received gradients ...
        for p in head.parameters():
            if owner[id(p)] != group:
                assert p.grad is None, f"{group} phase gave a gradient to {names[id(p)]}"
        opt.step()
        # ... and only its parameters moved (all of them, since every one has a gradient)
        for p in head.parameters():
            moved = not torch.equal(before[id(p)], p.detach())
            assert moved == (owner[id(p)] == group), f"{group} phase: {names[id(p)]} moved={moved}"


def test_phase_order_and_ablation_structure():
    e, y = batch()
    expected = {
        "full": ["adversary", "classifier", "mask"],
        "masking": ["adversary", "classifier", "mask"],
        "factorization": ["classifier", "mask"],
        "none": ["classifier"],
    }
    for name, order in expected.items():
        head = build_head("causalclip", dim=DIM, config=ABLATIONS[name])
        assert run_step(head, e, y) == order
        assert hasattr(head, "d") == ABLATIONS[name]["adversarial_masking"]
        assert hasattr(head, "mask_net") == (name != "none")
    # factorization-only uses L1 and HSIC; masking-only does not
    logs_f = [
        logs
        for _, _, logs in build_head("causalclip", dim=DIM, config=ABLATIONS["factorization"]).training_phases(e, y)
    ]
    logs_m = [
        logs for _, _, logs in build_head("causalclip", dim=DIM, config=ABLATIONS["masking"]).training_phases(e, y)
    ]
    dep = CausalCLIPConfig().independence  # the logged independence term: "nhsic" by default, "hsic" as in Eq. 10
    assert dep in logs_f[-1] and "l1" in logs_f[-1] and "inv" not in logs_f[0]
    assert dep not in logs_m[-1] and "inv" in logs_m[1]


def test_ablation_none_is_a_linear_probe_on_e():
    head = build_head("causalclip", dim=DIM, config={**ABLATIONS["none"], "classifier_hidden": 0})
    assert [n for n, _ in head.named_parameters()] == ["h.weight", "h.bias"]
    e, _ = batch()
    ref = e @ head.h.weight.T + head.h.bias
    torch.testing.assert_close(head(e), ref.squeeze(-1))


@pytest.mark.parametrize("bias", [-60.0, 60.0])
@pytest.mark.parametrize("noise", ["logistic", "gumbel", "none"])
def test_saturated_mask_gives_no_nan(bias, noise):
    """All-0 or all-1 masks (zero median distance in HSIC for the empty part) keep losses and gradients finite."""
    torch.manual_seed(0)
    head = build_head("causalclip", dim=DIM, config={"mask_bias_init": bias, "noise": noise, "tau": 0.1})
    head.train()
    e, y = batch()
    m, _, _ = head.split(e, stochastic=True)
    assert (m < 1e-6).all() if bias < 0 else (m > 1 - 1e-6).all()
    groups = head.param_groups()
    for group, loss, logs in head.training_phases(e, y):
        assert torch.isfinite(loss), (group, loss)
        assert all(torch.isfinite(v) for v in logs.values())
        loss.backward(inputs=groups[group])
        for p in groups[group]:
            assert p.grad is None or torch.isfinite(p.grad).all()


def test_mask_definition_matches_equation_5():
    torch.manual_seed(0)
    head = build_head("causalclip", dim=DIM, config={"tau": 0.7})
    e, _ = batch()
    m, zc, znc = head.split(e, stochastic=False)
    torch.testing.assert_close(m, torch.sigmoid(head.mask_net(e) / 0.7))
    torch.testing.assert_close(zc + znc, e)
    torch.testing.assert_close(zc, m * e)


def test_noise_distributions():
    """Logistic noise (g1 - g2) has mean 0 and variance pi^2/3; the literal Gumbel has mean ~0.5772."""
    from causalclip.heads.causalclip import _sample_noise

    torch.manual_seed(0)
    like = torch.zeros(())
    g = _sample_noise(torch.Size([200_000]), "logistic", like)
    assert abs(g.mean().item()) < 0.03
    assert g.var().item() == pytest.approx(np.pi**2 / 3, rel=0.05)
    gum = _sample_noise(torch.Size([200_000]), "gumbel", like)
    assert gum.mean().item() == pytest.approx(0.5772, abs=0.02)
    assert torch.equal(_sample_noise(torch.Size([5]), "none", like), torch.zeros(5))


def test_paper_vs_uniform_adversarial_objective():
    """'paper' subtracts alpha * BCE(d(Znc), y); 'uniform' adds alpha * CE(d(Znc), 0.5)."""
    from causalclip.heads.losses import bce, uniform_bce

    e, y = batch()
    for mode in ("paper", "uniform"):
        torch.manual_seed(0)
        head = build_head(
            "causalclip", dim=DIM, config={"adv_loss": mode, "alpha": 0.5, "beta": 0.0, "lambda1": 0.0, "lambda2": 0.0}
        )
        torch.manual_seed(1)
        *_, (group, total, logs) = list(head.training_phases(e, y))
        torch.manual_seed(1)
        m, zc, znc = head.split(e, stochastic=True)
        d = head.d(znc).squeeze(-1)
        expect = bce(head.h(zc).squeeze(-1), y) + (-0.5 * bce(d, y) if mode == "paper" else 0.5 * uniform_bce(d))
        assert group == "mask"
        torch.testing.assert_close(total, expect)


def test_config_validation():
    with pytest.raises(ConfigError, match="tau"):
        build_head("causalclip", dim=4, config={"tau": 0.0})
    with pytest.raises(ConfigError, match="unknown key"):
        build_head("causalclip", dim=4, config={"taux": 1.0})
    with pytest.raises(ConfigError, match="noise"):
        build_head("causalclip", dim=4, config={"noise": "normal"})
    with pytest.raises(KeyError, match="unknown head"):
        build_head("nope", dim=4)
    assert CausalCLIPConfig().noise == "logistic"


def test_vib_matches_reference_layout():
    head = build_head("vib", dim=768)
    shapes = [tuple(p.shape) for p in head.parameters()]
    assert shapes == [(1024, 768), (1024,), (1024, 1024), (1024,), (512, 1024), (512,), (1, 256), (1,)]
    e = torch.randn(4, 768)
    head.eval()  # no dropout
    mu, std = head.encode(e)
    raw = head.encoder(e)
    torch.testing.assert_close(std, torch.nn.functional.softplus(raw[:, 256:] - 5))
    head.eval()
    torch.testing.assert_close(head(e), head.fc(mu).squeeze(-1))


def test_univfd_init():
    torch.manual_seed(0)
    head = build_head("univfd", dim=768)
    assert head.fc.weight.std().item() == pytest.approx(0.02, rel=0.1)
    assert head.fc.bias.item() == 0.0
    assert dict(type(head).train_recipe) == {"optimizer": "adamw"}  # UnivFD trains with AdamW (training recipe)


def _bce_numpy(logits: np.ndarray, y: np.ndarray) -> float:
    p = 1 / (1 + np.exp(-logits))
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def test_counterfactual_kl_equals_the_bernoulli_kl_computed_by_hand(monkeypatch):
    """L_inv (Eq. 11-12) on a batch where dropping dimensions changes h's output: it is positive and equals the
    Bernoulli KL between sigmoid(h(Zc)) and sigmoid(h(Zc * keep)), computed in NumPy from the keep mask the head
    drew, both as logged in the classifier phase and inside the classifier and mask (Eq. 13) losses."""
    alpha, beta, p_drop = 0.5, 2.0, 0.5
    torch.manual_seed(0)
    # noise "none" and no L1/HSIC: Zc is a deterministic function of E and Eq. 13 has only three terms, with the
    # adversarial term as printed (-alpha L_adv), whatever the default adv_loss.
    cfg = {"noise": "none", "p": p_drop, "alpha": alpha, "beta": beta, "lambda1": 0.0, "lambda2": 0.0}
    cfg["adv_loss"] = "paper"
    head = build_head("causalclip", dim=DIM, config=cfg).double()
    with torch.no_grad():
        head.h.weight.normal_(0.0, 1.0)  # large logits: dropping half of Zc moves h's output a lot
    head.train()
    e, y = batch()
    e = e.double()
    draws = []
    rand_like = torch.rand_like

    def recording_rand_like(*args, **kwargs):
        u = rand_like(*args, **kwargs)
        draws.append(u)
        return u

    monkeypatch.setattr(torch, "rand_like", recording_rand_like)
    phases = {group: (loss, logs) for group, loss, logs in head.training_phases(e, y)}
    monkeypatch.undo()
    assert len(draws) == 1, "B is drawn once per step"
    keep = (draws[0] >= p_drop).double().numpy()  # keep = 1 - B, B ~ Bernoulli(p)

    # By hand, from the weights: M = sigmoid(MLP(E)) (tau 1, no noise), h and d are read as plain matrices.
    with torch.no_grad():
        m = torch.sigmoid(head.mask_net(e)).numpy()
    en, yn = e.numpy(), y.numpy().astype(float)
    zc, znc = m * en, (1 - m) * en
    w, b = head.h.weight.detach().numpy()[0], head.h.bias.detach().numpy()[0]
    a, c = zc @ w + b, (zc * keep) @ w + b  # h(Zc), h(Zc * keep)
    assert np.abs(a - c).mean() > 0.5  # the intervention changes the prediction
    pa, pc = 1 / (1 + np.exp(-a)), 1 / (1 + np.exp(-c))
    kl = float(np.mean(pa * np.log(pa / pc) + (1 - pa) * np.log((1 - pa) / (1 - pc))))
    assert kl > 0.05

    cls_loss, cls_logs = phases["classifier"]
    assert cls_logs["inv"].item() == pytest.approx(kl, rel=1e-9)
    assert cls_loss.item() == pytest.approx(_bce_numpy(a, yn) + beta * kl, rel=1e-9)
    with torch.no_grad():
        d_logits = head.d(torch.from_numpy(znc)).squeeze(-1).numpy()
    total, _ = phases["mask"]
    expect = _bce_numpy(a, yn) - alpha * _bce_numpy(d_logits, yn) + beta * kl
    assert total.item() == pytest.approx(expect, rel=1e-9)
