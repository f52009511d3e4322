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
