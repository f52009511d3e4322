"""The weight-free forensic backbones (causalclip.backbones.forensic): against references computed another way, the property
Durall et al. predict, and selection by spec string like any backbone."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_sample_images
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from causalclip import open_feature_set
from causalclip.backbones import forensic
from causalclip.backbones.base import BackboneError
from causalclip.backbones.forensic import ConcatBackbone, NPRBackbone, SpectrumBackbone, parse_spec
from causalclip.backbones.registry import load_backbone
from causalclip.cli.main import main


def photo_crops(n: int, size: int = 64, seed: int = 0) -> np.ndarray:
    """(n, size, size, 3) uint8 crops of the two photos scikit-learn ships (china.jpg, flower.jpg), no download."""
    images = load_sample_images().images
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        img = images[i % 2]
        y, x = rng.integers(0, img.shape[0] - size), rng.integers(0, img.shape[1] - size)
        out.append(img[y : y + size, x : x + size])
    return np.stack(out)


def to_pixels(rgb: np.ndarray) -> torch.Tensor:
    """uint8 (n, s, s, 3) -> the forensic backbones' input: (n, 3, s, s) float in [0, 1]."""
    return torch.from_numpy(rgb).permute(0, 3, 1, 2).float() / 255.0


def reference_profile(rgb: np.ndarray) -> np.ndarray:
    """Durall et al.'s recipe in plain numpy, one image at a time (a loop over rings, no torch)."""
    grey = rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    mag = np.log(np.abs(np.fft.fftshift(np.fft.fft2(grey))) + 1e-3)
    c = grey.shape[0] // 2
    yy, xx = np.indices(grey.shape)
    r = np.floor(np.hypot(yy - c, xx - c)).astype(int)
    prof = np.array([mag[r == k].mean() for k in range(r.max() + 1)])[1:]
    return prof - prof.mean()


def test_spectrum_equals_a_numpy_reference():
    crops = photo_crops(4)
    bb = SpectrumBackbone(size=64)
    got = bb(to_pixels(crops)).numpy()
    assert got.shape == (4, 45) and bb.dim == 45
    want = np.stack([reference_profile(c) for c in crops])
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_spectrum_ignores_contrast_and_brightness():
    x = to_pixels(photo_crops(3))
    bb = SpectrumBackbone(size=64)
    np.testing.assert_allclose(bb(0.5 * x).numpy(), bb(x).numpy(), atol=1e-3)  # contrast: a constant in log
    np.testing.assert_allclose(bb(0.8 * x + 0.1).numpy(), bb(0.8 * x).numpy(), atol=1e-3)  # brightness: DC only


def transposed_conv_copy(rgb: np.ndarray, seed: int = 0) -> np.ndarray:
    """Each image halved (2x2 means) and brought back to full size by a stride-2 transposed convolution with a
    seeded random 4x4 kernel per channel, as a GAN generator's last layer up-samples."""
    x = to_pixels(rgb)
    small = torch.nn.functional.avg_pool2d(x, 2)
    g = torch.Generator().manual_seed(seed)
    conv = torch.nn.ConvTranspose2d(3, 3, 4, stride=2, padding=1, groups=3, bias=False)
    with torch.no_grad():
        conv.weight.copy_(0.25 + 0.1 * torch.randn(conv.weight.shape, generator=g))  # sums to ~1 per phase
        up = conv(small).clamp(0, 1)
    return (up * 255).round().byte().permute(0, 2, 3, 1).numpy()


def cv_accuracy(a: np.ndarray, b: np.ndarray) -> float:
    x = np.concatenate([a, b])
    y = np.r_[np.zeros(len(a)), np.ones(len(b))]
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    return float(cross_val_score(clf, x, y, cv=5).mean())


def test_spectrum_separates_images_from_transposed_conv_copies():
    """Durall et al. (2020): up-convolution does not reproduce the spectrum's high-frequency part: the copy's
    profile falls short in the upper band and has the stride-2 checkerboard's peak at the corner frequencies
    (radius ~ 32 * sqrt 2 for 64 px), image by image. A linear classifier separates originals from copies; two
    sets of originals it cannot separate."""
    bb = SpectrumBackbone(size=64)
    orig = photo_crops(60, seed=1)
    copies = transposed_conv_copy(orig)
    f_orig, f_copy = bb(to_pixels(orig)).numpy(), bb(to_pixels(copies)).numpy()
    diff = f_copy - f_orig
    upper_band, corner = slice(14, 30), slice(-3, None)  # rings 15-30; the last three rings (42-45)
    assert (diff[:, upper_band].mean(1) < 0).mean() >= 0.95
    assert (diff[:, corner].mean(1) > 0).mean() >= 0.95
    assert cv_accuracy(f_orig, f_copy) >= 0.95
    other = bb(to_pixels(photo_crops(60, seed=2))).numpy()
    assert cv_accuracy(f_orig, other) <= 0.75  # the control: real vs real is not separable


def test_npr_sees_the_upsampling_grid():
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    nearest = noise.repeat(2, axis=1).repeat(2, axis=2)  # x2 nearest: every 2x2 cell is constant
    bb = NPRBackbone(size=64)
    assert bb.dim == 90
    f_up = bb(to_pixels(nearest)).numpy()
    f_noise = bb(to_pixels(rng.integers(0, 256, (2, 64, 64, 3), dtype=np.uint8))).numpy()
    periodic_up, periodic_noise = f_up[:, 18:], f_noise[:, 18:]
    # i.i.d. noise has no preferred grid: every phase deviates little from the mean
    assert np.abs(periodic_noise).max() < 0.1
    # nearest-upsampled: phase (0, 0) cells are constant, so its residuals sit at the floor, far below the mean
    phase00 = periodic_up.reshape(2, 3, 4, 6)[:, :, 0, :]
    assert (phase00 < -3).all()


def test_specs_select_backbones_like_any_other(tmp_path):
    assert parse_spec("openai/clip-vit-large-patch14") is None
    assert parse_spec("spectrum") == [("spectrum", {})]
    assert parse_spec("spectrum:size=64,normalize=dc+npr") == [
        ("spectrum", {"size": 64, "normalize": "dc"}),
        ("npr", {}),
    ]
    assert parse_spec("/models/clip+npr:size=32") == [("clip", {"model": "/models/clip"}), ("npr", {"size": 32})]
    (tmp_path / "spectrum").mkdir()
    assert parse_spec(str(tmp_path / "spectrum")) is None  # an existing folder is a CLIP folder, whatever its name
    both = load_backbone("spectrum:size=64+npr:size=32", precision="auto")
    assert isinstance(both, ConcatBackbone) and both.dim == 45 + 90 and both.precision == "float32"
    assert both.preprocessing.size == 64 and both.preprocessing.mean == (0.0, 0.0, 0.0)
    x = to_pixels(photo_crops(2))
    f = both(x)
    np.testing.assert_allclose(f[:, :45].numpy(), SpectrumBackbone(size=64)(x).numpy(), atol=1e-5)
    np.testing.assert_allclose(f[:, 45:].numpy(), NPRBackbone(size=32)(x[..., 16:48, 16:48]).numpy(), atol=1e-5)
    assert [p["name"] for p in both.describe()["parts"]] == ["spectrum", "npr"]
    for bad, match in (
        ("spectrum:size=4", "size must be"),
        ("spectrum:foo=1", "foo"),
        ("spectrum:normalize=max", "normalize"),
        ("spectrum++npr", "empty part"),
    ):
        with pytest.raises(BackboneError, match=match):
            load_backbone(bad)
    with pytest.raises(BackboneError, match="CLIP backbones only"):
        load_backbone("npr", normalize=True)


def test_extract_command_with_the_spectrum_backbone(tmp_path, capsys):
    root = tmp_path / "data"
    crops = photo_crops(6, size=48)
    for label, images in (("real", crops), ("fake", transposed_conv_copy(crops))):
        (root / label).mkdir(parents=True)
        for i, rgb in enumerate(images):
            Image.fromarray(rgb).save(root / label / f"{i}.png")
    code = main(
        [
            "extract",
            str(root),
            "--layout",
            "folders",
            "--backbone",
            "spectrum:size=48",
            "--out",
            str(tmp_path / "f"),
            "-q",
            "--workers",
            "0",
        ]
    )
    assert code == 0, capsys.readouterr().err
    fs = open_feature_set(tmp_path / "f")
    assert fs.dim == 33 and len(fs) == 12
    assert fs.meta["backbone"]["name"] == "spectrum" and fs.meta["precision"] == "float32"
    first = fs.samples.index[fs.samples["path"] == "real/0.png"][0]
    want = reference_profile(np.asarray(Image.open(root / "real" / "0.png")))
    np.testing.assert_allclose(fs.take([first])[0], want, atol=5e-3)  # float16 storage


def test_combined_with_clip(tmp_path):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    vision = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        image_size=224,
        patch_size=32,
        projection_dim=16,
    )
    folder = tmp_path / "tiny-clip"
    transformers.CLIPVisionModelWithProjection(transformers.CLIPVisionConfig(**vision)).save_pretrained(folder)
    clip = load_backbone(str(folder), precision="fp32")
    both = load_backbone(f"{folder}+spectrum:size=64", precision="fp32")
    assert both.dim == 16 + 45 and both.preprocessing == clip.preprocessing
    rgb = photo_crops(2, size=100)
    pixels = torch.from_numpy(np.stack([clip.preprocessing(r) for r in rgb]))  # CLIP's crop: 100 px zero-padded
    f = both(pixels)
    np.testing.assert_allclose(f[:, :16].numpy(), clip(pixels).numpy(), atol=1e-5)
    centre = rgb[:, 18:82, 18:82]  # the centre 64 x 64 of the 100 x 100 image (inside the padded 224 canvas)
    np.testing.assert_allclose(f[:, 16:].numpy(), SpectrumBackbone(size=64)(to_pixels(centre)).numpy(), atol=1e-4)


def test_random_clip_is_seeded_and_labelled(monkeypatch):
    pytest.importorskip("transformers")
    tiny = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        patch_size=32,
        projection_dim=16,
    )
    monkeypatch.setitem(forensic.CLIP_ARCHS, "tiny-test", tiny)  # the published shapes are too slow for a unit test
    rand = load_backbone("clip-random:arch=tiny-test,seed=3", precision="fp32")
    d = rand.describe()
    assert d["name"] == "clip-random" and "RANDOM" in d["weights"] and d["arch"] == "tiny-test" and rand.dim == 16
    x = torch.from_numpy(np.stack([rand.preprocessing(r) for r in photo_crops(2, size=224)]))
    torch.testing.assert_close(rand(x), load_backbone("clip-random:arch=tiny-test,seed=3", precision="fp32")(x))
    assert not torch.allclose(rand(x), load_backbone("clip-random:arch=tiny-test,seed=4", precision="fp32")(x))
    both = load_backbone("clip-random:arch=tiny-test+spectrum:size=64", precision="fp32")
    assert [p["name"] for p in both.describe()["parts"]] == ["clip-random", "spectrum"] and both.dim == 16 + 45
    with pytest.raises(BackboneError, match="unknown arch"):
        load_backbone("clip-random:arch=vit-h-14")


@pytest.mark.slow
def test_random_clip_published_shape():
    pytest.importorskip("transformers")
    rand = load_backbone("clip-random:arch=vit-b-32,seed=0", precision="fp32")
    x = torch.from_numpy(np.stack([rand.preprocessing(r) for r in photo_crops(2, size=224)]))
    assert rand(x).shape == (2, 512) and rand.describe()["architecture"]["layers"] == 12
