"""Data-parallel CPU extraction (ExtractConfig.processes > 1): the same feature set as one process, every bad input
reported, a dead worker loses nothing that a rerun does not redo."""

from __future__ import annotations

import os
import pickle
import time

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

pytest.importorskip("transformers")
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection  # noqa: E402

from causalclip import open_feature_set  # noqa: E402
from causalclip.backbones import Backbone, load_backbone, uncompiled  # noqa: E402
from causalclip.cli import main  # noqa: E402
from causalclip.cpu_pool import default_processes  # noqa: E402
from causalclip.extract import ExtractConfig, ExtractError, extract  # noqa: E402
from causalclip.imageio import Preprocessing  # noqa: E402

VISION = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "image_size": 224,
    "patch_size": 32,
    "projection_dim": 16,
}


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny-clip")
    CLIPVisionModelWithProjection(CLIPVisionConfig(**VISION)).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """30 images of assorted sizes plus three unusable files, in two classes."""
    root = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    rows = []
    for label, cls in ((0, "real"), (1, "fake")):
        (root / cls).mkdir()
        for i in range(15):
            w, h = (int(v) for v in rng.integers(120, 320, 2))
            name = f"{cls}/{i:03d}.{'png' if i % 2 else 'jpg'}"
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / name)
            rows.append((name, label, "gen"))
    (root / "fake" / "empty.png").write_bytes(b"")
    (root / "fake" / "text.jpg").write_bytes(b"not an image")
    (root / "real" / "cut.png").write_bytes((root / "real" / "001.png").read_bytes()[:200])
    rows += [("fake/empty.png", 1, "gen"), ("fake/text.jpg", 1, "gen"), ("real/cut.png", 0, "gen")]
    samples = pd.DataFrame(rows, columns=["path", "label", "generator"]).sample(frac=1.0, random_state=1)
    return root, samples.reset_index(drop=True)


def _run(bb, root, samples, out, processes, **cfg):
    return extract(
        samples,
        root=root,
        out=out,
        backbone=bb,
        config=ExtractConfig(batch_size=3, shard_size=7, storage_dtype="float32", processes=processes, **cfg),
        progress=False,
    )


def _same_sets(a, b):
    fa, fb = open_feature_set(a), open_feature_set(b)
    assert list(fa.paths) == list(fb.paths)
    assert np.array_equal(fa.labels, fb.labels)
    np.testing.assert_allclose(fa.take(np.arange(len(fa))), fb.take(np.arange(len(fb))), rtol=1e-5, atol=1e-6)
    ea, eb = pd.read_csv(a / "errors.csv"), pd.read_csv(b / "errors.csv")
    pd.testing.assert_frame_equal(ea, eb)


def test_two_processes_give_the_single_process_set(tiny_clip, tree, tmp_path):
    root, samples = tree
    bb = load_backbone(str(tiny_clip), precision="fp32")
    one = _run(bb, root, samples, tmp_path / "one", 1, workers=0)
    two = _run(bb, root, samples, tmp_path / "two", 2)
    assert (one.n_ok, two.n_ok) == (30, 30)
    _same_sets(tmp_path / "one", tmp_path / "two")
    reasons = pd.read_csv(tmp_path / "two" / "errors.csv").set_index("path")["reason"]
    assert set(reasons.index) == {"fake/empty.png", "fake/text.jpg", "real/cut.png"}
    assert "empty" in reasons["fake/empty.png"] or "zero" in reasons["fake/empty.png"]
    # the features are the model's, not an artefact of the pool: compare with a direct forward of one image
    fs = open_feature_set(tmp_path / "two")
    path = fs.paths[4]
    from causalclip.imageio import load_rgb

    with torch.inference_mode():
        ref = bb(torch.from_numpy(bb.preprocessing(load_rgb(root / path)))[None]).numpy()[0]
    np.testing.assert_allclose(fs.take([4])[0], ref, rtol=1e-5, atol=1e-6)


class _Flaky(Backbone):
    """Crashes its process (os._exit), or raises, on the batch holding a black image while ``flag`` exists
    (mode "slow": sleeps 0.5 s on every batch instead); else a fixed linear map of the mean colour. Defined at
    module level so that worker processes can unpickle it."""

    def __init__(self, flag: str, mode: str = "exit") -> None:
        super().__init__()
        self.flag, self.mode = flag, mode
        self.dim = 3
        self.preprocessing = Preprocessing(mode="crop", size=32)
        self.lin = torch.nn.Linear(3, 3)
        with torch.no_grad():  # the same map in every process that builds one
            self.lin.weight.copy_(torch.arange(9.0).view(3, 3) / 10 - 0.3)
            self.lin.bias.fill_(0.1)

    def describe(self):
        return {"name": "flaky-test-backbone", "dim": 3}

    def forward(self, pixels):
        if self.mode == "slow" and os.path.exists(self.flag):
            time.sleep(0.5)
        elif os.path.exists(self.flag) and (pixels.flatten(2).std(dim=2) < 1e-6).all(dim=1).any():
            if self.mode == "exit":
                os._exit(7)
            raise RuntimeError("forward failed on purpose")
        return self.lin(pixels.mean(dim=(2, 3)))


@pytest.fixture()
def flat_tree(tmp_path):
    root = tmp_path / "flat"
    rng = np.random.default_rng(2)
    rows = []
    for i in range(40):
        arr = np.zeros((40, 40, 3), np.uint8) if i == 30 else rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
        (root / "x").mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr).save(root / "x" / f"{i:02d}.png")
        rows.append((f"x/{i:02d}.png", i % 2, "g"))
    return root, pd.DataFrame(rows, columns=["path", "label", "generator"])


def test_a_dead_worker_is_an_error_and_a_rerun_completes_the_set(flat_tree, tmp_path):
    root, samples = flat_tree
    flag = tmp_path / "crash"
    flag.touch()
    bb = _Flaky(str(flag))
    out = tmp_path / "out"
    with pytest.raises(ExtractError, match=r"died \(exit code 7\).*\n.*run the same command again"):
        _run(bb, root, samples, out, 2)
    done = sorted(p.name for p in (out / "parts").glob("shard-*.json"))
    assert "shard-00004.json" not in done  # rows 28..34 hold the black image (row 30)
    assert not (out / "meta.json").exists()
    flag.unlink()
    res = _run(bb, root, samples, out, 2)
    redone = 40 - sum(min(7, 40 - 7 * int(name[6:11])) for name in done)
    assert res.n_ok == 40 and res.n_extracted_now == redone  # exactly the shards that were lost
    _run(bb, root, samples, tmp_path / "clean", 1, workers=0)
    _same_sets(out, tmp_path / "clean")


def test_an_exception_in_a_worker_is_reported_with_its_traceback(flat_tree, tmp_path):
    root, samples = flat_tree
    flag = tmp_path / "crash"
    flag.touch()
    with pytest.raises(ExtractError, match="forward failed on purpose"):
        _run(_Flaky(str(flag), mode="raise"), root, samples, tmp_path / "out", 2)


def test_clip_backbone_pickles_with_its_cls_only_forward(tiny_clip):
    bb = load_backbone(str(tiny_clip), precision="fp32")
    copy = pickle.loads(pickle.dumps(bb))
    assert copy.model._pooled is not None  # the exact CLS-only last layer is rebuilt, not dropped
    x = torch.randn(2, 3, 224, 224)
    with torch.inference_mode():
        assert torch.equal(bb(x), copy(x))
    assert copy.describe() == bb.describe()


def test_uncompiled_unwraps_without_touching_the_original(tiny_clip):
    bb = load_backbone(str(tiny_clip), precision="fp32", compile=True)
    plain, was = uncompiled(bb)
    assert was and plain is not bb
    assert plain.model is bb.model._orig_mod
    assert hasattr(bb.model, "_orig_mod")  # still compiled
    pickle.dumps(plain)
    same, was = uncompiled(plain)
    assert same is plain and not was


def test_processes_option_is_checked(tiny_clip, tree, tmp_path):
    root, samples = tree
    bb = load_backbone(str(tiny_clip), precision="fp32")
    with pytest.raises(ExtractError, match="processes must be"):
        _run(bb, root, samples, tmp_path / "o", 0)
    with pytest.raises(SystemExit):
        main(["extract", str(root), "--layout", "folders", "--out", str(tmp_path / "o"), "--processes", "many"])
    assert default_processes("cuda") == 1
    assert 1 <= default_processes("cpu") <= 4


def test_cli_extract_with_two_processes(tiny_clip, tree, tmp_path, capsys):
    root, samples = tree
    rc = main(
        [
            "extract", str(root), "--layout", "folders", "--backbone", str(tiny_clip), "--precision", "fp32",
            "--processes", "2", "--out", str(tmp_path / "cli"), "-q",
        ]
    )  # fmt: skip
    assert rc == 1  # three unusable inputs
    assert "30 of 33 images extracted" in capsys.readouterr().out
    fs = open_feature_set(tmp_path / "cli")
    assert (len(fs), fs.dim) == (30, 16)


def test_padding_to_a_fixed_batch_does_not_change_the_features(tiny_clip):
    from causalclip.cpu_pool import forward_fixed

    bb = load_backbone(str(tiny_clip), precision="fp32")
    x = torch.randn(3, 3, 224, 224)
    with torch.inference_mode():
        padded = forward_fixed(bb, x, 8)
        plain = bb(x)
    assert padded.shape == (3, 16)
    torch.testing.assert_close(padded, plain, rtol=1e-5, atol=1e-6)
    assert forward_fixed(bb, x, None).shape == (3, 16)


def test_compiled_workers_give_the_eager_set(tiny_clip, tree, tmp_path):
    """--compile with worker processes: each compiles its own copy, padding short batches to one shape."""
    root, samples = tree
    eager = load_backbone(str(tiny_clip), precision="fp32")
    _run(eager, root, samples, tmp_path / "eager", 1, workers=0)
    compiled = load_backbone(str(tiny_clip), precision="fp32", compile=True)
    res = _run(compiled, root, samples, tmp_path / "compiled", 2)
    assert res.n_ok == 30 and res.startup_seconds <= res.seconds
    _same_sets(tmp_path / "eager", tmp_path / "compiled")


KILL_SCRIPT = """
import sys, pandas as pd
sys.path.insert(0, sys.argv[5])
from test_cpu_pool import _Flaky
from causalclip.extract import ExtractConfig, extract
if __name__ == "__main__":
    samples = pd.read_parquet(sys.argv[3])
    extract(samples, root=sys.argv[1], out=sys.argv[2], backbone=_Flaky(sys.argv[4], mode="slow"),
            config=ExtractConfig(batch_size=2, shard_size=4, processes=2), progress=False)
"""


def _children(pid: int) -> list[int]:
    kids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = open(f"/proc/{entry}/stat").read()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                kids.append(int(entry))
    return kids


def _alive(pid: int) -> bool:
    try:
        state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads /proc")
def test_killing_the_main_process_ends_the_workers_and_a_rerun_completes(tree, tmp_path):
    import signal
    import subprocess
    import sys

    root, samples = tree
    big = pd.concat([samples] * 6, ignore_index=True)
    big["generator"] = np.repeat([f"g{i}" for i in range(6)], len(samples))
    big.to_parquet(tmp_path / "plan.parquet")
    flag = tmp_path / "slow"
    flag.touch()  # 0.5 s per batch: the 99 batches would keep two workers busy for ~25 s after the kill
    out = tmp_path / "killed"
    here = os.path.dirname(os.path.abspath(__file__))
    script = [sys.executable, "-c", KILL_SCRIPT, str(root), str(out), str(tmp_path / "plan.parquet"), str(flag), here]
    proc = subprocess.Popen(script)
    deadline, workers = time.time() + 120, []
    while time.time() < deadline and proc.poll() is None:
        done = list((out / "parts").glob("shard-*.json")) if (out / "parts").exists() else []
        if len(done) >= 2:
            workers = _children(proc.pid)
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = time.time()
    assert not (out / "meta.json").exists(), "the job finished before it could be interrupted"
    assert len(workers) >= 2  # the two workers (and the resource tracker)
    while time.time() < killed_at + 8 and any(_alive(p) for p in workers):
        time.sleep(0.1)
    assert not any(_alive(p) for p in workers), "worker processes went on after the main process was killed"
    flag.unlink()
    bb = _Flaky(str(flag), mode="slow")
    cfg = ExtractConfig(batch_size=2, shard_size=4, processes=2)
    res = extract(big, root=root, out=out, backbone=bb, config=cfg, progress=False)
    assert 0 < res.n_extracted_now < len(big)
    extract(big, root=root, out=tmp_path / "clean", backbone=bb, config=ExtractConfig(workers=0), progress=False)
    _same_sets(out, tmp_path / "clean")
