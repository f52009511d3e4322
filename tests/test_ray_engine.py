"""The Ray engine against the local engine, on a local 2-CPU Ray cluster with a tiny CLIP model.

The reference is always the local engine's folder: the Ray engine must write the same files (byte for byte, but
for vectors computed in different batches: float tolerance), whatever the paths (plain, file://, an fsspec
memory:// store), when an actor process dies mid-run, and when either engine resumes the other's work.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

ray = pytest.importorskip("ray")
pytest.importorskip("transformers")

from causalclip import open_feature_set  # noqa: E402
from causalclip.backbones.base import Backbone  # noqa: E402
from causalclip.backbones.registry import load_backbone  # noqa: E402
from causalclip.cli.main import main  # noqa: E402
from causalclip.features.extract import _Images, extract  # noqa: E402
from causalclip.features.job import ExtractConfig, ExtractError  # noqa: E402
from causalclip.features.ray_engine import RayOptions, _decode, _Embedder  # noqa: E402
from causalclip.images.layouts import list_samples  # noqa: E402
from causalclip.images.transforms import Augmentation, Perturbation, Preprocessing, normalise_lut  # noqa: E402

# Backbone wrappers below are defined in this module, which Ray workers cannot import: send them by value.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

CFG = ExtractConfig(batch_size=5, shard_size=7, storage_dtype="float32", workers=0)
N_SHARDS = 4  # 24 images + 2 broken files = 26 plan rows in shards of 7


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """ROOT/{real,fake}/ with 12 images each of assorted sizes, a truncated JPEG, a text file named .png and a
    .txt the listing ignores."""
    root = tmp_path_factory.mktemp("data") / "gen"
    rng = np.random.default_rng(0)
    sizes = [(256, 256), (300, 201), (180, 240), (224, 224), (97, 333), (500, 260)]
    for cls in ("real", "fake"):
        (root / cls).mkdir(parents=True)
        for i, (w, h) in enumerate(sizes * 2):
            arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / cls / f"{i:03d}.{'png' if i % 2 else 'jpg'}")
    data = (root / "fake" / "000.jpg").read_bytes()
    (root / "fake" / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (root / "real" / "text.png").write_text("not an image")
    (root / "real" / "notes.txt").write_text("ignored by the listing")
    return list_samples(root, "folders")


@pytest.fixture(scope="module")
def reference(tiny_clip, dataset, tmp_path_factory):
    """The local engine's folder for the dataset."""
    out = tmp_path_factory.mktemp("ref") / "set"
    bb = load_backbone(str(tiny_clip), precision="fp32")
    res = extract(
        dataset.samples, root=dataset.root, out=out, backbone=bb, config=CFG, ignored=dataset.ignored, progress=False
    )
    assert res.n_ok == 24 and len(res.errors) == 3
    return out


def folder_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def assert_same_set(files: dict[str, bytes], ref: Path, *, root_differs: bool = False, resumed: bool = False) -> None:
    """Same file names and bytes as the local engine's folder; vectors within float tolerance; JSON equal but
    for ``root`` when the Ray run named the image folder by URI. ``resumed``: Parquet tables compared by content,
    since a resumed job (either engine) reads its plan back from plan.parquet, whose strings pandas then writes
    as large_string."""
    want = folder_files(ref)
    assert sorted(files) == sorted(want)
    for name, data in want.items():
        if resumed and name.endswith(".parquet"):
            got_df, want_df = pd.read_parquet(io.BytesIO(files[name])), pd.read_parquet(io.BytesIO(data))
            pd.testing.assert_frame_equal(got_df, want_df, check_dtype=False)
        elif name.endswith(".npy"):
            got_arr, want_arr = np.load(io.BytesIO(files[name])), np.load(io.BytesIO(data))
            assert got_arr.shape == want_arr.shape and got_arr.dtype == want_arr.dtype, name
            np.testing.assert_allclose(got_arr, want_arr, rtol=1e-5, atol=1e-6, err_msg=name)
        elif root_differs and name in ("job.json", "meta.json"):
            got_json, want_json = json.loads(files[name]), json.loads(data)
            assert got_json.pop("root") != want_json.pop("root")
            assert got_json == want_json, name
        else:
            assert files[name] == data, name


def test_cli_ray_engine_writes_the_local_engines_set(cluster, tiny_clip, dataset, reference, tmp_path, capsys):
    out = tmp_path / "ray"
    args = ["extract", str(dataset.root), "--layout", "folders", "--backbone", str(tiny_clip), "--out", str(out)]
    args += ["--precision", "fp32", "--dtype", "float32", "--batch-size", "5", "--shard-size", "7", "-q"]
    rc = main(args + ["--engine", "ray", "--actors", "1"])
    assert rc == 1  # three inputs not used, as with the local engine
    assert "24 of 26 images extracted" in capsys.readouterr().out
    assert_same_set(folder_files(out), reference)
    fs = open_feature_set(out)
    assert len(fs) == 24 and fs.samples["plan_row"].is_unique


def test_uri_inputs_and_an_object_store_output(cluster, tiny_clip, dataset, reference):
    """Images read through file:// URIs, the set written to an fsspec store with no renames (memory://)."""
    fsspec = pytest.importorskip("fsspec")
    store = fsspec.filesystem("memory")
    uri = "memory://causalclip-ray-test/set"
    res = extract(
        dataset.samples,
        root=dataset.root.as_uri(),
        out=uri,
        backbone=load_backbone(str(tiny_clip), precision="fp32"),  # sent to the actors as an object
        config=CFG,
        ignored=dataset.ignored,
        progress=False,
        engine="ray",
        ray_options=RayOptions(actors=1),
    )
    assert res.n_ok == 24 and str(res.out) == uri
    base = "/causalclip-ray-test/set/"
    files = {p[len(base) :]: store.cat_file(p) for p in store.find(base)}
    assert_same_set(files, reference, root_differs=True)
    assert json.loads(files["meta.json"])["root"] == dataset.root.as_uri()


class DiesOnce(Backbone):
    """The tiny CLIP, except that the first batch any actor sees kills its process (os._exit), once per flag."""

    def __init__(self, inner: Backbone, flag: str) -> None:
        super().__init__()
        self.inner, self.flag = inner, flag
        self.dim, self.preprocessing, self.precision = inner.dim, inner.preprocessing, inner.precision

    def describe(self):
        return self.inner.describe()

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        if not os.path.exists(self.flag):
            Path(self.flag).write_text(str(os.getpid()))
            os._exit(1)
        return self.inner(pixels)


def test_an_actor_killed_mid_run_loses_and_duplicates_nothing(cluster, tiny_clip, dataset, reference, tmp_path):
    flag = tmp_path / "killed"
    out = tmp_path / "ray"
    res = extract(
        dataset.samples,
        root=dataset.root,
        out=out.as_uri(),  # file://: the URI writer, renaming into place on a local disk
        backbone=DiesOnce(load_backbone(str(tiny_clip), precision="fp32"), str(flag)),
        config=CFG,
        ignored=dataset.ignored,
        progress=False,
        engine="ray",
        ray_options=RayOptions(actors=1),
    )
    assert flag.exists()  # an actor process did die
    assert res.n_ok == 24 and res.n_extracted_now == 26
    assert_same_set(folder_files(out), reference)
    assert not list(out.rglob(".*tmp-*"))


def test_each_engine_resumes_the_others_work(cluster, tiny_clip, dataset, reference, tmp_path):
    """Shards 1 and 3 of the local engine's folder lost: Ray redoes exactly those rows."""
    out = tmp_path / "mixed"
    shutil.copytree(reference, out)
    for name in ("parts/shard-00001.json", "parts/shard-00003.json", "features-00001.npy", "meta.json"):
        (out / name).unlink()
    res = extract(
        dataset.samples,
        root=dataset.root,
        out=out,
        backbone=load_backbone(str(tiny_clip), precision="fp32"),
        config=CFG,
        ignored=dataset.ignored,
        progress=False,
        engine="ray",
        ray_options=RayOptions(actors=1, backbone_args={"model": str(tiny_clip)}),
    )
    assert res.n_extracted_now == 7 + 5  # shard 1 (rows 7-13) and shard 3 (rows 21-25)
    assert_same_set(folder_files(out), reference, resumed=True)


class FailsAfter(Backbone):
    """The tiny CLIP for 4 batches, then (after a pause that lets the driver write the finished shards) an error
    in user code, which Ray does not retry."""

    def __init__(self, inner: Backbone) -> None:
        super().__init__()
        self.inner, self.calls = inner, 0
        self.dim, self.preprocessing, self.precision = inner.dim, inner.preprocessing, inner.precision

    def describe(self):
        return self.inner.describe()

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls >= 5:
            time.sleep(2)
            raise RuntimeError("simulated failure in the backbone")
        return self.inner(pixels)


def test_a_failed_ray_run_is_finished_by_the_local_engine(cluster, tiny_clip, dataset, reference, tmp_path):
    out = tmp_path / "failed"
    bb = load_backbone(str(tiny_clip), precision="fp32")
    with pytest.raises(ExtractError, match="simulated failure.*run the same command again to resume"):
        extract(
            dataset.samples,
            root=dataset.root,
            out=out,
            backbone=FailsAfter(bb),
            config=CFG,
            ignored=dataset.ignored,
            progress=False,
            engine="ray",
            ray_options=RayOptions(actors=1, decode_rows=5),
        )
    assert not (out / "samples.parquet").exists()  # no set from a partial run
    markers = sorted(p.name for p in (out / "parts").glob("shard-*.json"))
    assert 0 < len(markers) < N_SHARDS
    res = extract(
        dataset.samples, root=dataset.root, out=out, backbone=bb, config=CFG, ignored=dataset.ignored, progress=False
    )
    ranges = [json.loads((reference / "parts" / m).read_text()) for m in markers]
    assert res.n_extracted_now == 26 - sum(r["stop"] - r["start"] for r in ranges)  # Ray's shards were kept
    assert_same_set(folder_files(out), reference, resumed=True)


def test_bad_requests_are_refused_with_clear_errors(cluster, tiny_clip, dataset, reference, tmp_path):
    bb = load_backbone(str(tiny_clip), precision="fp32")
    kwargs = {"root": dataset.root, "backbone": bb, "config": CFG, "progress": False}
    with pytest.raises(ExtractError, match="local engine takes local paths"):
        extract(dataset.samples, out="memory://x/y", **kwargs)
    uris = dataset.samples.assign(path="s3://bucket/" + dataset.samples["path"])
    with pytest.raises(ExtractError, match="URI paths"):
        extract(uris, out=tmp_path / "l", **kwargs)
    with pytest.raises(ExtractError, match="engine must be"):
        extract(dataset.samples, out=tmp_path / "e", engine="spark", **kwargs)
    with pytest.raises(ExtractError, match="has 0 GPU"):
        extract(dataset.samples, out=tmp_path / "g", engine="ray", device="cuda", **kwargs)
    # An actor whose backbone_args load something else than the driver's backbone refuses to start (called
    # in-process here: the same constructor Ray runs on each actor).
    identity = {"backbone": bb.describe(), "preprocessing": bb.preprocessing.to_dict(), "precision": "float32"}
    actor = {"backbone": None, "identity": identity, "device": "cpu", "storage_dtype": "float32", "threads": 1}
    with pytest.raises(ExtractError, match="backbone on this Ray worker has a different backbone"):
        _Embedder(backbone_args={"model": str(tiny_clip), "feature": "pooled"}, **actor)
    embedder = _Embedder(backbone_args={"model": str(tiny_clip)}, **actor)
    assert embedder.dim == 16
    with pytest.raises(ExtractError, match="actors must be a positive integer"):
        RayOptions(actors=0)
    other = ExtractConfig(batch_size=5, shard_size=8, storage_dtype="float32")
    with pytest.raises(ExtractError, match="different shard_size"):
        extract(dataset.samples, out=reference.as_uri(), engine="ray", **{**kwargs, "config": other})


@pytest.mark.parametrize("mode", ["crop", "clip"])
def test_decode_and_normalise_equal_the_local_engines_pixels(dataset, mode):
    """Ray's two halves of preprocessing (uint8 crop in the decode task, lookup-table gather in the actor) give
    bit-identical pixels to the local engine's loader, with a perturbation and the training augmentation."""
    prep = Preprocessing(mode=mode)
    pert = Perturbation(jpeg_quality=70, blur_sigma=1.0)
    aug = (Augmentation(blur_prob=0.5, jpeg_prob=0.5), 3)
    paths = dataset.samples["path"].tolist()
    rows = np.arange(len(paths))
    src = [(dataset.root / p).as_uri() if r % 2 else str(dataset.root / p) for r, p in zip(rows, paths, strict=True)]
    out = _decode(
        {"row": rows, "src": np.array(src, dtype=object)}, prep=prep, pert=pert, augmentation=aug, max_pixels=10**8
    )
    local = _Images(dataset.root, paths, prep, pert, 10**8, aug)
    lut = torch.from_numpy(np.array(normalise_lut(prep.mean, prep.std)))
    for r in rows:
        _, want, reason = local[int(r)]
        if want is None:
            assert not out["ok"][r] and out["reason"][r] == reason
            continue
        assert out["ok"][r] and out["reason"][r] == ""
        index = torch.from_numpy(out["pixels"][r : r + 1]).permute(0, 3, 1, 2).long()
        got = lut[torch.arange(3).view(1, 3, 1, 1), index][0]
        assert torch.equal(got, want)
    assert (~out["ok"]).sum() == 2  # the truncated JPEG and the text file
