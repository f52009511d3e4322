"""The SCM feature generator: deterministic, and its blocks behave as Eq. 1-3 say."""

from __future__ import annotations

import numpy as np
import pytest

from causalclip.features.synthetic import SCMSpec, make_scm_split

SPEC = SCMSpec(dim=64, n_causal=8, n_specific=8, n_generators=3, nuisance_rank=4)


def test_deterministic_and_seed_dependent():
    a, ya = make_scm_split(SPEC, 1, 50, seed=0)
    b, yb = make_scm_split(SPEC, 1, 50, seed=0)
    c, _ = make_scm_split(SPEC, 1, 50, seed=1)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(ya, yb)
    assert not np.array_equal(a, c)


def test_blocks_carry_the_label_where_the_model_says():
    x, y = make_scm_split(SPEC, 1, 4000, seed=0)
    shift = x[y == 1].mean(0) - x[y == 0].mean(0)
    causal = shift[SPEC.causal_dims]
    own = shift[SPEC.specific_dims(1)]
    train_gen = shift[SPEC.specific_dims(0)]
    other = shift[SPEC.specific_dims(2)]
    nuisance = shift[SPEC.n_causal + SPEC.n_specific * SPEC.n_generators :]
    assert (causal > 0.15).all()  # causal shift present for every generator
    assert own.mean() == pytest.approx(SPEC.specific_shift, abs=0.1)  # its own artefact
    assert train_gen.mean() == pytest.approx(-SPEC.specific_flip * SPEC.specific_shift, abs=0.1)  # flipped cue
    assert np.abs(other).max() < 0.15 and np.abs(nuisance).max() < 0.15  # no label elsewhere


def test_spec_validation():
    with pytest.raises(ValueError, match="exceeds dim"):
        make_scm_split(SCMSpec(dim=10, n_causal=8, n_specific=8, n_generators=3), 0, 5, seed=0)


def test_family_axis_separates_generators_by_their_coefficient():
    """Each generator's fakes move along the shared family block by d' = family_separation * cos(pi k / (K - 1))
    (computed here from the formula, not from SCMSpec): generator 0 at +d', the last at -d', the others
    cosine-spaced in between, so different generators differ on the family axis; the same generator gives the
    same shift on every draw (seed), and the shift is spread evenly over the block's dimensions."""
    k_gen, n_fam, sep = 5, 8, 2.5
    spec = SCMSpec(dim=96, n_causal=8, n_specific=8, n_generators=k_gen, nuisance_rank=4, family_separation=sep)
    family = np.arange(8, 8 + n_fam)  # layout [causal | family | specific... | nuisance]
    np.testing.assert_array_equal(spec.family_dims, family)

    def family_shift(k, seed):
        x, y = make_scm_split(spec, k, 3000, seed=seed)
        per_dim = x[y == 1][:, family].mean(0) - x[y == 0][:, family].mean(0)
        return per_dim, per_dim.mean() * np.sqrt(n_fam) / spec.noise  # per-dimension shifts, block d'

    expected = sep * np.cos(np.pi * np.arange(k_gen) / (k_gen - 1))  # [2.5, 1.77, 0, -1.77, -2.5]
    measured = []
    for k in range(k_gen):
        per_dim, d = family_shift(k, seed=0)
        _, d_again = family_shift(k, seed=1)
        assert d == pytest.approx(expected[k], abs=0.12), f"generator {k}: family d' {d:.3f}"
        assert d_again == pytest.approx(d, abs=0.15), f"generator {k}: family d' {d:.3f} then {d_again:.3f}"
        # evenly spread: every dimension carries d' / sqrt(n_fam) (std of one dim's estimate ~0.026)
        np.testing.assert_allclose(per_dim, expected[k] / np.sqrt(n_fam), atol=0.12)
        measured.append(d)
    # different generators sit at different places on the axis: pairwise at least 0.7 apart, in order
    gaps = np.abs(np.subtract.outer(measured, measured))[~np.eye(k_gen, dtype=bool)]
    assert gaps.min() > 0.5, np.round(measured, 3)
    assert np.all(np.diff(measured) < 0)
