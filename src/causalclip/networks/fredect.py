"""FreDect (Frank et al., ICML 2020): a classifier on the log-scaled, per-frequency normalised 2-D DCT spectrum.

The input transform is the authors' (github.com/RUB-SysSec/GANDCTAnalysis, ``prepare_dataset.py``,
``src/image_np.py``, ``src/math.py``) and AIGCDetectBenchmark's (``data/process.py: dct2_wrapper``): per colour
channel, the orthonormal type-II DCT over rows and columns of the 0-255 pixel values, ``log(|c| + 1e-12)``, then
``(log - mean) / sqrt(var)`` with the mean and (population) variance of every coefficient over the training images.
Those statistics are fitted here by :meth:`LogDCTNormalizer.fit` (streaming, float64, Chan's pairwise merge of
per-batch moments) into buffers of the state dict, so a saved detector carries them.

Two classifiers on that input:

- :class:`FreDectNet` (``"fredect"``): AIGCDetectBenchmark's version, which the paper's comparison numbers follow:
  ``torchvision.models.resnet50()`` from scratch with ``fc = Linear(2048, 1)``, on the 3-channel spectrum of a
  224 x 224 crop (benchmark ``util.py: get_model``).
- :class:`FreDectSimpleNet` (``"fredect-simple"``): the paper's own simple CNN (``src/models.py:
  build_simple_cnn``): conv 3 -> 8 -> avg-pool -> 16 -> avg-pool -> 32 (3x3, same padding, ReLU) -> flatten ->
  one logit, on 128 x 128 images.

Both fix the input size: the statistics are per frequency (and the simple CNN flattens), so ``module.input_size``
says which H = W the pipeline must feed, and any other size raises.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from .cnnspot import RESNET50_LAYERS, RESNET50_WIDTHS
from .resnet import ResNetTrunk, validate_resnet_shape

__all__ = [
    "FreDectConfig",
    "FreDectNet",
    "FreDectSimpleConfig",
    "FreDectSimpleNet",
    "LogDCTNormalizer",
    "dct_matrix",
    "log_dct",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LOG_EPSILON = 1e-12  # the authors' log_scale epsilon: no log(0)


def dct_matrix(n: int, *, dtype: torch.dtype = torch.float64, device: torch.device | str | None = None) -> torch.Tensor:
    """(n, n) orthonormal DCT-II matrix M: ``M @ v`` is ``scipy.fft.dct(v, type=2, norm="ortho")``."""
    k = torch.arange(n, dtype=dtype, device=device)[:, None]
    i = torch.arange(n, dtype=dtype, device=device)[None, :]
    m = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    m[0] /= math.sqrt(2.0)
    return m


def log_dct(pixels: torch.Tensor) -> torch.Tensor:
    """(..., H, W) pixel values -> log(|DCT-II ortho over H and W| + 1e-12), in the input's dtype (use float64)."""
    mh = dct_matrix(pixels.shape[-2], dtype=pixels.dtype, device=pixels.device)
    mw = (
        mh
        if pixels.shape[-1] == pixels.shape[-2]
        else dct_matrix(pixels.shape[-1], dtype=pixels.dtype, device=pixels.device)
    )
    coef = mh @ pixels @ mw.T  # rows (axis H) then columns (axis W), as dct(axis=0) then dct(axis=1)
    return torch.log(coef.abs() + LOG_EPSILON)


class LogDCTNormalizer(nn.Module):
    """Normalised images -> per-frequency standardised log-DCT spectrum, with the statistics as buffers.

    ``mean``/``var``: (3, size, size) float32 buffers (state-dict keys ``spectrum.mean``/``spectrum.var`` in the
    networks below); NaN until :meth:`fit` or a loaded state dict sets them. The spectrum is computed in float64
    with autocast off: the DC coefficient of a 224 x 224 crop is about 3e4 while most log-scaled coefficients
    describe magnitudes below 1, which float32 (let alone bf16) would blur.
    """

    def __init__(self, *, size: int, input_mean: tuple[float, ...], input_std: tuple[float, ...]):
        super().__init__()
        self.size = size
        self.input_mean = tuple(input_mean)
        self.input_std = tuple(input_std)
        self.register_buffer("mean", torch.full((3, size, size), float("nan")))
        self.register_buffer("var", torch.full((3, size, size), float("nan")))
        self._checked = False  # statistics seen to be set (one device sync, then never again)
        self.register_load_state_dict_post_hook(lambda module, _keys: setattr(module, "_checked", False))

    def _pixels(self, x: torch.Tensor) -> torch.Tensor:
        """(n, 3, S, S) normalised images -> 0-255 pixel values in float64 (the authors' DCT input)."""
        if x.ndim != 4 or x.shape[1] != 3 or tuple(x.shape[-2:]) != (self.size, self.size):
            raise ValueError(
                f"the DCT input needs (n, 3, {self.size}, {self.size}) images (its statistics are per frequency); "
                f"got {tuple(x.shape)}: crop to {self.size} or build the network with size={x.shape[-1]}"
            )
        x = x.to(device=self.mean.device, dtype=torch.float64)
        mean = torch.tensor(self.input_mean, dtype=torch.float64, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.input_std, dtype=torch.float64, device=x.device).view(1, 3, 1, 1)
        return (x * std + mean) * 255.0

    @property
    def fitted(self) -> bool:
        """Whether the statistics are set (by :meth:`fit` or a loaded state dict)."""
        if not self._checked:
            self._checked = not bool(torch.isnan(self.mean).any() or torch.isnan(self.var).any())
        return self._checked

    @torch.no_grad()
    def fit(self, batches: Iterable[torch.Tensor]) -> int:
        """Set ``mean``/``var`` to the per-coefficient mean and population variance over all images of ``batches``.

        Streaming: each (n, 3, S, S) batch of normalised images contributes its own mean and sum of squared
        deviations in float64, merged pairwise (Chan et al.), which stays exact where a running sum of squares
        would cancel. Returns the number of images; fewer than 2 raises ValueError.
        """
        count, mean, m2 = 0, None, None
        with torch.autocast(device_type=self.mean.device.type, enabled=False):
            for batch in batches:
                spec = log_dct(self._pixels(batch))  # (n, 3, S, S)
                n_b = spec.shape[0]
                if n_b == 0:
                    continue
                mean_b = spec.mean(0)
                m2_b = ((spec - mean_b) ** 2).sum(0)
                if mean is None:
                    count, mean, m2 = n_b, mean_b, m2_b
                    continue
                total = count + n_b
                delta = mean_b - mean
                mean = mean + delta * (n_b / total)
                m2 = m2 + m2_b + delta**2 * (count * n_b / total)
                count = total
        if count < 2:
            raise ValueError(f"fitting the DCT statistics needs at least 2 images, got {count}")
        self.mean.copy_(mean.to(self.mean.dtype))
        self.var.copy_((m2 / count).to(self.var.dtype))
        self._checked = True
        return count

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(n, 3, S, S) normalised images -> (n, 3, S, S) standardised log-DCT spectrum in x's dtype."""
        if not self.fitted:
            raise RuntimeError(
                "the DCT statistics are not set: call fit(batches of training images) or load a state dict that has "
                "spectrum.mean and spectrum.var"
            )
        with torch.autocast(device_type=x.device.type, enabled=False):
            spec = log_dct(self._pixels(x))
            # var is clamped only against exact zeros (a constant coefficient); fitted image statistics are > 0.1.
            z = (spec - self.mean.double()) / self.var.double().clamp_min(1e-12).sqrt()
        return z.to(x.dtype)


@dataclass(frozen=True, kw_only=True)
class FreDectConfig:
    """AIGCDetectBenchmark's FreDect: ResNet-50 (torchvision, scratch) on the spectrum of size x size crops."""

    size: int = 224
    layers: tuple[int, ...] = RESNET50_LAYERS
    widths: tuple[int, ...] = RESNET50_WIDTHS
    stem_width: int = 64
    input_mean: tuple[float, ...] = IMAGENET_MEAN  # the normalisation the pipeline applied, undone before the DCT
    input_std: tuple[float, ...] = IMAGENET_STD

    def validate(self) -> None:
        validate_resnet_shape(self.layers, self.widths, self.stem_width)
        _validate_spectrum(self.size, self.input_mean, self.input_std, multiple=1)


@dataclass(frozen=True, kw_only=True)
class FreDectSimpleConfig:
    """Frank et al.'s simple CNN on the spectrum of size x size images (size divisible by 4)."""

    size: int = 128
    channels: tuple[int, ...] = (3, 8, 16, 32)  # conv1..conv4 output channels; avg-pool after conv2 and conv3
    input_mean: tuple[float, ...] = IMAGENET_MEAN
    input_std: tuple[float, ...] = IMAGENET_STD

    def validate(self) -> None:
        if len(self.channels) != 4 or any(c < 1 for c in self.channels):
            raise ValueError(f"channels: four positive widths (conv1..conv4), got {list(self.channels)}")
        _validate_spectrum(self.size, self.input_mean, self.input_std, multiple=4)


def _validate_spectrum(size: int, mean: tuple[float, ...], std: tuple[float, ...], *, multiple: int) -> None:
    if size < 32 or size % multiple:
        raise ValueError(f"size: must be >= 32 and a multiple of {multiple}, got {size}")
    if len(mean) != 3 or len(std) != 3 or any(not s > 0 for s in std):
        raise ValueError(f"input_mean/input_std: three values each, std > 0; got {list(mean)}, {list(std)}")


class FreDectNet(ResNetTrunk):
    """(n, 3, S, S) normalised images -> (n,) logits through the standardised log-DCT spectrum and a ResNet-50."""

    needs_fit = True

    def __init__(self, config: FreDectConfig | None = None):
        config = config or FreDectConfig()
        config.validate()
        super().__init__(layers=config.layers, widths=config.widths, stem_width=config.stem_width)
        self.spectrum = LogDCTNormalizer(size=config.size, input_mean=config.input_mean, input_std=config.input_std)
        self.input_size = config.size
        self.config = config

    def fit(self, batches: Iterable[torch.Tensor]) -> None:
        """Fit the spectrum's per-frequency statistics on normalised training images (see LogDCTNormalizer.fit)."""
        self.spectrum.fit(batches)

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        return self.spectrum(x)


class FreDectSimpleNet(nn.Module):
    """(n, 3, S, S) normalised images -> (n,) logits: Frank et al.'s four-convolution CNN on the spectrum.

    Keras's layers in PyTorch: Conv2D(k, 3, padding="same", relu) is a 3x3 convolution with padding 1 and a bias,
    AveragePooling2D() a 2x2 stride-2 average, Dense(1) on the flattened maps the logit (their sigmoid is in the
    loss here). Glorot-uniform weights and zero biases, Keras's defaults.
    """

    needs_fit = True

    def __init__(self, config: FreDectSimpleConfig | None = None):
        super().__init__()
        config = config or FreDectSimpleConfig()
        config.validate()
        c1, c2, c3, c4 = config.channels
        self.spectrum = LogDCTNormalizer(size=config.size, input_mean=config.input_mean, input_std=config.input_std)
        self.conv1 = nn.Conv2d(3, c1, 3, padding=1)
        self.conv2 = nn.Conv2d(c1, c2, 3, padding=1)
        self.conv3 = nn.Conv2d(c2, c3, 3, padding=1)
        self.conv4 = nn.Conv2d(c3, c4, 3, padding=1)
        self.pool = nn.AvgPool2d(2)
        self.fc = nn.Linear(c4 * (config.size // 4) ** 2, 1)
        for m in (self.conv1, self.conv2, self.conv3, self.conv4, self.fc):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)
        self.input_size = config.size
        self.config = config

    def fit(self, batches: Iterable[torch.Tensor]) -> None:
        """Fit the spectrum's per-frequency statistics on normalised training images (see LogDCTNormalizer.fit)."""
        self.spectrum.fit(batches)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.spectrum(x)
        x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        x = torch.relu(self.conv3(self.pool(x)))  # (n, c3, S/2, S/2)
        x = torch.relu(self.conv4(self.pool(x)))  # (n, c4, S/4, S/4)
        return self.fc(torch.flatten(x, 1)).squeeze(1)
