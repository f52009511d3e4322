"""Networks trained on images (causalclip.pixel): the training transform, the run folder, resume after SIGKILL,
DDP under torchrun, evaluation, detector folders, detect and serve."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from scipy.ndimage import gaussian_filter

from causalclip.cli.main import main
from causalclip.core.config import ConfigError
from causalclip.images.transforms import Augmentation
from causalclip.pixel.config import resolve_pixel_config
from causalclip.pixel.data import TrainTransform, batch_order, open_image_set

ROOT = Path(__file__).resolve().parents[1]

# A tiny NPR (one block per stage, narrow) at 32-px crops: the code path of the full network in a second.
TINY = [
    "--set",
    "npr.layers=[1, 1]",
    "--set",
    "npr.widths=[8, 16]",
    "--set",
    "npr.stem_width=8",
    "--set",
    "recipe.train_crop=32",
    "--set",
    "recipe.test_crop=32",
    "--set",
    "recipe.train_resize=null",
    "--set",
    "recipe.batch_size=8",
    "--set",
    "train.workers=0",
    "--set",
    "train.num_threads=1",
]


def _write_tree(root: Path, n: int, seed: int, size: int = 40) -> Path:
    """ROOT/{real,fake}: reals are smooth noise, fakes nearest-up-sampled noise (NPR's cue: 2x2 blocks)."""
    rng = np.random.default_rng(seed)
    for label in ("real", "fake"):
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            if label == "real":
                img = gaussian_filter(rng.normal(128, 60, (size, size, 3)), sigma=(1.0, 1.0, 0))
            else:
                img = rng.normal(128, 50, (size // 2, size // 2, 3)).repeat(2, 0).repeat(2, 1)
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(root / label / f"{i:03d}.png")
    return root


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    base = tmp_path_factory.mktemp("pixel")
    return {
        name: _write_tree(base / name, n, seed) for name, n, seed in (("train", 24, 0), ("val", 10, 1), ("test", 10, 2))
    }


def _train_cmd(trees, out: Path, *extra: str) -> list[str]:
    return ["train", "--head", "npr", "--train", str(trees["train"]), "--val", str(trees["val"]), "--out", str(out),
            "-q", *TINY, *extra]  # fmt: skip


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "model.safetensors"))


# ------------------------------------------------------------------------------------------- transform


def test_batches_depend_only_on_seed_and_epoch():
    a = batch_order(50, batch_size=8, seed=3, epoch=2)
    b = batch_order(50, batch_size=8, seed=3, epoch=2)
    c = batch_order(50, batch_size=8, seed=3, epoch=3)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not np.array_equal(np.concatenate(a), np.concatenate(c))
    assert sorted(np.concatenate(a).tolist()) == list(range(50))  # every image once (50 = 6 x 8 + 2)
    assert len(batch_order(49, batch_size=8, seed=0, epoch=1)) == 6  # a last batch of 1 is dropped (BatchNorm)


def test_train_transform_crops_flips_and_normalises():
    rgb = np.arange(40 * 40 * 3, dtype=np.uint32).reshape(40, 40, 3).astype(np.uint8)
    t = TrainTransform(crop=32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), flip=True)
    outs = [t(rgb, seed=0, epoch=1, index=i) for i in range(40)]
    assert all(o.shape == (3, 32, 32) and o.dtype == np.float32 for o in outs)
    assert np.array_equal(outs[0], t(rgb, seed=0, epoch=1, index=0))  # deterministic in (seed, epoch, index)

    # every output is a crop of the image or of its mirror image, normalised with mean/std
    def found(o):
        px = np.rint((o.transpose(1, 2, 0) * 0.5 + 0.5) * 255).astype(np.uint8)
        for img in (rgb, rgb[:, ::-1]):
            for y in range(9):
                for x in range(9):
                    if np.array_equal(img[y : y + 32, x : x + 32], px):
                        return img is rgb
        raise AssertionError("not a crop")

    kinds = [found(o) for o in outs]
    assert 5 < sum(kinds) < 35  # both flipped and unflipped crops occur
    small = t(rgb[:20, :20], seed=0, epoch=1, index=0)  # smaller than the crop: zero-padded (black)
    assert small.shape == (3, 32, 32) and np.isclose(small.min(), -1.0)


def _photo() -> np.ndarray:
    skimage = pytest.importorskip("skimage.data")
    return np.ascontiguousarray(skimage.astronaut()[100:164, 180:244])  # a real 64 x 64 photograph crop


def test_blur_and_jpeg_ranges_measured_on_a_real_photo():
    """Recover each draw's blur sigma and JPEG quality from the augmented pixels alone (search for the operation
    that reproduces them) and check the recipe's ranges: sigma in [0, 3], quality in [30, 100], each with p 0.5."""
    from causalclip.images.transforms import Perturbation

    rgb = _photo()
    aug = Augmentation(blur_prob=0.5, blur_sigma=(0.0, 3.0), jpeg_prob=0.5, jpeg_quality=(30, 100))
    blur_t = TrainTransform(crop=64, mean=(0, 0, 0), std=(1 / 255,) * 3, flip=False,
                            augmentation=Augmentation(blur_prob=0.5, blur_sigma=(0.0, 3.0), jpeg_prob=0.0))  # fmt: skip
    jpeg_t = TrainTransform(crop=64, mean=(0, 0, 0), std=(1 / 255,) * 3, flip=False,
                            augmentation=Augmentation(blur_prob=0.0, jpeg_prob=0.5, jpeg_quality=(30, 100)))  # fmt: skip
    sigmas, qualities = [], []
    grid = np.round(np.arange(0.05, 3.0001, 0.05), 2)
    blurred = {s: Perturbation(blur_sigma=float(s)).apply(rgb).astype(np.int16) for s in grid}
    encoded = {q: Perturbation(jpeg_quality=q).apply(rgb).astype(np.int16) for q in range(1, 101)}
    for i in range(60):
        out = np.rint(blur_t(rgb, seed=5, epoch=1, index=i).transpose(1, 2, 0)).astype(np.int16)
        if not np.array_equal(out, rgb):
            sigmas.append(min(grid, key=lambda s: np.abs(blurred[s] - out).sum()))
        out = np.rint(jpeg_t(rgb, seed=5, epoch=1, index=i).transpose(1, 2, 0)).astype(np.int16)
        if not np.array_equal(out, rgb):
            q = min(encoded, key=lambda q: np.abs(encoded[q] - out).sum())
            assert np.array_equal(encoded[q], out)  # an exact re-encoding: the quality is measured, not guessed
            qualities.append(q)
    assert 15 <= len(sigmas) <= 45 and 15 <= len(qualities) <= 45  # p = 0.5 of 60 draws each
    assert 0 <= min(sigmas) and max(sigmas) <= 3.0 and max(sigmas) - min(sigmas) > 1.5
    assert 30 <= min(qualities) and max(qualities) <= 100 and max(qualities) - min(qualities) > 35
    assert aug.to_dict()["jpeg_quality"] == [30, 100]


def test_pixel_config_layers_and_refuses_unknown_keys(tmp_path):
    rc = resolve_pixel_config("npr", overrides=["recipe.lr=0.001", "workers=3", "npr.layers=[1, 1]"])
    assert rc.recipe.lr == 0.001 and rc.train.workers == 3 and rc.network.layers == (1, 1)
    assert rc.recipe.batch_size == 32  # the authors' recipe where nothing overrides it
    with pytest.raises(ConfigError, match="not a known key"):
        resolve_pixel_config("npr", overrides=["nonsense=1"])
    with pytest.raises(ConfigError, match="recipe.batch_size"):
        resolve_pixel_config("npr", overrides=["recipe.batch_size=0"])


# ------------------------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def trained(trees, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "npr"
    assert main(_train_cmd(trees, out, "--epochs", "4", "--lr", "1e-3")) == 0
    return out


def test_train_writes_a_complete_run_folder(trained):
    for name in ("config.json", "model.safetensors", "run.json", "metrics.csv", "summary.json", "threshold.json",
                 "errors.csv"):  # fmt: skip
        assert (trained / name).is_file(), name
    assert not (trained / "checkpoint").exists()  # removed once the run completed
    info = json.loads((trained / "run.json").read_text())
    assert info["method"] == "npr" and info["recipe"]["lr"] == 1e-3 and info["init"]["method"] == "scratch"
    assert info["recipe"]["lr_step_every"] == 10  # the authors' recipe where nothing overrides it
    assert info["data"]["train"]["n"] == 48 and "code_revision" in info
    metrics = pd.read_csv(trained / "metrics.csv")
    assert list(metrics["epoch"]) == [1, 2, 3, 4]
    assert metrics["val_ap"].iloc[-1] > 0.9  # nearest up-sampling is NPR's cue: learned in a few tiny epochs
    cfg = json.loads((trained / "config.json").read_text())
    assert cfg["kind"] == "network" and cfg["preprocessing"]["size"] == 32 and cfg["preprocessing"]["mode"] == "crop"


def test_evaluate_detect_and_serve_agree(trained, trees, tmp_path, capsys):
    ev = tmp_path / "eval"
    assert main(["evaluate", str(trained), "--test", str(trees["test"]), "--out", str(ev)]) == 0
    pred = pd.read_csv(ev / "predictions.csv")
    assert len(pred) == 20 and (pd.read_csv(ev / "metrics.csv")["ap"] > 0.9).all()
    det = tmp_path / "det"
    assert main(["export", str(trained), "--out", str(det)]) == 0
    assert json.loads((det / "detector.json").read_text())["kind"] == "network"
    from causalclip.detect.engine import load_detector

    engine = load_detector(det)
    got = {d.name: d.fake_probability for d in engine.score(list(pred["path"]))}
    np.testing.assert_allclose([got[p] for p in pred["path"]], pred["score"], rtol=1e-5, atol=1e-6)
    assert "network 'npr'" in repr(engine)
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from causalclip.serve.app import create_app

    path = pred["path"].iloc[0]
    with TestClient(create_app(engine)) as client:
        with open(path, "rb") as f:
            r = client.post("/v1/detect", files=[("files", (Path(path).name, f.read(), "image/png"))])
    assert r.status_code == 200, r.text
    body = r.json()
    result = body["results"][0] if "results" in body else body[0]
    assert abs(result["fake_probability"] - pred["score"].iloc[0]) < 1e-5


def test_calibrate_a_network_run_at_a_target_fpr(trained, trees, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    assert main(["calibrate", str(run), "--val", str(trees["val"]), "--target-fpr", "0.1"]) == 0
    rec = json.loads((run / "threshold.json").read_text())
    ev = tmp_path / "ev"
    assert main(["evaluate", str(run), "--test", str(trees["val"]), "--out", str(ev), "--no-balance"]) == 0
    pred = pd.read_csv(ev / "predictions.csv")
    reals = pred[pred["label"] == 0]["score"]
    assert (reals > rec["threshold"]).mean() <= 0.1  # at most 10% of the real images above it
    assert rec["method"] == "val_target_fpr" and rec["source"] == str(trees["val"])


def test_unusable_images_are_reported_and_the_run_completes(trees, tmp_path):
    bad_train = tmp_path / "train"
    _write_tree(bad_train, 12, 0)
    (bad_train / "fake" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    out = tmp_path / "run"
    assert main(_train_cmd({"train": bad_train, "val": trees["val"]}, out, "--epochs", "1")) == 0
    errors = pd.read_csv(out / "errors.csv")
    assert list(errors["path"].map(lambda p: Path(p).name)) == ["broken.png"]


def test_resume_after_sigkill_equals_an_uninterrupted_run(trees, tmp_path):
    """Kill -9 a run after its first checkpoint; the same command continues and ends with identical weights."""
    extra = ["--epochs", "3", "--set", "train.checkpoint_every=2"]
    ref = tmp_path / "ref"
    assert main(_train_cmd(trees, ref, *extra)) == 0
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "causalclip", *_train_cmd(trees, out, *extra)]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    state = out / "checkpoint" / "state.pt"
    deadline = time.monotonic() + 120
    while not state.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (out / "config.json").exists()
    resumed = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    a, b = _weights(ref), _weights(out)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    pd.testing.assert_frame_equal(
        pd.read_csv(ref / "metrics.csv").drop(columns=["train_seconds", "images_per_s"]),
        pd.read_csv(out / "metrics.csv").drop(columns=["train_seconds", "images_per_s"]),
    )


def test_resume_refuses_a_different_command(trees, tmp_path):
    out = tmp_path / "run"
    (out / "checkpoint").mkdir(parents=True)
    torch.save({"epoch": 2}, out / "checkpoint" / "state.pt")
    (out / "run.json").write_text(json.dumps({"method": "npr", "recipe": {"lr": 1.0}}))
    with pytest.raises(ValueError, match="started differently"):
        from causalclip.pixel.loop import train_network

        train_network(
            train_set=open_image_set(trees["train"]),
            val_set=open_image_set(trees["val"]),
            out=out,
            run_config=resolve_pixel_config("npr", overrides=TINY[1::2]),
        )


def test_two_gloo_processes_equal_one_process_with_the_same_global_batch(trees, tmp_path):
    """torchrun --nproc_per_node 2 (DDP, gloo) = one process with grad_accum 2: each rank takes one chunk of every
    global batch, so the gradients, and the weights after training, are the same."""
    one = tmp_path / "one"
    assert main(_train_cmd(trees, one, "--epochs", "2", "--set", "train.grad_accum=2")) == 0
    two = tmp_path / "two"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517"]
    cmd = [*torchrun, "-m", "causalclip", *_train_cmd(trees, two, "--epochs", "2")]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    a, b = _weights(one), _weights(two)
    params = [k for k in a if "running_" not in k and "num_batches" not in k]
    for k in params:  # BatchNorm running statistics are rank 0's chunks under DDP on CPU (no SyncBatchNorm)
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)
    assert json.loads((two / "run.json").read_text())["world_size"] == 2


# ------------------------------------------------------------------------------------------- authors' checkpoints


def test_import_checkpoint_writes_a_detector_that_scores_like_the_network(trees, tmp_path, capsys):
    """An NPR file in the authors' layout (a bare state dict, last layer ``fc1``) -> detector folder -> detect."""
    from causalclip.detect.engine import load_detector
    from causalclip.networks.registry import build_network
    from causalclip.pixel.predict import predict_images

    torch.manual_seed(3)
    net = build_network("npr").eval()  # the authors' full-size architecture
    state = {k.replace("fc.", "fc1.", 1) if k.startswith("fc.") else k: v for k, v in net.state_dict().items()}
    path = tmp_path / "NPR.pth"
    torch.save(state, path)
    det = tmp_path / "det"
    assert main(["import-checkpoint", str(path), "--method", "npr", "--out", str(det)]) == 0
    assert "imported" in capsys.readouterr().out
    info = json.loads((det / "detector.json").read_text())
    assert info["kind"] == "network" and info["network"]["init"] == "checkpoint"
    assert info["preprocessing"]["size"] == 224 and info["threshold"] == 0.5
    assert not any(p.suffix == ".pth" for p in det.iterdir())  # safetensors only
    images = open_image_set(trees["test"])
    engine = load_detector(det)
    want = predict_images(net, images, engine.preprocessing).scores  # the authors' network, scored directly
    got = [d.fake_probability for d in engine.score(list(images.paths))]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_import_checkpoint_refuses_a_pickle_that_would_run_code(tmp_path, capsys):
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    path = tmp_path / "evil.pth"
    torch.save({"model": Evil()}, path)
    rc = main(["import-checkpoint", str(path), "--method", "cnnspot", "--out", str(tmp_path / "det")])
    err = capsys.readouterr().err
    assert rc == 2 and str(path) in err and "refus" in err.lower()
    assert not marker.exists() and not (tmp_path / "det" / "detector.json").exists()


def test_cnnspot_starts_from_a_users_imagenet_file_and_every_record_says_so(trees, tmp_path):
    """--imagenet-weights: a torchvision-layout ResNet-50 file (with its 1000-way fc) initialises CNNSpot's trunk;
    run.json, config.json and the exported detector record it. Without it, the run says 'scratch'."""
    from causalclip.networks.registry import build_network

    torch.manual_seed(5)
    trunk = build_network("cnnspot").state_dict()  # the full-size network: the file must be ResNet-50's
    imagenet = {k: v for k, v in trunk.items() if not k.startswith("fc.")}
    imagenet |= {"fc.weight": torch.randn(1000, 2048), "fc.bias": torch.zeros(1000)}  # torchvision's classifier
    path = tmp_path / "resnet50-0676ba61.pth"
    torch.save(imagenet, path)
    out = tmp_path / "run"
    args = ["train", "--head", "cnnspot", "--train", str(trees["train"]), "--val", str(trees["val"]), "--out", str(out),
            "-q", "--epochs", "1", "--lr", "1e-9", "--imagenet-weights", str(path), "--set", "recipe.train_crop=32",
            "--set", "recipe.test_crop=32", "--set", "recipe.train_resize=null", "--set", "recipe.batch_size=8",
            "--set", "train.workers=0", "--set", "recipe.blur_prob=0", "--set", "recipe.jpeg_prob=0"]  # fmt: skip
    assert main(args) == 0
    run = json.loads((out / "run.json").read_text())
    assert run["init"]["method"] == "imagenet" and run["init"]["weights"] == str(path.resolve())
    weights = _weights(out)
    # lr 1e-9: the trunk is still the file's (up to Adam's first tiny step), the fc is not the file's 1000-way one
    torch.testing.assert_close(weights["conv1.weight"], imagenet["conv1.weight"], atol=1e-6, rtol=0)
    assert weights["fc.weight"].shape == (1, 2048)
    det = tmp_path / "det"
    assert main(["export", str(out), "--out", str(det)]) == 0
    assert json.loads((det / "detector.json").read_text())["network"]["init"] == "imagenet"


def test_newcomer_mistakes_get_clear_answers(trained, trees, tmp_path, capsys):
    # the same test folder twice would count every image twice
    assert main(["evaluate", str(trained), "--test", str(trees["test"]), str(trees["test"])]) == 2
    assert "given twice" in capsys.readouterr().err
    # two folders whose generator names collide can be named NAME=DIR
    ev = tmp_path / "ev"
    argv = ["evaluate", str(trained), "--test", f"a={trees['test']}", f"b={trees['val']}", "--out", str(ev), "-q"]
    assert main(argv) == 0
    assert set(pd.read_csv(ev / "metrics.csv")["generator"]) == {"a", "b", "mean"}
    # a key of another network is a mistake when one network is trained
    with pytest.raises(ConfigError, match="this run trains 'npr'"):
        resolve_pixel_config("npr", overrides=["cnnspot.layers=[1, 1, 1, 1]"])
    # a run folder given to detect: the error says how to make a detector of it
    assert main(["detect", str(trained), str(trees["test"] / "real" / "000.png")]) == 2
    assert "causalclip export" in capsys.readouterr().err
    # held-out real photos alone are enough for a target false-positive rate
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    assert main(["calibrate", str(run), "--val", str(trees["val"] / "real"), "--target-fpr", "0.2"]) == 0
    rec = json.loads((run / "threshold.json").read_text())
    assert rec["n_fake"] == 0 and rec["n_real"] == 10 and rec["source"] == str(trees["val"] / "real")
