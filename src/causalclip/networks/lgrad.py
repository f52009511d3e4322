"""LGrad (Tan et al., CVPR 2023, "Learning on Gradients"): a classifier on the gradients of a frozen, pretrained
transformation model's output with respect to its input image.

As in the authors' code (github.com/chuangchuangtan/LGrad, ``img2gad_pytorch/gen_imggrad.py``, and
AIGCDetectBenchmark's ``preprocessing/LGrad/gen_imggrad.py``):

1. the image is resized to 256 x 256 and scaled to [-1, 1] (mean = std = 0.5);
2. the transformation model is StyleGAN's discriminator trained on LSUN bedrooms at 256 x 256 (genforce's PyTorch
   conversion ``karras2019stylegan-bedrooms-256x256_discriminator.pth``); its output is one real/fake score per
   image, and the gradient of the batch's summed score with respect to the [-1, 1] input is taken;
3. each image's gradient (H, W, 3) is normalised over all its values: minus its minimum, divided by its maximum
   (when not 0), times 255, and written as an 8-bit PNG (cv2 rounds to the nearest integer);
4. a ResNet-50 is trained on those PNGs with CNNSpot's code (ImageNet start, one logit, ImageNet normalisation).

Here :class:`StyleGANDiscriminator` is that discriminator written out (genforce's parameter names, so the authors'
file imports key for key), its weights held as buffers: it is frozen and never trained. :func:`gradient_map` is
steps 1-3 on a batch (including the 8-bit rounding, so a map computed on the fly equals the cached PNG), and
:class:`LGradNet` is the classifier (CNNSpot's ResNet-50, torchvision's names) with the discriminator inside
(state-dict prefix ``discriminator.``), so one safetensors file holds both.

``LGradConfig.input`` says what the network is fed: ``"image"`` (normalised images: the gradient map is computed
in ``forward``) or ``"gradient"`` (normalised gradient maps read from PNGs written by ``causalclip gradient-maps``,
so the classifier trains without recomputing them). A detector must score raw images: its config needs
``input="image"`` (:func:`for_raw_images`), whatever the run was trained on.

A second kind of transformation model, :class:`DCGANDiscriminator` (``LGradConfig.transform_arch="dcgan"``), is
the discriminator of a DCGAN (Radford et al. 2016): strided 4x4 convolutions, BatchNorm, leaky ReLU 0.2, a last 4x4
convolution to one logit, with the state-dict names of the offline demo's GAN families (``net.0.weight``, ...), so
the discriminator a demo family trained plays the transformation model there (docs/guides/demo.md). Its BatchNorm
always uses the running statistics it was saved with (eval mode, whatever the network's mode): a map never depends on
its batch.

One difference from the authors' runs, by construction: StyleGAN's minibatch-standard-deviation layer mixes the
images of a batch (groups of 4). The authors transform one image at a time (batch size 1 in their scripts), where
the layer adds the constant sqrt(1e-8); that is what :class:`StyleGANDiscriminator` computes for every image, so a
gradient map never depends on which other images share its batch.
"""

from __future__ import annotations

import dataclasses
import math
import pickle
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from .cnnspot import RESNET50_LAYERS, RESNET50_WIDTHS
from .fredect import IMAGENET_MEAN, IMAGENET_STD
from .resnet import ResNetTrunk, validate_resnet_shape

__all__ = [
    "TRANSFORM_ARCHS",
    "DCGANDiscriminator",
    "DCGANDiscriminatorConfig",
    "LGradConfig",
    "LGradNet",
    "StyleGANDiscriminator",
    "StyleGANDiscriminatorConfig",
    "build_discriminator",
    "discriminator_config",
    "discriminator_state",
    "for_raw_images",
    "gradient_map",
    "input_gradient",
    "read_weights",
]

_WSCALE_GAIN = math.sqrt(2.0)
_MBSTD_EPSILON = 1e-8
_INIT_RES = 4


@dataclass(frozen=True, kw_only=True)
class StyleGANDiscriminatorConfig:
    """StyleGAN's discriminator (genforce ``StyleGANDiscriminator`` with its defaults: fused_scale "auto",
    wscale, one minibatch-std channel, fmaps_base 16 << 10, fmaps_max 512, no label)."""

    resolution: int = 256
    fmaps_base: int = 16 << 10
    fmaps_max: int = 512
    fused_scale_min_res: int = 128  # fused_scale="auto": stride-2 convolutions at and above this resolution

    def validate(self) -> None:
        if self.resolution < 8 or self.resolution & (self.resolution - 1):
            raise ValueError(f"resolution: a power of two >= 8, got {self.resolution}")
        if self.fmaps_base < 1 or self.fmaps_max < 1:
            raise ValueError(f"fmaps_base {self.fmaps_base} and fmaps_max {self.fmaps_max} must be >= 1")

    def channels(self, res: int) -> int:
        """Feature maps at resolution ``res`` (genforce's get_nf)."""
        return max(1, min(self.fmaps_base // res, self.fmaps_max))


def _frozen(module: nn.Module, name: str, shape: tuple[int, ...]) -> None:
    # NaN until a loaded state dict sets it: a transformation model is never trained, and never random.
    module.register_buffer(name, torch.full(shape, float("nan")))


class _Blur(nn.Module):
    """[1, 2, 1] x [1, 2, 1] / 16 depthwise blur before a down-sampling convolution (genforce BlurLayer)."""

    def __init__(self, channels: int):
        super().__init__()
        k = torch.tensor([1.0, 2.0, 1.0])
        kernel = (k[:, None] * k[None, :]) / 16.0
        self.register_buffer("kernel", kernel.expand(channels, 1, 3, 3).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.kernel, padding=1, groups=x.shape[1])


class _Conv(nn.Module):
    """genforce ConvBlock: [minibatch-std] -> [blur] -> conv (weight-scaled) -> [avg-pool 2] -> leaky ReLU 0.2."""

    def __init__(self, cin: int, cout: int, *, kernel: int = 3, down: bool = False, fused: bool = False, mbstd=False):
        super().__init__()
        self.mbstd = mbstd
        cin = cin + (1 if mbstd else 0)
        _frozen(self, "weight", (cout, cin, kernel, kernel))
        _frozen(self, "bias", (cout,))
        self.wscale = _WSCALE_GAIN / math.sqrt(kernel * kernel * cin)
        self.blur = _Blur(cin) if down else None
        self.down, self.fused, self.padding = down, fused and down, kernel // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mbstd:
            # The std over a group of one image: sqrt(0 + eps), a constant channel (see the module docstring).
            x = torch.cat((x, x.new_full((x.shape[0], 1, *x.shape[2:]), math.sqrt(_MBSTD_EPSILON))), dim=1)
        if self.blur is not None:
            x = self.blur(x)
        w = self.weight * self.wscale
        if self.fused:
            # Convolution and 2x down-sampling fused: the 3x3 kernel padded to 4x4 and box-filtered, stride 2.
            w = F.pad(w, (1, 1, 1, 1))
            w = (w[:, :, 1:, 1:] + w[:, :, :-1, 1:] + w[:, :, 1:, :-1] + w[:, :, :-1, :-1]) * 0.25
            x = F.conv2d(x, w, self.bias, stride=2, padding=1)
        else:
            x = F.conv2d(x, w, self.bias, padding=self.padding)
            if self.down:
                x = F.avg_pool2d(x, 2)
        return F.leaky_relu(x, 0.2)


class _Dense(nn.Module):
    """genforce DenseBlock: flatten -> linear (weight-scaled) -> leaky ReLU 0.2, or linear for the last layer."""

    def __init__(self, cin: int, cout: int, *, gain: float = _WSCALE_GAIN, linear: bool = False):
        super().__init__()
        _frozen(self, "weight", (cout, cin))
        _frozen(self, "bias", (cout,))
        self.wscale = gain / math.sqrt(cin)
        self.linear = linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.linear(x.flatten(1), self.weight * self.wscale, self.bias)
        return x if self.linear else F.leaky_relu(x, 0.2)


class StyleGANDiscriminator(nn.Module):
    """(n, 3, R, R) RGB images in [-1, 1] -> (n,) real/fake scores, at full resolution (lod 0).

    Layers per resolution r from R down to 8: ``layer{2b}`` 3x3 conv (r -> r), ``layer{2b+1}`` 3x3 conv with 2x
    down-sampling (fused into a stride-2 convolution from r = 128 up); at 4 x 4: minibatch-std, ``layer{2b}`` 3x3
    conv, ``layer{2b+1}`` dense, then the last dense layer gives the score. ``input0`` is the 1x1 FromRGB at R; the
    authors' files also hold FromRGB layers for lower levels of detail (``input1``...) and ``lod``, which are only
    used in progressive training and are checked and dropped by the importer.
    """

    def __init__(self, config: StyleGANDiscriminatorConfig | None = None):
        super().__init__()
        config = config or StyleGANDiscriminatorConfig()
        config.validate()
        self.config = config
        final = int(math.log2(config.resolution))
        init = int(math.log2(_INIT_RES))
        nf = config.channels
        self.input0 = _Conv(3, nf(config.resolution), kernel=1)
        for res_log2 in range(final, init - 1, -1):
            res, b = 2**res_log2, final - res_log2
            if res != _INIT_RES:
                self.add_module(f"layer{2 * b}", _Conv(nf(res), nf(res)))
                fused = res >= config.fused_scale_min_res
                self.add_module(f"layer{2 * b + 1}", _Conv(nf(res), nf(res // 2), down=True, fused=fused))
            else:
                self.add_module(f"layer{2 * b}", _Conv(nf(res), nf(res), mbstd=True))
                self.add_module(f"layer{2 * b + 1}", _Dense(nf(res) * res * res, nf(res // 2)))
        self.add_module(f"layer{2 * b + 2}", _Dense(nf(res // 2), 1, gain=1.0, linear=True))
        self.n_layers = 2 * b + 3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.config.resolution
        if x.ndim != 4 or tuple(x.shape[1:]) != (3, r, r):
            raise ValueError(f"the discriminator takes (n, 3, {r}, {r}) images, got {tuple(x.shape)}")
        x = self.input0(x)
        for i in range(self.n_layers):
            x = getattr(self, f"layer{i}")(x)
        return x.squeeze(1)

    @property
    def loaded(self) -> bool:
        """Whether its weights are set (by a loaded state dict): until then every weight is NaN. On the meta device
        (shapes only, e.g. FLOP counting) there are no values to check: True."""
        w = self.input0.weight
        return w.is_meta or not bool(torch.isnan(w).any())


@dataclass(frozen=True, kw_only=True)
class DCGANDiscriminatorConfig:
    """A DCGAN discriminator (the demo's GAN families): ``resolution`` x ``resolution`` input, halved by each
    strided convolution down to 4 x 4; ``width`` channels after the first, doubling at each later one."""

    resolution: int = 64
    width: int = 16

    def validate(self) -> None:
        if self.resolution < 16 or self.resolution & (self.resolution - 1):
            raise ValueError(f"resolution: a power of two >= 16, got {self.resolution}")
        if self.width < 1:
            raise ValueError(f"width: must be >= 1, got {self.width}")

    @property
    def n_down(self) -> int:
        """Strided convolutions from ``resolution`` down to 4 x 4."""
        return int(math.log2(self.resolution // 4))


class _FrozenConv2d(nn.Module):
    """A 4x4 convolution whose weight (and bias) are buffers: loaded, never trained (nn.Conv2d's names)."""

    def __init__(self, cin: int, cout: int, *, stride: int, padding: int, bias: bool):
        super().__init__()
        _frozen(self, "weight", (cout, cin, 4, 4))
        if bias:
            _frozen(self, "bias", (cout,))
        else:
            self.bias = None
        self.stride, self.padding = stride, padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight, self.bias, stride=self.stride, padding=self.padding)


class _FrozenBatchNorm2d(nn.Module):
    """BatchNorm2d in eval mode for good: the saved running statistics normalise every image on its own
    (nn.BatchNorm2d's names and eps, so a trained module's state dict loads key for key)."""

    eps = 1e-5

    def __init__(self, channels: int):
        super().__init__()
        for name in ("weight", "bias", "running_mean", "running_var"):
            _frozen(self, name, (channels,))
        self.register_buffer("num_batches_tracked", torch.zeros((), dtype=torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(
            x, self.running_mean, self.running_var, self.weight, self.bias, training=False, eps=self.eps
        )


class DCGANDiscriminator(nn.Module):
    """(n, 3, R, R) RGB images in [-1, 1] -> (n,) real/fake logits; frozen (every weight a buffer).

    ``net``: 4x4 conv stride 2 (bias) -> leaky ReLU 0.2, then per further halving 4x4 conv stride 2 (no bias) ->
    BatchNorm -> leaky ReLU 0.2, down to 4 x 4, then a 4x4 conv (bias) to one logit: the layers and names of
    ``causalclip.demo.generators._Discriminator``, which the demo trains with its GAN families.
    """

    def __init__(self, config: DCGANDiscriminatorConfig | None = None):
        super().__init__()
        config = config or DCGANDiscriminatorConfig()
        config.validate()
        self.config = config
        c = config.width
        layers: list[nn.Module] = [_FrozenConv2d(3, c, stride=2, padding=1, bias=True), nn.LeakyReLU(0.2)]
        for _ in range(config.n_down - 1):
            layers += [_FrozenConv2d(c, 2 * c, stride=2, padding=1, bias=False), _FrozenBatchNorm2d(2 * c)]
            layers.append(nn.LeakyReLU(0.2))
            c *= 2
        layers.append(_FrozenConv2d(c, 1, stride=1, padding=0, bias=True))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.config.resolution
        if x.ndim != 4 or tuple(x.shape[1:]) != (3, r, r):
            raise ValueError(f"the discriminator takes (n, 3, {r}, {r}) images, got {tuple(x.shape)}")
        return self.net(x).reshape(x.shape[0])  # (n, 1, 1, 1) -> (n,)

    @property
    def loaded(self) -> bool:
        """Whether its weights are set (by a loaded state dict): until then every weight is NaN (meta: True)."""
        w = self.net[0].weight
        return w.is_meta or not bool(torch.isnan(w).any())


DiscriminatorConfig = StyleGANDiscriminatorConfig | DCGANDiscriminatorConfig
Discriminator = StyleGANDiscriminator | DCGANDiscriminator

# LGradConfig.transform_arch -> the transformation model's module and config.
TRANSFORM_ARCHS: dict[str, tuple[type[nn.Module], type]] = {
    "stylegan": (StyleGANDiscriminator, StyleGANDiscriminatorConfig),
    "dcgan": (DCGANDiscriminator, DCGANDiscriminatorConfig),
}


def discriminator_config(
    arch: str, *, resolution: int, fmaps_base: int = 16 << 10, fmaps_max: int = 512, width: int = 16
) -> DiscriminatorConfig:
    """The transformation model's config for ``arch`` ("stylegan": fmaps_base/fmaps_max; "dcgan": width)."""
    if arch == "stylegan":
        return StyleGANDiscriminatorConfig(resolution=resolution, fmaps_base=fmaps_base, fmaps_max=fmaps_max)
    if arch == "dcgan":
        return DCGANDiscriminatorConfig(resolution=resolution, width=width)
    raise ValueError(f"transform_arch: one of {sorted(TRANSFORM_ARCHS)}, got {arch!r}")


def build_discriminator(config: DiscriminatorConfig) -> Discriminator:
    """The (unloaded, NaN) transformation model for ``config``."""
    for module, config_cls in TRANSFORM_ARCHS.values():
        if isinstance(config, config_cls):
            return module(config)
    raise TypeError(f"not a transformation model's config: {type(config).__name__}")


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """A bare state dict from ``path``: safetensors, or ``torch.load(weights_only=True)`` (never a full unpickler).
    (causalclip.networks.importer reads the authors' containers too; this is what a training run's fit needs.)"""
    if path.suffix.lower() == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as exc:
            raise ValueError(f"{path}: not a readable safetensors file ({exc})") from exc
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as exc:
        raise ValueError(f"{path}: no such file") from exc
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as exc:
        raise ValueError(
            f"{path}: not a weights-only PyTorch file ({type(exc).__name__}); only tensors and plain containers are "
            "read, nothing in it was run"
        ) from exc
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path}: expected a state dict (names -> tensors), found a {type(obj).__name__}")
    return dict(obj)


def _mismatch(state: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor]) -> list[str]:
    """Every missing key, unexpected key and shape mismatch of ``state`` against ``expected``, as phrases."""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k}: file {tuple(state[k].shape)}, model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    return [f"{len(x)} {label}: {x[:12]}" for label, x in
            (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes)) if x]  # fmt: skip


def _arch_hint(state: Mapping[str, torch.Tensor], config: DiscriminatorConfig) -> str:
    """A pointer to the other architecture when the file's keys are clearly its."""
    if isinstance(config, StyleGANDiscriminatorConfig) and "net.0.weight" in state:
        return " (its net.* keys are a DCGAN discriminator's: lgrad.transform_arch=dcgan)"
    if isinstance(config, DCGANDiscriminatorConfig) and "input0.weight" in state:
        return " (its input0/layer* keys are a StyleGAN discriminator's: lgrad.transform_arch=stylegan)"
    return ""


def discriminator_state(
    state: Mapping[str, torch.Tensor], config: DiscriminatorConfig, *, where: str
) -> dict[str, torch.Tensor]:
    """The weights of the transformation model built from ``config`` in ``state``, checked.

    StyleGAN: ours, the authors' genforce layout (``lod`` must be 0; the FromRGB layers of lower levels of detail,
    ``input1``..., are dropped) or the ``discriminator.*`` keys of an LGrad network; the fixed blur kernels must be
    StyleGAN's. DCGAN: the demo's discriminator (``net.*``) or an LGrad network's ``discriminator.net.*``; the
    BatchNorm variances must be > 0. Every key and shape is checked and every value must be finite; ValueError
    names ``where`` and every mismatch."""
    if any(k.startswith("discriminator.") for k in state):
        state = {k.removeprefix("discriminator."): v for k, v in state.items() if k.startswith("discriminator.")}
    state = dict(state)
    hint = _arch_hint(state, config)
    if isinstance(config, StyleGANDiscriminatorConfig):
        lod = state.pop("lod", None)
        if lod is not None and (lod.numel() != 1 or float(lod) != 0.0):
            raise ValueError(f"{where}: lod is {lod.tolist()}; only a full-resolution discriminator (lod 0) is used")
        state = {k: v for k, v in state.items() if not re.match(r"input[1-9]\d*\.", k)}
        what = "StyleGAN's discriminator"
    else:
        what = "a DCGAN discriminator"
    expected = build_discriminator(config).state_dict()
    parts = _mismatch(state, expected)
    if parts:
        raise ValueError(f"{where}: does not fit {what} {config}{hint}: " + "; ".join(parts))
    for key, value in expected.items():
        if key.endswith("blur.kernel") and not torch.allclose(state[key].float(), value, atol=1e-6):
            raise ValueError(f"{where}: {key} is not StyleGAN's [1, 2, 1] blur kernel")
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise ValueError(f"{where}: non-finite values in {bad[:10]}")
    bad = [k for k, v in state.items() if k.endswith("running_var") and not (v > 0).all()]
    if bad:
        raise ValueError(f"{where}: BatchNorm variances must be > 0, not in {bad[:10]}")
    return {k: v.to(expected[k].dtype) for k, v in state.items()}


def input_gradient(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """d(sum of model(x)) / dx for a (n, ...) batch, in float32 (float64 stays float64) with autocast off, whatever
    the caller's grad mode.

    For a per-image model (both transformation models here) row i is the gradient of image i's own score.
    """
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    with torch.enable_grad(), torch.autocast(device_type=x.device.type, enabled=False):
        x = x.detach().to(dtype).requires_grad_(True)
        (grad,) = torch.autograd.grad(model(x).sum(), x)
    return grad


def gradient_map(model: Discriminator, pixels: torch.Tensor) -> torch.Tensor:
    """(n, 3, H, W) RGB in [0, 1] -> (n, 3, R, R) gradient maps with 8-bit values (float32 in 0..255), as the
    authors' PNG files hold them.

    The image is resized to R x R (bilinear, antialiased, as PIL's resize) unless it has that size, scaled to
    [-1, 1], and the gradient of the model's score is normalised per image over all its values:
    ``(g - min) / max(g - min) * 255`` (no division when that maximum is 0), rounded to the nearest integer.
    """
    r = model.config.resolution
    x = pixels if pixels.dtype == torch.float64 else pixels.float()
    if tuple(x.shape[-2:]) != (r, r):
        x = F.interpolate(x, size=(r, r), mode="bilinear", align_corners=False, antialias=True)
    g = input_gradient(model, x * 2.0 - 1.0)  # (n, 3, R, R)
    g = g - g.amin(dim=(1, 2, 3), keepdim=True)
    top = g.amax(dim=(1, 2, 3), keepdim=True)
    g = torch.where(top > 0, g / torch.where(top > 0, top, torch.ones_like(top)), g)
    return torch.round(g * 255.0).clamp_(0, 255)


@dataclass(frozen=True, kw_only=True)
class LGradConfig:
    """LGrad: CNNSpot's ResNet-50 on gradient maps of StyleGAN's discriminator (smaller shapes for tests).

    ``transform``: the transformation model's file (our safetensors, or the authors' ``.pth`` read with
    ``weights_only``), loaded by :meth:`LGradNet.fit` when a training run starts; a saved network carries the
    weights in its own safetensors and never reads this path again (it is kept as a record).
    ``transform_arch``: which architecture that file holds, "stylegan" (the authors': ``fmaps_base``/``fmaps_max``)
    or "dcgan" (the demo's GAN families: ``dcgan_width``); ``resolution`` is its input size either way.
    """

    input: Literal["image", "gradient"] = "image"
    transform: str | None = None
    transform_arch: Literal["stylegan", "dcgan"] = "stylegan"
    resolution: int = 256
    fmaps_base: int = 16 << 10
    fmaps_max: int = 512
    dcgan_width: int = 16
    layers: tuple[int, ...] = RESNET50_LAYERS
    widths: tuple[int, ...] = RESNET50_WIDTHS
    stem_width: int = 64
    fc_init_std: float = 0.02
    input_mean: tuple[float, ...] = IMAGENET_MEAN  # the pipeline's normalisation of images and of gradient PNGs
    input_std: tuple[float, ...] = IMAGENET_STD

    def discriminator(self) -> DiscriminatorConfig:
        return discriminator_config(
            self.transform_arch,
            resolution=self.resolution,
            fmaps_base=self.fmaps_base,
            fmaps_max=self.fmaps_max,
            width=self.dcgan_width,
        )

    def validate(self) -> None:
        validate_resnet_shape(self.layers, self.widths, self.stem_width)
        self.discriminator().validate()
        if not self.fc_init_std > 0:
            raise ValueError(f"fc_init_std: must be > 0, got {self.fc_init_std}")
        if len(self.input_mean) != 3 or len(self.input_std) != 3 or any(not s > 0 for s in self.input_std):
            raise ValueError(
                f"input_mean/input_std: three values each, std > 0; got {list(self.input_mean)}, {list(self.input_std)}"
            )


def for_raw_images(config: LGradConfig) -> LGradConfig:
    """The config a detector built from an LGrad run needs: it scores raw images (gradients computed inside)."""
    return dataclasses.replace(config, input="image")


class LGradNet(ResNetTrunk):
    """(n, 3, H, W) normalised images (``input="image"``) or normalised gradient maps (``input="gradient"``)
    -> (n,) logits. State dict: the classifier with torchvision's names (conv1 ... fc, CNNSpot's layout) and the
    frozen transformation model (StyleGAN's or a DCGAN's discriminator) under ``discriminator.``."""

    imagenet_exclude = ("discriminator.",)  # importer.load_imagenet_weights: the trunk is the classifier only

    def __init__(self, config: LGradConfig | None = None):
        config = config or LGradConfig()
        config.validate()
        super().__init__(
            layers=config.layers,
            widths=config.widths,
            stem_width=config.stem_width,
            fc_init_std=config.fc_init_std,
        )
        self.discriminator = build_discriminator(config.discriminator())
        self.register_buffer("mean", torch.tensor(config.input_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(config.input_std).view(1, 3, 1, 1), persistent=False)
        self.config = config

    @property
    def needs_fit(self) -> bool:  # the pixel loop calls fit() once, when a run starts (not on resume)
        return self.config.transform is not None

    def fit(self, batches: Iterable[torch.Tensor] = ()) -> None:
        """Load the transformation model named by ``config.transform`` (the training images are not needed: the
        batches are never read). Raises ValueError naming the file when it cannot be read or does not fit."""
        if self.config.transform is None:
            raise ValueError("lgrad: name the transformation model (lgrad.transform=FILE)")
        path = Path(self.config.transform)
        state = discriminator_state(read_weights(path), self.config.discriminator(), where=str(path))
        self.discriminator.load_state_dict(state, strict=True)

    def gradient_input(self, x: torch.Tensor) -> torch.Tensor:
        """(n, 3, H, W) normalised images -> (n, 3, R, R) normalised gradient maps: what the cached PNGs give."""
        if not self.discriminator.loaded:
            raise RuntimeError(
                "lgrad: the transformation model's weights are not set: give lgrad.transform=FILE when training, "
                "or load a state dict that holds discriminator.*"
            )
        pixels = (x.float() * self.std + self.mean).clamp(0, 1)
        maps = gradient_map(self.discriminator, pixels) / 255.0
        return ((maps - self.mean) / self.std).to(x.dtype)

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.config.input == "gradient" else self.gradient_input(x)
