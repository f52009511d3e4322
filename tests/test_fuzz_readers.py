"""The readers of feature sets, run folders and manifests on mutated files: every input is read, or refused with
the reader's own error class and a message naming the file (or folder) at fault; no other exception escapes.

Targets: core.io.read_json; features.featureset.open_feature_set (meta.json, features.npy, samples.parquet,
samples.csv); heads.checkpoint.load_head (config.json, model.safetensors); the manifest layout (CSV, Parquet).
Mutations: bytes (flips, special values, huge fields, insertions, cuts) and, for JSON, values replaced by other
JSON values of any type. Bounded runs; inputs that once failed are regression tests at the end with their bytes."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from causalclip.core.io import read_json
from causalclip.features.featureset import FeatureSetError, open_feature_set, write_feature_set
from causalclip.heads.checkpoint import CheckpointError, load_head, save_head
from causalclip.heads.registry import build_head
from causalclip.images.layouts import LayoutError, list_samples

# 60 inputs per file kind by default; a longer run: CAUSALCLIP_FUZZ_EXAMPLES=5000 pytest tests/test_fuzz_readers.py
EXAMPLES = int(os.environ.get("CAUSALCLIP_FUZZ_EXAMPLES", "60"))
BOUNDED = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)


@st.composite
def byte_mutations(draw, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 5))):
        pos = draw(st.integers(0, len(out)))
        kind = draw(st.sampled_from(["flip", "byte", "huge", "insert", "delete", "cut"]))
        if kind == "flip" and pos < len(out):
            out[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "byte" and pos < len(out):
            out[pos] = draw(st.sampled_from([0x00, 0x22, 0x2C, 0x7F, 0x80, 0xFF, 0x0A]))
        elif kind == "huge":
            out[pos : pos + 8] = draw(st.sampled_from([b"\xff" * 8, b"\x7f" + b"\xff" * 7, b"\0" * 8, b"9" * 8]))
        elif kind == "insert":
            out[pos:pos] = draw(st.binary(min_size=1, max_size=12))
        elif kind == "delete":
            del out[pos : pos + draw(st.integers(1, 40))]
        else:
            del out[pos:]
    return bytes(out)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)


@st.composite
def json_mutations(draw, doc: dict) -> bytes:
    """``doc`` with some values replaced by any JSON value, some keys dropped, or the top level replaced."""
    if draw(st.integers(0, 9)) == 0:
        return json.dumps(draw(JSON_VALUES)).encode()
    out = json.loads(json.dumps(doc))
    for _ in range(draw(st.integers(1, 3))):
        key = draw(st.sampled_from(sorted(out) or ["x"]))
        if draw(st.booleans()):
            out[key] = draw(JSON_VALUES)
        else:
            out.pop(key, None)
    try:
        return json.dumps(out, allow_nan=True).encode()
    except ValueError:
        return b"{}"


def _mutated_file(base: Path, name: str, content: bytes) -> Path:
    """A copy of the folder ``base`` in a fresh temporary folder, with ``name`` replaced by ``content``."""
    folder = Path(tempfile.mkdtemp(prefix="fuzz-"))
    shutil.copytree(base, folder, dirs_exist_ok=True)
    (folder / name).write_bytes(content)
    return folder


def _expect_clean(call, error: type[Exception], path: Path):
    """``call()`` returns, or raises ``error`` whose message names ``path`` or its folder."""
    try:
        return call()
    except error as exc:
        assert str(path) in str(exc) or str(path.parent) in str(exc), str(exc)
        return None
    finally:
        shutil.rmtree(path.parent, ignore_errors=True)


# ---- core.io.read_json


@BOUNDED
@given(st.binary(max_size=64) | byte_mutations(b'{"dim": 16, "dtype": "float32", "shards": ["a.npy"]}'))
def test_read_json_reads_or_names_the_file(data):
    folder = Path(tempfile.mkdtemp(prefix="fuzz-"))
    path = folder / "x.json"
    path.write_bytes(data)
    _expect_clean(lambda: read_json(path, FeatureSetError), FeatureSetError, path)


# ---- features.featureset


@pytest.fixture(scope="module")
def feature_sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("fsets")
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"path": [f"{i}.png" for i in range(6)], "label": [0, 1] * 3, "generator": "g"})
    x = rng.normal(size=(6, 4)).astype(np.float32)
    pq = write_feature_set(root / "pq", x, df, meta={"backbone": {"name": "test"}})
    csv = write_feature_set(root / "csv", x, df, meta={"backbone": {"name": "test"}}, samples_format="csv")
    return {"pq": pq, "csv": csv}


def _fuzz_feature_set(base: Path, name: str, content: bytes) -> None:
    folder = _mutated_file(base, name, content)
    fs = _expect_clean(lambda: open_feature_set(folder), FeatureSetError, folder / name)
    if fs is not None:  # whatever was read is consistent
        assert len(fs.samples) == sum(len(s) for s in fs.shards) and set(fs.labels.tolist()) <= {0, 1}


@BOUNDED
@given(st.data())
def test_feature_set_meta(feature_sets, data):
    meta = json.loads((feature_sets["pq"] / "meta.json").read_text())
    content = data.draw(json_mutations(meta) | byte_mutations(json.dumps(meta).encode()))
    _fuzz_feature_set(feature_sets["pq"], "meta.json", content)


@BOUNDED
@given(st.data())
def test_feature_set_npy(feature_sets, data):
    content = data.draw(byte_mutations((feature_sets["pq"] / "features.npy").read_bytes()))
    _fuzz_feature_set(feature_sets["pq"], "features.npy", content)


@BOUNDED
@given(st.data())
def test_feature_set_parquet(feature_sets, data):
    content = data.draw(byte_mutations((feature_sets["pq"] / "samples.parquet").read_bytes()))
    _fuzz_feature_set(feature_sets["pq"], "samples.parquet", content)


@BOUNDED
@given(st.data())
def test_feature_set_csv(feature_sets, data):
    content = data.draw(byte_mutations((feature_sets["csv"] / "samples.csv").read_bytes()))
    _fuzz_feature_set(feature_sets["csv"], "samples.csv", content)


# ---- heads.checkpoint


@pytest.fixture(scope="module")
def head_folder(tmp_path_factory):
    torch.manual_seed(0)
    return save_head(tmp_path_factory.mktemp("head"), build_head("univfd", dim=4), threshold=0.4)


@BOUNDED
@given(st.data())
def test_load_head_config(head_folder, data):
    config = json.loads((head_folder / "config.json").read_text())
    content = data.draw(json_mutations(config) | byte_mutations(json.dumps(config).encode()))
    folder = _mutated_file(head_folder, "config.json", content)
    _expect_clean(lambda: load_head(folder), CheckpointError, folder / "config.json")


@BOUNDED
@given(st.data())
def test_load_head_weights(head_folder, data):
    content = data.draw(byte_mutations((head_folder / "model.safetensors").read_bytes()))
    folder = _mutated_file(head_folder, "model.safetensors", content)
    _expect_clean(lambda: load_head(folder), CheckpointError, folder / "model.safetensors")


# ---- the manifest layout (CSV and Parquet)


@pytest.fixture(scope="module")
def manifests(tmp_path_factory):
    root = tmp_path_factory.mktemp("manifest")
    df = pd.DataFrame({"path": ["a.png", "b.png", "c.png"], "label": ["real", "fake", 1], "generator": "g"})
    df["label"] = df["label"].astype(str)
    df.to_csv(root / "m.csv", index=False)
    df.to_parquet(root / "m.parquet")
    return root


@BOUNDED
@given(st.data(), st.sampled_from(["m.csv", "m.parquet"]))
def test_manifest(manifests, data, name):
    content = data.draw(byte_mutations((manifests / name).read_bytes()))
    folder = _mutated_file(manifests, name, content)
    _expect_clean(lambda: list_samples(folder / name, layout="manifest"), LayoutError, folder / name)


# ---- regression inputs: what the fuzzers above found, each at its smallest


def _npy_with_header(header: bytes) -> bytes:
    text = header + b" " * ((64 - 10 - len(header) - 1) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text + bytes(96)


def test_regression_meta_dtype_of_another_type(feature_sets, tmp_path):
    """meta.json {"dtype": []}: was TypeError (unhashable list) from the membership test."""
    meta = json.loads((feature_sets["pq"] / "meta.json").read_text())
    for dtype in ([], {}, 32):
        folder = _mutated_file(feature_sets["pq"], "meta.json", json.dumps({**meta, "dtype": dtype}).encode())
        with pytest.raises(FeatureSetError, match=rf"{folder / 'meta.json'}: 'dtype' must be one of"):
            open_feature_set(folder)


def test_regression_npy_header_numpy_cannot_parse(feature_sets):
    """A .npy header cut inside its dict (or with a stray bracket): numpy raised tokenize.TokenError or
    SyntaxError from its literal parser, which escaped as neither ValueError nor OSError."""
    for header in (b"{'descr': '<f4', 'fortran_order': False, 'shape': (6, 4), ",
                   b"{'descr': '<f4', 'fortran_order': False, 'shape': (6, 4), '''"):  # fmt: skip
        folder = _mutated_file(feature_sets["pq"], "features.npy", _npy_with_header(header))
        with pytest.raises(FeatureSetError, match=rf"{folder / 'features.npy'}: not a readable .npy array"):
            open_feature_set(folder)


def test_regression_head_config_not_an_object_or_bad_dim(head_folder):
    """config.json null / [] / 3: was TypeError from `key in info`; a huge or non-integer dim allocated (or
    failed in torch) before the weights were looked at."""
    config = json.loads((head_folder / "config.json").read_text())
    cases = {
        b"null": "the top level must be an object, got NoneType",
        b"[]": "the top level must be an object, got list",
        json.dumps({**config, "dim": 2**40}).encode(): "'dim' 1099511627776 cannot match model.safetensors",
        json.dumps({**config, "dim": "4"}).encode(): "'dim' must be a positive integer, got '4'",
        json.dumps({**config, "dim": True}).encode(): "'dim' must be a positive integer, got True",
        json.dumps({**config, "format_version": "1"}).encode(): "format_version must be an integer",
    }
    for content, message in cases.items():
        folder = _mutated_file(head_folder, "config.json", content)
        with pytest.raises(CheckpointError, match=f"{folder / 'config.json'}: {message}"):
            load_head(folder)
