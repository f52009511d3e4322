"""Synthetic feature sets from the paper's structural causal model (Eq. 1-3), with known ground truth.

    Zc  := f_c(G, eps_c)    causal: a fake-vs-real shift shared by every generator (its size varies a little)
    Znc := f_nc(C, eps_nc)  generator-specific: a fake-only shift on generator k's own block of dimensions
    X   := g(Zc, Znc, eps_x) the blocks laid side by side, plus nuisance dimensions that carry no label

A detector trained on generator 0 can lean on generator 0's specific block, which is strong there and useless
(or misleading: ``specific_flip``) for other generators; only the causal block transfers. Because the causal
dimensions are known, we can also measure how well a learned mask recovers them.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import pandas as pd

from .features import write_feature_set

__all__ = ["SCMSpec", "make_scm_split", "write_scm_benchmark"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class SCMSpec:
    dim: int = 768
    n_causal: int = 32
    n_specific: int = 32  # per generator
    n_generators: int = 6
    causal_shift: float = 0.35  # per causal dimension, in units of the noise std
    causal_jitter: float = 0.2  # generator k's causal shift is causal_shift * (1 +- jitter)
    specific_shift: float = 1.0  # per specific dimension, fakes of generator k on block k
    # For generators k >= 1, the fakes also move on generator 0's block by -flip * specific_shift: a cue that
    # marks fakes in training marks reals elsewhere, as a spurious shortcut does.
    specific_flip: float = 0.5
    nuisance_rank: int = 16  # nuisance dims share a low-rank content factor (correlated, label-free)
    noise: float = 1.0
    seed: int = 0

    def validate(self) -> None:
        used = self.n_causal + self.n_specific * self.n_generators
        if used > self.dim:
            raise ValueError(f"n_causal + n_specific * n_generators = {used} exceeds dim {self.dim}")

    @property
    def causal_dims(self) -> np.ndarray:
        return np.arange(self.n_causal)

    def specific_dims(self, k: int) -> np.ndarray:
        start = self.n_causal + k * self.n_specific
        return np.arange(start, start + self.n_specific)


def _structure(spec: SCMSpec) -> tuple[np.ndarray, np.ndarray]:
    """Generator-level constants drawn once from spec.seed: causal scales (K,) and the nuisance mixing (r, dim)."""
    rng = np.random.default_rng([spec.seed, 7919])
    scales = 1.0 + spec.causal_jitter * rng.uniform(-1, 1, spec.n_generators)
    mixing = rng.normal(0, 1 / np.sqrt(max(spec.nuisance_rank, 1)), (spec.nuisance_rank, spec.dim))
    mixing[:, : spec.n_causal + spec.n_specific * spec.n_generators] = 0.0  # nuisance lives off the labelled blocks
    return scales, mixing


def make_scm_split(spec: SCMSpec, generator: int, n_per_class: int, *, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(X (2n, dim) float32, y (2n,) int64) for one generator: n reals then n fakes."""
    spec.validate()
    scales, mixing = _structure(spec)
    rng = np.random.default_rng([spec.seed, seed, generator])
    n = 2 * n_per_class
    y = np.repeat([0, 1], n_per_class)
    x = rng.normal(0.0, spec.noise, (n, spec.dim))
    if spec.nuisance_rank:
        x += rng.normal(0.0, 1.0, (n, spec.nuisance_rank)) @ mixing * 2.0
    fake = y == 1
    x[np.ix_(fake, spec.causal_dims)] += spec.causal_shift * scales[generator]
    x[np.ix_(fake, spec.specific_dims(generator))] += spec.specific_shift
    if generator != 0 and spec.specific_flip:
        x[np.ix_(fake, spec.specific_dims(0))] -= spec.specific_flip * spec.specific_shift
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
    dtype: str = "float16",
) -> dict[str, Path]:
    """Write train/, val/ (generator ``train_generator``) and test/ (every generator, each with its own reals)
    feature sets under ``root``; n_* are per class. Returns the three folders."""
    root = Path(root)
    meta = {"backbone": {"name": "synthetic-scm", "spec": dataclasses.asdict(spec)}}
    names = [f"gen{k}" for k in range(spec.n_generators)]
    out = {}
    for split, n, gens, seed in (
        ("train", n_train, [train_generator], 1),
        ("val", n_val, [train_generator], 2),
        ("test", n_test, list(range(spec.n_generators)), 3),
    ):
        parts = [make_scm_split(spec, k, n, seed=seed) for k in gens]
        x = np.concatenate([p[0] for p in parts]).astype(dtype)
        df = _frame([names[k] for k in gens], [p[1] for p in parts], split)
        out[split] = write_feature_set(root / split, x, df, meta=meta)
    return out
