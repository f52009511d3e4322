"""The feature-set folder: cached vectors any tool can write, read back memory-mapped and validated.

Layout (documented in docs/guides/extraction.md#feature-sets)::

    DIR/
      meta.json                 {"dim": 768, "dtype": "float16", "backbone": ..., "preprocessing": ..., "shards": [...]}
      features.npy              (N, dim) -- or several row-aligned shards, see below
      samples.parquet | samples.csv   one row per vector, in the same order: path, label (0 real, 1 fake), generator

Shards are taken from ``meta["shards"]`` (file names relative to DIR, in row order) when present, otherwise
``features.npy``, otherwise every ``features-*.npy`` in natural (numeric) order.
"""

from __future__ import annotations

import json
import os
import re
import tokenize
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..core.io import atomic_write, read_json, save_npy

__all__ = [
    "REQUIRED_COLUMNS",
    "FeatureSet",
    "FeatureSetError",
    "open_feature_set",
    "write_feature_set",
]

REQUIRED_COLUMNS = ("path", "label", "generator")
_FLOAT_DTYPES = {"float16", "float32", "float64"}
_FINITE_CHUNK_ROWS = 65536


class FeatureSetError(ValueError):
    """A feature-set folder is missing, malformed or inconsistent; the message names the file."""


@dataclass
class FeatureSet:
    """A validated feature set. Vectors stay memory-mapped; ``take`` copies only the requested rows."""

    root: Path
    meta: dict[str, Any]
    samples: pd.DataFrame
    shards: list[np.ndarray] = field(repr=False)

    def __post_init__(self) -> None:
        self._offsets = np.cumsum([0] + [len(s) for s in self.shards])

    def __len__(self) -> int:
        return int(self._offsets[-1])

    @property
    def dim(self) -> int:
        return int(self.meta["dim"])

    @property
    def labels(self) -> np.ndarray:
        """(N,) int64 labels, 0 real, 1 fake."""
        return self.samples["label"].to_numpy(dtype=np.int64)

    @property
    def generators(self) -> np.ndarray:
        return self.samples["generator"].to_numpy(dtype=object)

    @property
    def paths(self) -> np.ndarray:
        return self.samples["path"].to_numpy(dtype=object)

    def take(self, indices: np.ndarray | Sequence[int]) -> np.ndarray:
        """Rows ``indices`` (any order) as an (n, dim) array of the stored dtype."""
        idx = np.asarray(indices, dtype=np.int64)
        if len(self.shards) == 1:
            return np.asarray(self.shards[0][idx])
        out = np.empty((len(idx), self.dim), dtype=self.shards[0].dtype)
        which = np.searchsorted(self._offsets, idx, side="right") - 1
        for s in np.unique(which):
            sel = which == s
            out[sel] = self.shards[s][idx[sel] - self._offsets[s]]
        return out

    def iter_chunks(self, rows: int = _FINITE_CHUNK_ROWS) -> Iterator[tuple[int, np.ndarray]]:
        """Yield (first_row, block) over all vectors in order, never holding more than ``rows`` rows."""
        for shard, start in zip(self.shards, self._offsets[:-1], strict=True):
            for i in range(0, len(shard), rows):
                yield int(start + i), np.asarray(shard[i : i + rows])

    def shard_file(self, row: int) -> str:
        """The name of the shard file holding global row ``row`` (for error messages)."""
        s = int(np.searchsorted(self._offsets, row, side="right") - 1)
        return self.meta["_shard_files"][s]


def _natural_key(name: str) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def _read_meta(root: Path) -> dict[str, Any]:
    path = root / "meta.json"
    if not path.is_file():
        raise FeatureSetError(f"{path}: missing; a feature set needs meta.json with at least 'dim' and 'dtype'")
    meta = read_json(path, FeatureSetError)
    if not isinstance(meta, dict):
        raise FeatureSetError(f"{path}: the top level must be an object")
    for key in ("dim", "dtype"):
        if key not in meta:
            raise FeatureSetError(f"{path}: missing required key {key!r}")
    if not isinstance(meta["dim"], int) or isinstance(meta["dim"], bool) or meta["dim"] <= 0:
        raise FeatureSetError(f"{path}: 'dim' must be a positive integer, got {meta['dim']!r}")
    if not isinstance(meta["dtype"], str) or meta["dtype"] not in _FLOAT_DTYPES:
        raise FeatureSetError(f"{path}: 'dtype' must be one of {sorted(_FLOAT_DTYPES)}, got {meta['dtype']!r}")
    return meta


def _shard_names(root: Path, meta: dict[str, Any]) -> list[str]:
    if "shards" in meta:
        names = meta["shards"]
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            raise FeatureSetError(f"{root / 'meta.json'}: 'shards' must be a non-empty list of file names")
        return names
    if (root / "features.npy").is_file():
        return ["features.npy"]
    names = sorted((p.name for p in root.glob("features-*.npy")), key=_natural_key)
    if not names:
        raise FeatureSetError(f"{root}: no vectors found (expected features.npy, features-*.npy, or meta 'shards')")
    return names


def _open_shard(path: Path, dim: int, dtype: str) -> np.ndarray:
    if not path.is_file():
        raise FeatureSetError(f"{path}: shard listed but missing")
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    # a damaged header reaches numpy's literal parser: SyntaxError or tokenize.TokenError (fuzzing found both)
    except (ValueError, OSError, EOFError, SyntaxError, tokenize.TokenError) as exc:
        raise FeatureSetError(f"{path}: not a readable .npy array: {exc}") from exc
    if arr.ndim != 2 or arr.shape[1] != dim:
        raise FeatureSetError(f"{path}: expected shape (N, {dim}) from meta.json, got {arr.shape}")
    if arr.dtype != np.dtype(dtype):
        raise FeatureSetError(f"{path}: dtype {arr.dtype} does not match meta.json dtype {dtype}")
    return arr


def _read_samples(root: Path) -> tuple[pd.DataFrame, Path]:
    pq, csv = root / "samples.parquet", root / "samples.csv"
    if pq.is_file() and csv.is_file():
        raise FeatureSetError(f"{root}: both samples.parquet and samples.csv exist; keep exactly one")
    if pq.is_file():
        path = pq
        try:
            df = pd.read_parquet(pq)
        except Exception as exc:  # pyarrow raises several unrelated types for a damaged file
            raise FeatureSetError(f"{pq}: cannot read Parquet: {exc}") from exc
    elif csv.is_file():
        path = csv
        try:
            df = pd.read_csv(csv, dtype={"path": str, "generator": str}, keep_default_na=False, na_values=[""])
        except (ValueError, OSError, pd.errors.ParserError) as exc:
            raise FeatureSetError(f"{csv}: cannot read CSV: {exc}") from exc
    else:
        raise FeatureSetError(f"{root}: no samples table (expected samples.parquet or samples.csv)")
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise FeatureSetError(f"{path}: missing column(s) {missing}; found {list(df.columns)}")
    for col in ("path", "generator"):
        bad = df[col].isna().to_numpy()
        if bad.any():
            raise FeatureSetError(
                f"{path}: column {col!r} is empty in {int(bad.sum())} row(s), first at row {int(np.argmax(bad))}"
            )
    labels = pd.to_numeric(df["label"], errors="coerce")
    bad = ~labels.isin([0, 1]).to_numpy()
    if bad.any():
        first = int(np.argmax(bad))
        values = sorted({str(v) for v in df["label"][bad].unique()[:5]})
        raise FeatureSetError(
            f"{path}: column 'label' must be 0 (real) or 1 (fake); {int(bad.sum())} row(s) are not, "
            f"first at row {first}, values {values}"
        )
    df = df.copy()
    df["label"] = labels.astype(np.int64)
    df["path"] = df["path"].astype(str)
    df["generator"] = df["generator"].astype(str)
    return df.reset_index(drop=True), path


def open_feature_set(root: str | os.PathLike[str], *, check_finite: bool = True) -> FeatureSet:
    """Open and validate the feature set in ``root``; vectors are memory-mapped, not read into memory.

    Raises FeatureSetError (naming the offending file) for a missing/invalid meta.json, shards whose shape or
    dtype disagree with it, a samples table with missing columns or labels outside {0, 1}, a row-count mismatch,
    and (with ``check_finite``, scanned in bounded chunks) NaN or infinite vectors.
    """
    root = Path(root)
    if not root.is_dir():
        raise FeatureSetError(f"{root}: not a directory (expected a feature-set folder)")
    meta = _read_meta(root)
    names = _shard_names(root, meta)
    shards = [_open_shard(root / n, meta["dim"], meta["dtype"]) for n in names]
    samples, samples_path = _read_samples(root)
    n_vec = sum(len(s) for s in shards)
    if n_vec != len(samples):
        raise FeatureSetError(
            f"{samples_path}: {len(samples)} rows, but the vectors ({', '.join(names)}) hold {n_vec}; they must be row-aligned"
        )
    meta = dict(meta)
    meta["_shard_files"] = names
    fs = FeatureSet(root=root, meta=meta, samples=samples, shards=shards)
    if check_finite:
        for start, block in fs.iter_chunks():
            ok = np.isfinite(block).all(axis=1)
            if not ok.all():
                bad = np.flatnonzero(~ok) + start
                raise FeatureSetError(
                    f"{root / fs.shard_file(int(bad[0]))}: {len(bad)}+ vector(s) contain NaN or inf, first at row "
                    f"{int(bad[0])} ({samples['path'].iloc[int(bad[0])]})"
                )
    return fs


def write_feature_set(
    root: str | os.PathLike[str],
    features: np.ndarray | Sequence[np.ndarray],
    samples: pd.DataFrame,
    *,
    meta: dict[str, Any] | None = None,
    samples_format: str = "parquet",
) -> Path:
    """Write a feature set: one array (-> features.npy) or a list of row-aligned shards (-> features-00000.npy...).

    ``samples`` needs the columns path, label, generator (extra columns are kept). ``meta`` adds keys such as
    backbone and preprocessing; dim and dtype are taken from the arrays. Every file is written atomically. The
    result is re-opened and validated before returning, so a set this writes is always readable.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    shards = [features] if isinstance(features, np.ndarray) else list(features)
    if not shards or any(s.ndim != 2 for s in shards):
        raise FeatureSetError(f"{root}: features must be one or more 2-D arrays")
    dims, dtypes = {s.shape[1] for s in shards}, {str(s.dtype) for s in shards}
    if len(dims) != 1 or len(dtypes) != 1:
        raise FeatureSetError(f"{root}: shards disagree on dim {sorted(dims)} or dtype {sorted(dtypes)}")
    names = ["features.npy"] if len(shards) == 1 else [f"features-{i:05d}.npy" for i in range(len(shards))]
    for name, arr in zip(names, shards, strict=True):
        atomic_write(root / name, lambda p, a=arr: save_npy(p, a))
    table = samples.reset_index(drop=True)
    if samples_format == "parquet":
        atomic_write(root / "samples.parquet", lambda p: table.to_parquet(p, index=False))
        stale = root / "samples.csv"
    elif samples_format == "csv":
        atomic_write(root / "samples.csv", lambda p: table.to_csv(p, index=False))
        stale = root / "samples.parquet"
    else:
        raise ValueError(f"samples_format must be 'parquet' or 'csv', got {samples_format!r}")
    if stale.exists():
        stale.unlink()
    full_meta = {**(meta or {}), "dim": dims.pop(), "dtype": dtypes.pop(), "count": int(sum(len(s) for s in shards))}
    if len(shards) > 1:
        full_meta["shards"] = names
    text = json.dumps(full_meta, indent=2, sort_keys=True) + "\n"
    atomic_write(root / "meta.json", lambda p: p.write_text(text, encoding="utf-8"))
    open_feature_set(root, check_finite=False)
    return root
