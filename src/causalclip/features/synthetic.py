"""Synthetic feature sets from the paper's structural causal model (Eq. 1-3), with known ground truth.

    Zc  := f_c(G, eps_c)     causal: a fake-vs-real shift that every generator shares (its size varies a little)
    Znc := f_nc(C, eps_nc)   non-causal, two kinds of generator-specific factor C:
                               - own block: fakes of generator k move on k's own block (useless for other generators)
                               - family axis: fakes move by c_k = cos(pi * k / (K - 1)) on a shared block, so a
                                 cue that marks generator 0's fakes marks its relatives' fakes less and the last
                                 generator's *reals* (GAN high-frequency excess vs diffusion over-smoothing)
    X   := g(Zc, Znc, eps_x) the blocks side by side (g = identity), or rotated by a fixed random orthogonal
                             matrix (``mixing="orthogonal"``), plus label-free nuisance dims (low-rank content)

Strengths are separations d' (the distance between the real and fake means of a block, in units of the noise
std), spread evenly over the block's dimensions, so a spec with fewer dimensions is as hard as a larger one
(``causal_shift``, ``family_shift`` and ``specific_shift`` give the resulting per-dimension shifts). The label is
effect-coded: every factor moves fakes by +shift/2 and reals by -shift/2. Layout of the latent dimensions:
[causal | family | specific block of generator 0 | ... | of generator K-1 | nuisance].

A detector trained on one generator sees three predictive cues of equal per-dimension strength (causal, family,
its own block); only the causal one transfers. Nothing in one generator's data says which cue is which: that is
the question the benchmark asks of each head. Because the blocks are known, we can also measure how well a
learned per-dimension mask recovers the causal dimensions (only meaningful with ``mixing="identity"``).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from .featureset import write_feature_set

__all__ = ["SCMSpec", "make_scm_split", "write_scm_benchmark"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class SCMSpec:
    dim: int = 768
    n_causal: int = 32
    n_family: int | None = None  # None: the same as n_specific
    n_specific: int = 32  # per generator
    n_generators: int = 6
    causal_separation: float = 2.5  # d' of the causal block for a generator with scale 1
    causal_jitter: float = 0.2  # generator k's causal separation is scaled by 1 +- jitter (uniform, seeded)
    family_separation: float = 2.5  # d' of the family block at |c_k| = 1 (generator 0 and the last one)
    specific_separation: float = 2.5  # d' of generator k's own block, for generator k
    # The original single-axis variant of the family cue: fakes of every generator k != 0 also move on generator
    # 0's block by -specific_flip * specific_shift (0 = off; the family block generalises it).
    specific_flip: float = 0.0
    nuisance_rank: int = 16  # nuisance dims share a low-rank content factor (correlated, label-free)
    nuisance_scale: float = 2.0  # std of that content factor's contribution, relative to the noise
    noise: float = 1.0
    # g in Eq. 3: "identity" keeps every factor on its own dims (the best case for a per-dimension mask);
    # "orthogonal" rotates the whole vector by a fixed random orthogonal matrix, so each feature mixes all factors.
    mixing: Literal["identity", "orthogonal"] = "identity"
    seed: int = 0

    def validate(self) -> None:
        used = self.n_causal + self.family_size + self.n_specific * self.n_generators
        if used > self.dim:
            raise ValueError(f"n_causal + n_family + n_specific * n_generators = {used} exceeds dim {self.dim}")
        if self.n_generators < 2:
            raise ValueError(f"n_generators must be >= 2, got {self.n_generators}")
        if self.mixing not in ("identity", "orthogonal"):
            raise ValueError(f"mixing must be 'identity' or 'orthogonal', got {self.mixing!r}")

    # Ground-truth blocks, in latent coordinates (= feature coordinates when mixing == "identity").
    @property
    def causal_dims(self) -> np.ndarray:
        return np.arange(self.n_causal)

    @property
    def family_size(self) -> int:
        return self.n_specific if self.n_family is None else self.n_family

    @property
    def family_dims(self) -> np.ndarray:
        return np.arange(self.n_causal, self.n_causal + self.family_size)

    def specific_dims(self, k: int) -> np.ndarray:
        start = self.n_causal + self.family_size + k * self.n_specific
        return np.arange(start, start + self.n_specific)

    @property
    def nuisance_dims(self) -> np.ndarray:
        return np.arange(self.n_causal + self.family_size + self.n_specific * self.n_generators, self.dim)

    # Per-dimension shifts (difference of the fake and real means on one dimension, for a generator with scale 1).
    @property
    def causal_shift(self) -> float:
        return self.noise * _per_dim(self.causal_separation, self.n_causal)

    @property
    def family_shift(self) -> float:
        return self.noise * _per_dim(self.family_separation, self.family_size)

    @property
    def specific_shift(self) -> float:
        return self.noise * _per_dim(self.specific_separation, self.n_specific)

    def family_coefficient(self, k: int) -> float:
        """c_k in [-1, 1]: +1 for generator 0, -1 for the last one, cosine-spaced in between."""
        return float(np.cos(np.pi * k / (self.n_generators - 1)))


def _per_dim(separation: float, n: int) -> float:
    return separation / np.sqrt(n) if n else 0.0


def _structure(spec: SCMSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Generator-level constants drawn once from spec.seed: causal scales (K,), the nuisance loading (r, dim) and
    the orthogonal mixing (dim, dim) or None."""
    rng = np.random.default_rng([spec.seed, 7919])
    scales = 1.0 + spec.causal_jitter * rng.uniform(-1, 1, spec.n_generators)
    loading = rng.normal(0, 1 / np.sqrt(max(spec.nuisance_rank, 1)), (spec.nuisance_rank, spec.dim))
    loading[:, : spec.dim - len(spec.nuisance_dims)] = 0.0  # nuisance lives off the labelled blocks
    rotation = None
    if spec.mixing == "orthogonal":
        q, r = np.linalg.qr(rng.normal(size=(spec.dim, spec.dim)))
        rotation = q * np.sign(np.diag(r))  # Haar-distributed
    return scales, loading, rotation


def make_scm_split(spec: SCMSpec, generator: int, n_per_class: int, *, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(X (2n, dim) float32, y (2n,) int64) for one generator: n reals then n fakes."""
    spec.validate()
    if not 0 <= generator < spec.n_generators:
        raise ValueError(f"generator must be in [0, {spec.n_generators}), got {generator}")
    scales, loading, rotation = _structure(spec)
    rng = np.random.default_rng([spec.seed, seed, generator])
    n = 2 * n_per_class
    y = np.repeat([0, 1], n_per_class)
    x = rng.normal(0.0, spec.noise, (n, spec.dim))
    if spec.nuisance_rank:
        x += rng.normal(0.0, spec.nuisance_scale, (n, spec.nuisance_rank)) @ loading
    # Effect coding: each factor moves fakes by +shift/2 and reals by -shift/2, so every generator's two classes
    # are symmetric about the origin and a linear head's optimal bias is ~0 (see docs/reports/scm-benchmark.md#why-this-design).
    sign = (y - 0.5)[:, None]
    x[:, spec.causal_dims] += sign * (spec.causal_shift * scales[generator])
    x[:, spec.family_dims] += sign * (spec.family_shift * spec.family_coefficient(generator))
    x[:, spec.specific_dims(generator)] += sign * spec.specific_shift
    if generator != 0 and spec.specific_flip:
        x[:, spec.specific_dims(0)] -= sign * (spec.specific_flip * spec.specific_shift)
    if rotation is not None:
        x = x @ rotation
    return x.astype(np.float32), y


def _frame(names: list[str], ys: list[np.ndarray], split: str) -> pd.DataFrame:
    rows = []
    for name, y in zip(names, ys, strict=True):
        for i, lab in enumerate(y):
            rows.append((f"scm/{split}/{name}/{'1_fake' if lab else '0_real'}/{i:06d}", int(lab), name))
    return pd.DataFrame(rows, columns=["path", "label", "generator"])


def write_scm_benchmark(
    root: str | os.PathLike[str],
    spec: SCMSpec,
    *,
    n_train: int,
    n_val: int,
    n_test: int,
    train_generator: int = 0,
    heldout_val_generators: Sequence[int] = (),
    dtype: str = "float16",
) -> dict[str, Path]:
    """Write train/, val/ (generator ``train_generator``) and test/ (every generator, each with its own reals)
    feature sets under ``root``; n_* are per class. With ``heldout_val_generators``, also val_heldout/: those
    generators' validation data (drawn like val/), for leave-one-generator-out model selection. Returns the
    folders by split name."""
    root = Path(root)
    spec.validate()
    heldout = [int(k) for k in heldout_val_generators]
    if train_generator in heldout:
        raise ValueError(f"the training generator {train_generator} cannot also be a held-out validation generator")
    meta = {"backbone": {"name": "synthetic-scm", "spec": dataclasses.asdict(spec)}}
    names = [f"gen{k}" for k in range(spec.n_generators)]
    splits = [
        ("train", n_train, [train_generator], 1),
        ("val", n_val, [train_generator], 2),
        ("test", n_test, list(range(spec.n_generators)), 3),
    ]
    if heldout:
        splits.append(("val_heldout", n_val, heldout, 2))
    out = {}
    for split, n, gens, seed in splits:
        parts = [make_scm_split(spec, k, n, seed=seed) for k in gens]
        x = np.concatenate([p[0] for p in parts]).astype(dtype)
        df = _frame([names[k] for k in gens], [p[1] for p in parts], split)
        out[split] = write_feature_set(root / split, x, df, meta=meta)
    return out
