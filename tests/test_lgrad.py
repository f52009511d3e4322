"""LGrad (causalclip.networks.lgrad, causalclip gradient-maps): the input gradient against central finite
differences, the discriminator's state dict against the authors' genforce key list (written out below), the
authors' 8-bit normalisation recomputed in NumPy, cached PNGs against the maps computed inside the network, the
resumable cache command, and the import of the authors' two files (classifier + transformation model)."""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file

from causalclip.cli.gradient_maps import write_gradient_maps
from causalclip.cli.main import main
from causalclip.networks import build_network, get_network_method, network_config_dict
from causalclip.networks.importer import CheckpointImportError, import_network, read_lgrad_transform
from causalclip.networks.lgrad import (
    DCGANDiscriminator,
    DCGANDiscriminatorConfig,
    LGradConfig,
    StyleGANDiscriminator,
    StyleGANDiscriminatorConfig,
    for_raw_images,
    gradient_map,
    input_gradient,
)

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
TINY_D = {"resolution": 16, "fmaps_base": 64, "fmaps_max": 8}
TINY_NET = {**TINY_D, "layers": [1, 1, 1, 1], "widths": [4, 4, 4, 8], "stem_width": 8}

# genforce StyleGANDiscriminator(resolution=256, label_size=0) as the authors load it (state dict of
# karras2019stylegan-bedrooms-256x256_discriminator.pth): "name shape". nf(res) = min(16384 // res, 512).
AUTHORS_D256 = """
lod -
input0.weight 64,3,1,1
input0.bias 64
layer0.weight 64,64,3,3
layer0.bias 64
layer1.weight 128,64,3,3
layer1.bias 128
layer1.blur.kernel 64,1,3,3
input1.weight 128,3,1,1
input1.bias 128
layer2.weight 128,128,3,3
layer2.bias 128
layer3.weight 256,128,3,3
layer3.bias 256
layer3.blur.kernel 128,1,3,3
input2.weight 256,3,1,1
input2.bias 256
layer4.weight 256,256,3,3
layer4.bias 256
layer5.weight 512,256,3,3
layer5.bias 512
layer5.blur.kernel 256,1,3,3
input3.weight 512,3,1,1
input3.bias 512
layer6.weight 512,512,3,3
layer6.bias 512
layer7.weight 512,512,3,3
layer7.bias 512
layer7.blur.kernel 512,1,3,3
input4.weight 512,3,1,1
input4.bias 512
layer8.weight 512,512,3,3
layer8.bias 512
layer9.weight 512,512,3,3
layer9.bias 512
layer9.blur.kernel 512,1,3,3
input5.weight 512,3,1,1
input5.bias 512
layer10.weight 512,512,3,3
layer10.bias 512
layer11.weight 512,512,3,3
layer11.bias 512
layer11.blur.kernel 512,1,3,3
input6.weight 512,3,1,1
input6.bias 512
layer12.weight 512,513,3,3
layer12.bias 512
layer13.weight 512,8192
layer13.bias 512
layer14.weight 1,512
layer14.bias 1
"""


def _parse(text: str) -> dict[str, tuple[int, ...]]:
    rows = {}
    for line in text.strip().splitlines():
        name, shape = line.split()
        rows[name] = () if shape == "-" else tuple(int(s) for s in shape.split(","))
    return rows


def _random_discriminator(config: StyleGANDiscriminatorConfig, seed: int = 0) -> StyleGANDiscriminator:
    """Weights N(0, 1) as StyleGAN's (the weight scaling is applied at run time), biases small, blur kept."""
    d = StyleGANDiscriminator(config)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in d.state_dict().items():
            if not name.endswith("blur.kernel"):
                t.copy_(torch.randn(t.shape, generator=g) * (0.1 if name.endswith("bias") else 1.0))
    return d.eval()


def _authors_file(d: StyleGANDiscriminator, path: Path, seed: int = 1) -> Path:
    """d's weights in the authors' layout: plus lod = 0 and FromRGB layers of the lower levels of detail."""
    g = torch.Generator().manual_seed(seed)
    state = OrderedDict(lod=torch.zeros(()))
    nf = d.config.channels
    final = int(np.log2(d.config.resolution))
    for b, res_log2 in enumerate(range(final, 1, -1)):
        if b:
            state[f"input{b}.weight"] = torch.randn((nf(2**res_log2), 3, 1, 1), generator=g)
            state[f"input{b}.bias"] = torch.zeros(nf(2**res_log2))
    state.update(d.state_dict())
    torch.save(state, path)
    return path


def _tiny_lgrad(tmp_path: Path, **overrides) -> tuple[torch.nn.Module, Path]:
    d = _random_discriminator(StyleGANDiscriminatorConfig(**TINY_D))
    path = tmp_path / "disc.safetensors"
    save_file({k: v.contiguous() for k, v in d.state_dict().items()}, str(path))
    torch.manual_seed(0)
    net = build_network("lgrad", {**TINY_NET, "transform": str(path), **overrides})
    net.fit()
    return net.eval(), path


def _normalised(pixels_uint8: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(pixels_uint8).permute(0, 3, 1, 2).float() / 255
    return (x - MEAN) / STD


# ---- the gradient ---------------------------------------------------------------------------------------------


def _assert_gradient_matches_finite_differences(d: torch.nn.Module, x: torch.Tensor) -> None:
    """input_gradient of ``d`` (float64) at ``x`` against central finite differences, element by element."""
    grad = input_gradient(d, x)
    assert grad.dtype == torch.float64 and grad.shape == x.shape
    eps = 1e-6
    fd = torch.empty_like(x)
    with torch.no_grad():
        for idx in np.ndindex(*x.shape):
            hi, lo = x.clone(), x.clone()
            hi[idx] += eps
            lo[idx] -= eps
            fd[idx] = (d(hi).sum() - d(lo).sum()) / (2 * eps)
    torch.testing.assert_close(grad, fd, rtol=1e-5, atol=1e-7)
    assert grad.abs().max() > 1e-3  # not a vacuous agreement of two zeros


def test_input_gradient_matches_central_finite_differences():
    d = _random_discriminator(StyleGANDiscriminatorConfig(resolution=8, fmaps_base=32, fmaps_max=4), seed=3).double()
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(4)) * 2 - 1
    _assert_gradient_matches_finite_differences(d, x)


def test_gradient_of_one_image_does_not_depend_on_its_batch():
    d = _random_discriminator(StyleGANDiscriminatorConfig(**TINY_D))
    x = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    together = gradient_map(d, x)
    alone = torch.cat([gradient_map(d, x[i : i + 1]) for i in range(3)])
    assert torch.equal(together, alone)


def test_gradient_map_is_the_authors_8_bit_normalisation_of_the_gradient():
    d = _random_discriminator(StyleGANDiscriminatorConfig(**TINY_D))
    pixels = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(6))
    grad = input_gradient(d, pixels * 2 - 1).numpy()
    ours = gradient_map(d, pixels).numpy()
    for i in range(2):
        img = grad[i].transpose(1, 2, 0).astype(np.float64)  # the authors' normlize_np on (H, W, 3)
        img -= img.min()
        img = img / img.max() * 255.0
        ref = np.rint(img).transpose(2, 0, 1)
        assert np.abs(ours[i] - ref).max() <= 1  # float32 vs float64 rounding at .5 only
        assert (ours[i] == ref).mean() > 0.99
        assert ours[i].min() == 0 and ours[i].max() == 255
    # Images of another size are resized to the discriminator's resolution first (the authors' Resize((256, 256))).
    big = torch.rand(1, 3, 40, 24, generator=torch.Generator().manual_seed(7))
    resized = F.interpolate(big, size=(16, 16), mode="bilinear", align_corners=False, antialias=True)
    assert torch.equal(gradient_map(d, big), gradient_map(d, resized))


# ---- the discriminator and its files --------------------------------------------------------------------------


def test_discriminator_keys_are_the_authors_without_lod_and_lower_lod_inputs():
    authors = _parse(AUTHORS_D256)
    ours = {k: tuple(v.shape) for k, v in StyleGANDiscriminator().state_dict().items()}
    dropped = {k for k in authors if k == "lod" or (k.startswith("input") and not k.startswith("input0."))}
    assert len(dropped) == 13
    assert ours == {k: v for k, v in authors.items() if k not in dropped}
    # Every weight is a buffer: nothing of the transformation model is trained.
    assert list(StyleGANDiscriminator().parameters()) == []


def test_authors_discriminator_file_imports_and_scores_the_same(tmp_path):
    cfg = StyleGANDiscriminatorConfig(**TINY_D)
    d = _random_discriminator(cfg)
    path = _authors_file(d, tmp_path / "karras2019stylegan-bedrooms-256x256_discriminator.pth")
    again = StyleGANDiscriminator(cfg)
    again.load_state_dict(read_lgrad_transform(path, cfg))
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        assert torch.equal(again(x), d(x))
    # lod other than 0, a wrong shape, a damaged blur kernel: refused, naming the file.
    state = torch.load(path, weights_only=True)
    for key, value, match in [
        ("lod", torch.tensor(1.0), "lod"),
        ("layer0.weight", torch.zeros(3, 3), "shape mismatch"),
        ("layer1.blur.kernel", torch.ones_like(state["layer1.blur.kernel"]), "blur kernel"),
    ]:
        bad = dict(state)
        bad[key] = value
        torch.save(bad, tmp_path / "bad.pth")
        with pytest.raises(CheckpointImportError, match=match) as err:
            read_lgrad_transform(tmp_path / "bad.pth", cfg)
        assert "bad.pth" in str(err.value)


def test_network_without_transform_weights_refuses_to_score_raw_images():
    net = build_network("lgrad", TINY_NET).eval()
    with pytest.raises(RuntimeError, match="transformation model's weights are not set"):
        net(torch.zeros(1, 3, 16, 16))
    with pytest.raises(ValueError, match="lgrad.transform"):
        net.fit()


# ---- the network ----------------------------------------------------------------------------------------------


def test_raw_image_network_is_the_classifier_on_the_cached_map(tmp_path):
    net, disc = _tiny_lgrad(tmp_path)
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    for i in range(3):
        (tmp_path / "data" / "fake").mkdir(parents=True, exist_ok=True)
        (tmp_path / "data" / "real").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rgb[i]).save(tmp_path / "data" / ("fake" if i else "real") / f"{i}.png")
    write_gradient_maps(tmp_path / "data", tmp_path / "maps", transform=disc, **TINY_D)
    cached = np.stack(
        [np.asarray(Image.open(tmp_path / "maps" / ("fake" if i else "real") / f"{i}.png")) for i in range(3)]
    )
    inside = net.gradient_input(_normalised(rgb))  # normalised maps computed in forward
    inside_8bit = torch.round((inside * STD + MEAN) * 255).permute(0, 2, 3, 1).numpy()
    assert np.abs(inside_8bit - cached).max() <= 1 and (inside_8bit == cached).mean() > 0.99
    grad_net = build_network("lgrad", {**network_config_dict("lgrad", net), "input": "gradient"}).eval()
    grad_net.load_state_dict(net.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(net(_normalised(rgb)), grad_net(_normalised(cached)), atol=2e-3, rtol=0)


def test_raw_image_contract_gradients_reach_the_classifier_only(tmp_path):
    net, _ = _tiny_lgrad(tmp_path)
    frozen = {k: v.clone() for k, v in net.discriminator.state_dict().items()}
    net.train()
    x = _normalised(np.random.default_rng(1).integers(0, 256, (2, 40, 40, 3), dtype=np.uint8))
    logits = net(x)
    assert logits.shape == (2,) and torch.isfinite(logits).all()
    F.binary_cross_entropy_with_logits(logits, torch.tensor([0.0, 1.0])).backward()
    names = [n for n, _ in net.named_parameters()]
    assert names and not any(n.startswith("discriminator.") for n in names)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())
    opt = torch.optim.Adam(net.parameters(), lr=0.1)
    opt.step()
    assert all(torch.equal(frozen[k], v) for k, v in net.discriminator.state_dict().items())
    net.eval()
    with torch.no_grad():
        assert torch.equal(net(x), net(x.clone()))


def test_detector_config_scores_raw_images_and_the_recipe_is_the_authors():
    cfg = LGradConfig(input="gradient", transform="d.pth")
    assert for_raw_images(cfg) == LGradConfig(input="image", transform="d.pth")
    spec = get_network_method("lgrad")
    assert spec.detector_config is for_raw_images and spec.init == "imagenet"
    r = spec.recipe
    assert (r.batch_size, r.lr, r.lr_step_every, r.lr_step_gamma, r.epochs) == (16, 5e-4, 10, 0.8, 100)
    assert (r.train_resize, r.train_resize_mode, r.train_crop, r.test_crop, r.blur_prob) == (256, "square", 224, 256, 0)


# ---- the cache command ----------------------------------------------------------------------------------------


def _tree(root: Path, n: int = 3) -> Path:
    rng = np.random.default_rng(2)
    for label in ("real", "fake"):
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(root / label / f"{i}.jpg")
    (root / "fake" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    return root


def test_gradient_maps_command_mirrors_the_layout_lists_errors_and_resumes(tmp_path):
    d = _random_discriminator(StyleGANDiscriminatorConfig(**TINY_D))
    disc = _authors_file(d, tmp_path / "disc.pth")
    root, out = _tree(tmp_path / "data"), tmp_path / "maps"
    args = ["gradient-maps", str(root), "--transform", str(disc), "--out", str(out), "--resolution", "16",
            "--fmaps-base", "64", "--fmaps-max", "8", "--batch-size", "2"]  # fmt: skip
    assert main(args) == 0
    pngs = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert pngs == [f"{lab}/{i}.png" for lab in ("fake", "real") for i in range(3)]
    listing = pd.read_csv(out / "manifest.csv")
    assert sorted(listing["path"]) == pngs and set(listing["label"]) == {0, 1}
    errors = pd.read_csv(out / "errors.csv")
    assert list(errors["path"]) == ["fake/broken.png"]
    info = json.loads((out / "gradient_maps.json").read_text())
    assert info["n_maps"] == 6 and info["settings"]["discriminator"]["resolution"] == 16
    # The PNG is the map of the decoded, resized image, losslessly.
    rgb = np.array(Image.open(root / "real" / "1.jpg").convert("RGB"))
    x = F.interpolate(torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255, size=(16, 16), mode="bilinear",
                      align_corners=False, antialias=True)  # fmt: skip
    ref = gradient_map(d, x)[0].permute(1, 2, 0).numpy().astype(np.uint8)
    assert np.array_equal(np.asarray(Image.open(out / "real" / "1.png")), ref)
    # Resume: a missing map is written, existing ones are kept untouched.
    (out / "fake" / "2.png").unlink()
    kept = (out / "real" / "0.png").stat().st_mtime_ns
    summary = write_gradient_maps(root, out, transform=disc, resolution=16, fmaps_base=64, fmaps_max=8)
    assert summary["n_written_now"] == 1 and summary["n_maps"] == 6
    assert (out / "real" / "0.png").stat().st_mtime_ns == kept
    # The folder layout is unchanged: the same --layout lists the maps with the same labels.
    from causalclip.images.layouts import list_samples

    assert len(list_samples(out, "folders").samples) == 6
    # Another transformation model into the same folder is refused.
    other = _authors_file(_random_discriminator(StyleGANDiscriminatorConfig(**TINY_D), seed=9), tmp_path / "o.pth")
    with pytest.raises(ValueError, match="another transformation model"):
        write_gradient_maps(root, out, transform=other, resolution=16, fmaps_base=64, fmaps_max=8)


# ---- the authors' checkpoints ---------------------------------------------------------------------------------


def test_authors_classifier_and_discriminator_import_as_one_network(tmp_path):
    net, _ = _tiny_lgrad(tmp_path)
    with torch.no_grad():
        for name, t in net.state_dict().items():
            if name.endswith("running_var"):
                t.uniform_(0.5, 1.5)
    classifier = {k: v for k, v in net.state_dict().items() if not k.startswith("discriminator.")}
    torch.save({"model": classifier, "optimizer": {}, "total_steps": 10}, tmp_path / "LGrad.pth")
    disc = _authors_file(net.discriminator, tmp_path / "disc.pth")
    with pytest.raises(CheckpointImportError, match="pass transform="):
        import_network("lgrad", tmp_path / "LGrad.pth", config=TINY_NET)
    imported, report = import_network("lgrad", tmp_path / "LGrad.pth", config=TINY_NET, transform=disc)
    assert report["auxiliary"]["transform"]["source"] == str(disc) and report["container"] == "model"
    x = _normalised(np.random.default_rng(3).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8))
    with torch.no_grad():
        assert torch.equal(imported(x), net(x))
    assert imported.config.input == "image"


# ---- end to end: train on the cache, detect on raw images ----------------------------------------------------


def test_train_on_cached_maps_then_a_raw_image_detector_scores_like_the_run(tmp_path):
    from causalclip.detector.folder import read_detector, write_network_detector
    from causalclip.pixel.folder import load_network

    rng = np.random.default_rng(0)
    for split, n in (("train", 8), ("val", 4)):
        for lab in ("real", "fake"):
            (tmp_path / split / lab).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(
                    tmp_path / split / lab / f"{i}.png"
                )
    d = _random_discriminator(StyleGANDiscriminatorConfig(**TINY_D))
    disc = tmp_path / "disc.safetensors"
    save_file({k: v.contiguous() for k, v in d.state_dict().items()}, str(disc))
    for split in ("train", "val"):
        write_gradient_maps(tmp_path / split, tmp_path / f"g{split}", transform=disc, **TINY_D)
    sets = [f"lgrad.{k}={json.dumps(v)}" for k, v in TINY_NET.items()]
    sets += ["lgrad.input=gradient", f"lgrad.transform={disc}", "recipe.train_crop=16", "recipe.test_crop=16",
             "recipe.train_resize=null", "recipe.batch_size=8", "recipe.epochs=1", "train.workers=0"]  # fmt: skip
    args = ["train", "--head", "lgrad", "--train", str(tmp_path / "gtrain"), "--val", str(tmp_path / "gval"),
            "--out", str(tmp_path / "run"), "-q"]  # fmt: skip
    assert main(args + [a for s in sets for a in ("--set", s)]) == 0
    run = load_network(tmp_path / "run")
    assert run.network.config.input == "gradient"
    assert all(torch.equal(run.network.discriminator.state_dict()[k], v) for k, v in d.state_dict().items())
    # The detector gets the run's weights (classifier + transformation model) with the raw-image config.
    raw_cfg = get_network_method("lgrad").detector_config(run.network.config)
    net = build_network("lgrad", raw_cfg)
    net.load_state_dict(run.network.state_dict())
    write_network_detector(tmp_path / "det", network=net, method="lgrad", config=raw_cfg, init=run.info["init"])
    det = read_detector(tmp_path / "det")
    raw = np.stack([np.asarray(Image.open(tmp_path / "val" / "fake" / f"{i}.png")) for i in range(4)])
    maps = np.stack([np.asarray(Image.open(tmp_path / "gval" / "fake" / f"{i}.png")) for i in range(4)])
    with torch.no_grad():
        from_raw = torch.sigmoid(det.head(_normalised(raw)))
        from_cache = torch.sigmoid(run.network(_normalised(maps)))
    torch.testing.assert_close(from_raw, from_cache, atol=2e-3, rtol=0)


# ---- the DCGAN transformation model (the demo's GAN families' discriminators) ----------------------------------


def _demo_discriminator(size: int = 32, width: int = 4, seed: int = 0) -> torch.nn.Module:
    """The demo's own DCGAN discriminator, its BatchNorm statistics set by a few training-mode passes, in eval mode."""
    from causalclip.demo.generators import _dcgan_init, _Discriminator

    torch.manual_seed(seed)
    d = _Discriminator(size=size, width=width)
    d.apply(_dcgan_init)
    with torch.no_grad():
        for _ in range(3):
            d(torch.rand(8, 3, size, size) * 2 - 1)
    return d.eval()


def _save(state: dict, path: Path) -> Path:
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


def test_dcgan_input_gradient_matches_central_finite_differences():
    cfg = DCGANDiscriminatorConfig(resolution=16, width=2)
    d = DCGANDiscriminator(cfg)
    g = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for name, t in d.state_dict().items():
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif t.is_floating_point():
                t.copy_(torch.randn(t.shape, generator=g) * 0.5)
    d = d.double()
    x = torch.rand(2, 3, 16, 16, dtype=torch.float64, generator=g) * 2 - 1
    _assert_gradient_matches_finite_differences(d, x)
    assert list(d.parameters()) == []  # frozen: every weight a buffer


def test_demo_gan_discriminator_loads_key_for_key_and_scores_the_same(tmp_path):
    demo = _demo_discriminator()
    path = _save(demo.state_dict(), tmp_path / "discriminator.safetensors")
    cfg = DCGANDiscriminatorConfig(resolution=32, width=4)
    ours = DCGANDiscriminator(cfg)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in demo.state_dict().items()}
    assert not ours.loaded
    ours.load_state_dict(read_lgrad_transform(path, cfg), strict=True)
    assert ours.loaded
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(ours(x), demo(x), rtol=0, atol=1e-6)
    torch.testing.assert_close(input_gradient(ours, x), input_gradient(demo, x), rtol=0, atol=1e-6)
    # BatchNorm on its running statistics, whatever the mode: a map never depends on its batch.
    ours.train()
    pixels = (x + 1) / 2
    together = gradient_map(ours, pixels)
    assert torch.equal(together, torch.cat([gradient_map(ours, pixels[i : i + 1]) for i in range(4)]))
    # LGrad with it: fit() loads the file, the classifier trains, the transform stays as loaded.
    net = build_network("lgrad", {**TINY_NET, "transform_arch": "dcgan", "resolution": 32, "dcgan_width": 4,
                                  "transform": str(path)})  # fmt: skip
    net.fit()
    net.train()
    logits = net((torch.rand(2, 3, 40, 40) - 0.45) / 0.23)
    F.binary_cross_entropy_with_logits(logits, torch.tensor([0.0, 1.0])).backward()
    assert not any(n.startswith("discriminator.") for n, _ in net.named_parameters())
    assert all(torch.equal(net.discriminator.state_dict()[k], v) for k, v in demo.state_dict().items())
    # The cache command with --arch dcgan writes the same maps.
    (tmp_path / "data" / "fake").mkdir(parents=True)
    (tmp_path / "data" / "real").mkdir(parents=True)
    rgb = np.random.default_rng(4).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "data" / "fake" / "0.png")
    Image.fromarray(rgb[::-1].copy()).save(tmp_path / "data" / "real" / "0.png")
    args = ["gradient-maps", str(tmp_path / "data"), "--transform", str(path), "--out", str(tmp_path / "maps"),
            "--arch", "dcgan", "--resolution", "32", "--width", "4"]  # fmt: skip
    assert main(args) == 0
    ref = gradient_map(ours, torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255)
    cached = np.asarray(Image.open(tmp_path / "maps" / "fake" / "0.png"))
    assert np.array_equal(cached, ref[0].permute(1, 2, 0).numpy().astype(np.uint8))
    info = json.loads((tmp_path / "maps" / "gradient_maps.json").read_text())
    assert info["settings"]["discriminator"] == {"arch": "dcgan", "resolution": 32, "width": 4}


def test_a_transform_file_that_does_not_fit_is_refused_naming_it(tmp_path):
    dcgan_cfg = DCGANDiscriminatorConfig(resolution=32, width=4)
    demo_file = _save(_demo_discriminator().state_dict(), tmp_path / "tconv-disc.safetensors")
    style = _random_discriminator(StyleGANDiscriminatorConfig(**TINY_D))
    style_file = _save(style.state_dict(), tmp_path / "stylegan-disc.safetensors")
    # the other architecture: refused, naming the file and the setting that fits it
    with pytest.raises(CheckpointImportError, match="stylegan-disc.safetensors.*transform_arch=stylegan"):
        read_lgrad_transform(style_file, dcgan_cfg)
    with pytest.raises(CheckpointImportError, match="tconv-disc.safetensors.*transform_arch=dcgan"):
        read_lgrad_transform(demo_file, StyleGANDiscriminatorConfig(resolution=32, fmaps_base=64, fmaps_max=8))
    net = build_network("lgrad", {**TINY_NET, "resolution": 32, "transform": str(demo_file)})  # stylegan by default
    with pytest.raises(ValueError, match="tconv-disc.safetensors.*transform_arch=dcgan"):
        net.fit()
    # another width or size: every mismatch listed
    with pytest.raises(CheckpointImportError, match="tconv-disc.safetensors.*shape mismatch"):
        read_lgrad_transform(demo_file, DCGANDiscriminatorConfig(resolution=32, width=8))
    with pytest.raises(CheckpointImportError, match="tconv-disc.safetensors.*missing"):
        read_lgrad_transform(demo_file, DCGANDiscriminatorConfig(resolution=64, width=4))
    # damaged values: a negative BatchNorm variance, a NaN weight
    state = _demo_discriminator().state_dict()
    for key, match in (("net.3.running_var", "BatchNorm variances must be > 0"), ("net.0.weight", "non-finite")):
        bad = {k: v.clone() for k, v in state.items()}
        bad[key].view(-1)[0] = -1.0 if "var" in key else float("nan")
        with pytest.raises(CheckpointImportError, match=f"bad.safetensors: {match}"):
            read_lgrad_transform(_save(bad, tmp_path / "bad.safetensors"), dcgan_cfg)
