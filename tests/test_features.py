"""The feature-set folder: what any tool may write is read back; what is malformed is refused by name."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from causalclip import FeatureSetError, open_feature_set, write_feature_set
from causalclip.cli.main import main
from conftest import make_samples


def hand_written(root, x, df, meta=None, csv=True):
    """A feature set written without causalclip: features.npy + samples.csv + meta.json."""
    root.mkdir(parents=True, exist_ok=True)
    np.save(root / "features.npy", x)
    if csv:
        df.to_csv(root / "samples.csv", index=False)
    else:
        df.to_parquet(root / "samples.parquet", index=False)
    (root / "meta.json").write_text(json.dumps(meta or {"dim": x.shape[1], "dtype": str(x.dtype)}))
    return root


def test_minimal_hand_written_set_is_accepted_and_memory_mapped(tmp_path):
    x = np.random.default_rng(0).normal(size=(10, 6)).astype(np.float16)
    df = make_samples(10)
    fs = open_feature_set(hand_written(tmp_path / "fs", x, df))
    assert len(fs) == 10 and fs.dim == 6
    assert isinstance(fs.shards[0], np.memmap)
    np.testing.assert_array_equal(fs.take([3, 1, 7]), x[[3, 1, 7]])
    np.testing.assert_array_equal(fs.labels, df["label"].to_numpy())
    assert list(fs.paths) == list(df["path"])


def test_roundtrip_sharded_and_natural_order(tmp_path):
    rng = np.random.default_rng(1)
    shards = [rng.normal(size=(n, 4)).astype(np.float32) for n in (3, 5, 2, 4, 1, 6, 2, 3, 2, 1, 2)]
    x = np.concatenate(shards)
    df = make_samples(len(x))
    root = write_feature_set(tmp_path / "s", shards, df)
    fs = open_feature_set(root)
    assert len(fs.shards) == 11
    idx = rng.permutation(len(x))
    np.testing.assert_array_equal(fs.take(idx), x[idx])
    np.testing.assert_array_equal(np.concatenate([b for _, b in fs.iter_chunks(rows=3)]), x)
    # Without meta "shards", files are found in natural order: features-10 after features-2.
    meta = json.loads((root / "meta.json").read_text())
    del meta["shards"]
    (root / "meta.json").write_text(json.dumps(meta))
    names = [f"features-{i}.npy" for i in range(11)]
    for i, old in enumerate(sorted(root.glob("features-*.npy"))):
        old.rename(root / f"tmp-{i}.npy")
    for i in range(11):
        (root / f"tmp-{i}.npy").rename(root / names[i])
    np.testing.assert_array_equal(open_feature_set(root).take(np.arange(len(x))), x)


def test_parquet_and_extra_columns_kept(tmp_path):
    x = np.zeros((4, 3), np.float32)
    df = make_samples(4).assign(width=[1, 2, 3, 4])
    fs = open_feature_set(hand_written(tmp_path / "p", x, df, csv=False))
    assert list(fs.samples["width"]) == [1, 2, 3, 4]


def _broken(tmp_path, **kw):
    x = kw.pop("x", np.ones((6, 3), np.float32))
    df = kw.pop("df", make_samples(6))
    return hand_written(tmp_path / "b", x, df, **kw)


@pytest.mark.parametrize(
    "make, file, message",
    [
        (lambda t: _broken(t, df=make_samples(5)), "samples.csv", "5 rows, but the vectors"),
        (lambda t: _broken(t, x=np.array([[1, 2, np.nan]] * 6, np.float32)), "features.npy", "NaN or inf"),
        (
            lambda t: _broken(t, x=np.array([[1, np.inf, 0]] * 6, np.float32)),
            "features.npy",
            "NaN or inf, first at row 0",
        ),
        (lambda t: _broken(t, df=make_samples(6).drop(columns="generator")), "samples.csv", "missing column"),
        (lambda t: _broken(t, df=make_samples(6).assign(label=[0, 1, 2, 0, 1, 0])), "samples.csv", "first at row 2"),
        (lambda t: _broken(t, df=make_samples(6).assign(label="fake")), "samples.csv", "must be 0 (real) or 1"),
        (lambda t: _broken(t, meta={"dim": 4, "dtype": "float32"}), "features.npy", "expected shape (N, 4)"),
        (lambda t: _broken(t, meta={"dim": 3, "dtype": "float16"}), "features.npy", "does not match meta.json dtype"),
        (lambda t: _broken(t, meta={"dtype": "float32"}), "meta.json", "missing required key 'dim'"),
    ],
)
def test_malformed_sets_are_refused_with_the_file_named(tmp_path, make, file, message):
    root = make(tmp_path)
    with pytest.raises(FeatureSetError) as err:
        open_feature_set(root)
    assert file in str(err.value) and message in str(err.value)


def test_missing_pieces(tmp_path):
    with pytest.raises(FeatureSetError, match="not a directory"):
        open_feature_set(tmp_path / "nope")
    root = _broken(tmp_path)
    (root / "meta.json").unlink()
    with pytest.raises(FeatureSetError, match="meta.json: missing"):
        open_feature_set(root)
    root = _broken(tmp_path)
    (root / "features.npy").unlink()
    with pytest.raises(FeatureSetError, match="no vectors found"):
        open_feature_set(root)
    root = _broken(tmp_path)
    make_samples(6).to_parquet(root / "samples.parquet")
    with pytest.raises(FeatureSetError, match="both samples.parquet and samples.csv"):
        open_feature_set(root)


def test_pickled_object_array_is_not_loaded(tmp_path):
    root = _broken(tmp_path)
    np.save(root / "features.npy", np.array([{"a": 1}] * 6, dtype=object), allow_pickle=True)
    with pytest.raises(FeatureSetError, match="features.npy"):
        open_feature_set(root)


def test_inspect_cli(tmp_path, capsys):
    root = write_feature_set(tmp_path / "i", np.zeros((4, 2), np.float16), make_samples(4, generator="sd14"))
    assert main(["inspect", str(root)]) == 0
    out = capsys.readouterr().out
    assert "4 vectors of dim 2" in out and "sd14" in out
    root = _broken(tmp_path, df=make_samples(5))
    assert main(["inspect", str(root)]) == 2
    assert "samples.csv" in capsys.readouterr().err


def test_large_set_take_reads_only_requested_rows(tmp_path):
    """take() returns fresh arrays of the requested rows; the memory map itself is never converted whole."""
    x = np.arange(2000 * 8, dtype=np.float32).reshape(2000, 8)
    fs = open_feature_set(write_feature_set(tmp_path / "l", x, make_samples(2000)))
    got = fs.take(np.array([1999, 0]))
    assert not isinstance(got, np.memmap) and got.shape == (2, 8)
    np.testing.assert_array_equal(got, x[[1999, 0]])


def test_pandas_roundtrip_preserves_string_paths(tmp_path):
    df = pd.DataFrame({"path": ["001", "a b.png"], "label": [0, 1], "generator": ["0", "x"]})
    fs = open_feature_set(hand_written(tmp_path / "s", np.zeros((2, 2), np.float32), df))
    assert list(fs.paths) == ["001", "a b.png"] and list(fs.generators) == ["0", "x"]
