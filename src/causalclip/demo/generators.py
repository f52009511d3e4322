"""The demo benchmark's generator families: small torch models trained from a seed, on CPU, on the real tiles.

Four families that differ where detectors look, the way images are up-sampled and synthesised:

| family | synthesis | up-sampling |
|---|---|---|
| ``tconv-gan`` | DCGAN (Radford et al. 2016): noise -> image, adversarial | transposed convolution (stride 2) |
| ``resize-gan`` | the same GAN with resize-convolution (Odena et al. 2016) | nearest-neighbour x2, then 3x3 conv |
| ``vae`` | a convolutional VAE (Kingma & Welling 2014) re-synthesising real tiles | bilinear x2, then 3x3 conv |
| ``diffusion`` | DDPM (Ho et al. 2020; v-prediction) sampled with DDIM (Song et al. 2021), 2x2-patch U-Net | pixel shuffle |

Each family's ``train`` sees only the real *training* tiles, as (N, 3, s, s) floats in [-1, 1], and returns a
:class:`Trained`: the model and, for the GANs, the discriminator trained against it (LGrad's transformation model in
the demo); ``sample`` makes ``n`` images, either from seeded noise or, for re-synthesising families, from given
source tiles. Everything is seeded (``torch.Generator``), so a build is reproducible on one machine.
The models are small and trained for few steps: the fakes are far from photographic, and the benchmark
measures how detectors trained on one family's artifacts fare on another's, not image quality.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Callable
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["FAMILIES", "Family", "FamilyConfig", "Trained", "family_names"]

Log = Callable[[str], None]


@dataclasses.dataclass(frozen=True, kw_only=True)
class FamilyConfig:
    """Training budget and width of one family's model (part of the cache key)."""

    steps: int = 500
    batch_size: int = 32
    width: int = 16  # channels of the widest-resolution layer
    lr: float = 2e-4
    sample_steps: int = 12  # diffusion: DDIM steps


def _batches(n: int, batch_size: int, steps: int, gen: torch.Generator):
    """``steps`` index batches drawn by epochs of seeded permutations."""
    perm, pos = torch.randperm(n, generator=gen), 0
    for _ in range(steps):
        if pos + batch_size > n:
            perm, pos = torch.randperm(n, generator=gen), 0
        yield perm[pos : pos + batch_size]
        pos += batch_size


def _n_up(size: int) -> int:
    n = int(math.log2(size // 4))
    if size < 16 or 4 * 2**n != size:
        raise ValueError(f"tile size must be a power of two >= 16, got {size}")
    return n


@dataclasses.dataclass(frozen=True)
class Trained:
    """What a family's training leaves: the model ``sample`` uses and, for a GAN, its trained discriminator (in eval
    mode; causalclip.networks.lgrad.DCGANDiscriminator loads its state dict key for key)."""

    model: nn.Module
    discriminator: nn.Module | None = None


class Family:
    """A generator family: ``train(real, cfg, seed, log)`` -> :class:`Trained`; ``sample(model, n, ...)`` -> images."""

    name: ClassVar[str]
    description: ClassVar[str]
    resynthesises: ClassVar[bool] = False  # samples are made from real tiles (source) rather than from noise
    has_discriminator: ClassVar[bool] = False  # train() returns a discriminator too (the GANs)

    def train(self, real: torch.Tensor, cfg: FamilyConfig, seed: int, log: Log) -> Trained:
        raise NotImplementedError

    def build(self, size: int, cfg: FamilyConfig) -> nn.Module:
        raise NotImplementedError

    @torch.no_grad()
    def sample(
        self, model: nn.Module, n: int, *, seed: int, cfg: FamilyConfig, size: int, source: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(n, 3, size, size) in [-1, 1]; ``source``: the real tiles a re-synthesising family starts from."""
        raise NotImplementedError


# ------------------------------------------------------------------------------------------------------- GANs

NZ = 64


def _up(cin: int, cout: int, mode: str) -> list[nn.Module]:
    if mode == "tconv":
        return [nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=False)]
    return [nn.Upsample(scale_factor=2, mode=mode), nn.Conv2d(cin, cout, 3, 1, 1, bias=False)]


class _Generator(nn.Module):
    """DCGAN generator: z (B, NZ) -> 4x4 -> ... -> (B, 3, size, size) in [-1, 1]; x2 up-sampling by ``mode``."""

    def __init__(self, *, size: int, width: int, mode: str) -> None:
        super().__init__()
        n = _n_up(size)
        ch = [width * 2 ** (n - 1 - i) for i in range(n)]  # e.g. 8w, 4w, 2w, w for 64 x 64
        layers: list[nn.Module] = [nn.ConvTranspose2d(NZ, ch[0], 4, 1, 0, bias=False), nn.BatchNorm2d(ch[0]), nn.ReLU()]
        for a, b in zip(ch[:-1], ch[1:], strict=True):
            layers += [*_up(a, b, mode), nn.BatchNorm2d(b), nn.ReLU()]
        layers += [*_up(ch[-1], 3, mode), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z[:, :, None, None])


class _Discriminator(nn.Module):
    """DCGAN discriminator: strided 4x4 convolutions down to 4x4, then one logit. Its layers and state-dict names are
    those of causalclip.networks.lgrad.DCGANDiscriminator (a test keeps them equal): change both together."""

    def __init__(self, *, size: int, width: int) -> None:
        super().__init__()
        n = _n_up(size)
        layers: list[nn.Module] = [nn.Conv2d(3, width, 4, 2, 1), nn.LeakyReLU(0.2)]
        c = width
        for _ in range(n - 1):
            layers += [nn.Conv2d(c, 2 * c, 4, 2, 1, bias=False), nn.BatchNorm2d(2 * c), nn.LeakyReLU(0.2)]
            c *= 2
        layers += [nn.Conv2d(c, 1, 4, 1, 0)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).flatten()


def _dcgan_init(m: nn.Module) -> None:
    if isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
        nn.init.normal_(m.weight, 0.0, 0.02)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


class _GAN(Family):
    mode: ClassVar[str]
    has_discriminator = True

    def build(self, size: int, cfg: FamilyConfig) -> nn.Module:
        g = _Generator(size=size, width=cfg.width, mode=self.mode)
        g.apply(_dcgan_init)
        return g

    def train(self, real: torch.Tensor, cfg: FamilyConfig, seed: int, log: Log) -> Trained:
        torch.manual_seed(seed)  # the layers' initialisation
        size = real.shape[-1]
        gen, disc = self.build(size, cfg), _Discriminator(size=size, width=cfg.width)
        disc.apply(_dcgan_init)
        opt_g = torch.optim.Adam(gen.parameters(), lr=cfg.lr, betas=(0.5, 0.999))
        opt_d = torch.optim.Adam(disc.parameters(), lr=cfg.lr, betas=(0.5, 0.999))
        rng = torch.Generator().manual_seed(seed)
        t0 = time.perf_counter()
        for step, idx in enumerate(_batches(len(real), cfg.batch_size, cfg.steps, rng), 1):
            x = real[idx]
            fake = gen(torch.randn(len(idx), NZ, generator=rng))
            # non-saturating GAN loss (Goodfellow et al. 2014), as DCGAN trains it
            loss_d = F.softplus(-disc(x)).mean() + F.softplus(disc(fake.detach())).mean()
            opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            opt_d.step()
            loss_g = F.softplus(-disc(fake)).mean()
            opt_g.zero_grad(set_to_none=True)
            loss_g.backward()
            opt_g.step()
            if step % max(1, cfg.steps // 5) == 0 or step == cfg.steps:
                log(
                    f"{self.name}: step {step}/{cfg.steps}  D {loss_d.item():.3f}  G {loss_g.item():.3f}  "
                    f"({time.perf_counter() - t0:.0f} s)"
                )
        return Trained(gen.eval(), disc.eval())

    @torch.no_grad()
    def sample(self, model, n, *, seed, cfg, size, source=None):
        rng = torch.Generator().manual_seed(seed)
        z = torch.randn(n, NZ, generator=rng)
        return torch.cat([model(z[i : i + 256]) for i in range(0, n, 256)]).clamp(-1, 1)


class TConvGAN(_GAN):
    name = "tconv-gan"
    description = "DCGAN, transposed-convolution up-sampling (stride 2, 4x4 kernels), noise -> image"
    mode = "tconv"


class ResizeGAN(_GAN):
    name = "resize-gan"
    description = "DCGAN with resize-convolution: nearest-neighbour x2 then 3x3 conv, noise -> image"
    mode = "nearest"


# -------------------------------------------------------------------------------------------------------- VAE


class _VAE(nn.Module):
    """Encoder: stride-2 convs to (zc, size/8, size/8) mean and log-variance; decoder: bilinear x2 + conv."""

    def __init__(self, *, width: int, zc: int = 8) -> None:
        super().__init__()
        w = width
        self.enc = nn.Sequential(
            nn.Conv2d(3, w, 3, 2, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(w, 2 * w, 3, 2, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(2 * w, 4 * w, 3, 2, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(4 * w, 2 * zc, 3, 1, 1),
        )  # fmt: skip
        self.dec = nn.Sequential(
            nn.Conv2d(zc, 4 * w, 3, 1, 1), nn.LeakyReLU(0.2),
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False), nn.Conv2d(4 * w, 2 * w, 3, 1, 1),
            nn.LeakyReLU(0.2),
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False), nn.Conv2d(2 * w, w, 3, 1, 1),
            nn.LeakyReLU(0.2),
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False), nn.Conv2d(w, w, 3, 1, 1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(w, 3, 3, 1, 1), nn.Tanh(),
        )  # fmt: skip

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.enc(x).chunk(2, dim=1)
        return mu, logvar.clamp(-10, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # deterministic re-synthesis: decode the posterior mean
        return self.dec(self.encode(x)[0])


class VAE(Family):
    name = "vae"
    description = "convolutional VAE re-synthesising real tiles (posterior mean decoded); bilinear x2 + conv"
    resynthesises = True
    beta = 0.01  # KL weight per latent element relative to the per-pixel L1: sharper reconstructions

    def build(self, size: int, cfg: FamilyConfig) -> nn.Module:
        _n_up(size)
        return _VAE(width=cfg.width)

    def train(self, real: torch.Tensor, cfg: FamilyConfig, seed: int, log: Log) -> Trained:
        torch.manual_seed(seed)
        model = self.build(real.shape[-1], cfg)
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr * 5)
        rng = torch.Generator().manual_seed(seed)
        t0 = time.perf_counter()
        for step, idx in enumerate(_batches(len(real), cfg.batch_size, cfg.steps, rng), 1):
            x = real[idx]
            mu, logvar = model.encode(x)
            z = mu + torch.randn(mu.shape, generator=rng) * (0.5 * logvar).exp()
            rec = F.l1_loss(model.dec(z), x)
            kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).mean()
            loss = rec + self.beta * kl
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if step % max(1, cfg.steps // 5) == 0 or step == cfg.steps:
                log(
                    f"{self.name}: step {step}/{cfg.steps}  L1 {rec.item():.4f}  KL {kl.item():.3f}  "
                    f"({time.perf_counter() - t0:.0f} s)"
                )
        return Trained(model.eval())

    @torch.no_grad()
    def sample(self, model, n, *, seed, cfg, size, source=None):
        if source is None or len(source) != n:
            raise ValueError("the vae family re-synthesises real tiles: pass n source tiles")
        return torch.cat([model(source[i : i + 256]) for i in range(0, n, 256)]).clamp(-1, 1)


# -------------------------------------------------------------------------------------------------- diffusion


def _timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / half)
    angles = t.float()[:, None] * freqs[None]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


class _ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, tdim: int) -> None:
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(4, cin), nn.Conv2d(cin, cout, 3, 1, 1)
        self.temb = nn.Linear(tdim, cout)
        self.norm2, self.conv2 = nn.GroupNorm(4, cout), nn.Conv2d(cout, cout, 3, 1, 1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x))) + self.temb(temb)[:, :, None, None]
        return self.conv2(F.silu(self.norm2(h))) + self.skip(x)


class _UNet(nn.Module):
    """v-prediction U-Net on 2x2 patches: pixel-unshuffle in, three levels (s/2, s/4, s/8), pixel-shuffle out."""

    def __init__(self, *, width: int) -> None:
        super().__init__()
        c, self.tdim = 2 * width, 4 * width
        self.temb = nn.Sequential(nn.Linear(self.tdim, self.tdim), nn.SiLU(), nn.Linear(self.tdim, self.tdim))
        self.inp = nn.Conv2d(12, c, 3, 1, 1)
        self.d1, self.down1 = _ResBlock(c, c, self.tdim), nn.Conv2d(c, c, 3, 2, 1)
        self.d2, self.down2 = _ResBlock(c, 2 * c, self.tdim), nn.Conv2d(2 * c, 2 * c, 3, 2, 1)
        self.mid = _ResBlock(2 * c, 2 * c, self.tdim)
        self.u2 = _ResBlock(4 * c, 2 * c, self.tdim)
        self.u1 = _ResBlock(3 * c, c, self.tdim)
        self.out = nn.Sequential(nn.GroupNorm(4, c), nn.SiLU(), nn.Conv2d(c, 12, 3, 1, 1))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        te = self.temb(_timestep_embedding(t, self.tdim))
        h1 = self.d1(self.inp(F.pixel_unshuffle(x, 2)), te)  # (B, c, s/2, s/2)
        h2 = self.d2(self.down1(h1), te)  # (B, 2c, s/4, s/4)
        h = self.mid(self.down2(h2), te)  # (B, 2c, s/8, s/8)
        h = self.u2(torch.cat([F.interpolate(h, scale_factor=2.0, mode="nearest"), h2], 1), te)
        h = self.u1(torch.cat([F.interpolate(h, scale_factor=2.0, mode="nearest"), h1], 1), te)
        return F.pixel_shuffle(self.out(h), 2)


T_DIFFUSION = 1000


def _alpha_bar(t: torch.Tensor) -> torch.Tensor:
    """Cosine schedule (Nichol & Dhariwal 2021): cumulative signal fraction at integer step t in [0, T]."""
    s = 0.008
    f = torch.cos((t.double() / T_DIFFUSION + s) / (1 + s) * math.pi / 2) ** 2
    f0 = math.cos(s / (1 + s) * math.pi / 2) ** 2
    return (f / f0).clamp(1e-5, 1.0).float()


class Diffusion(Family):
    name = "diffusion"
    description = "DDPM (v-prediction, cosine schedule) with a 2x2-patch U-Net, sampled by deterministic DDIM"
    ema_decay = 0.995

    def build(self, size: int, cfg: FamilyConfig) -> nn.Module:
        if size % 8:
            raise ValueError(f"the diffusion U-Net needs a tile size divisible by 8, got {size}")
        return _UNet(width=cfg.width)

    def train(self, real: torch.Tensor, cfg: FamilyConfig, seed: int, log: Log) -> Trained:
        torch.manual_seed(seed)
        model = self.build(real.shape[-1], cfg)
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr * 5)
        # Sampling uses an exponential moving average of the weights (as DDPM does): far cleaner samples after
        # a short training than the last iterate.
        ema = copy.deepcopy(model).requires_grad_(False)
        rng = torch.Generator().manual_seed(seed)
        t0 = time.perf_counter()
        for step, idx in enumerate(_batches(len(real), cfg.batch_size, cfg.steps, rng), 1):
            x0 = real[idx]
            t = torch.randint(1, T_DIFFUSION + 1, (len(idx),), generator=rng)
            noise = torch.randn(x0.shape, generator=rng)
            ab = _alpha_bar(t)[:, None, None, None]
            v = ab.sqrt() * noise - (1 - ab).sqrt() * x0  # v-prediction (Salimans & Ho 2022)
            loss = F.mse_loss(model(ab.sqrt() * x0 + (1 - ab).sqrt() * noise, t), v)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            decay = min(self.ema_decay, (1 + step) / (10 + step))  # warm-up: early steps weigh less
            with torch.no_grad():
                for pe, pm in zip(ema.parameters(), model.parameters(), strict=True):
                    pe.lerp_(pm, 1 - decay)
            if step % max(1, cfg.steps // 5) == 0 or step == cfg.steps:
                log(f"{self.name}: step {step}/{cfg.steps}  MSE {loss.item():.4f}  ({time.perf_counter() - t0:.0f} s)")
        return Trained(ema.eval())

    @torch.no_grad()
    def sample(self, model, n, *, seed, cfg, size, source=None):
        rng = torch.Generator().manual_seed(seed)
        x = torch.randn(n, 3, size, size, generator=rng)
        steps = torch.linspace(T_DIFFUSION, 0, cfg.sample_steps + 1).round().long()
        for t_now, t_next in zip(steps[:-1], steps[1:], strict=True):
            ab_now, ab_next = _alpha_bar(t_now[None]), _alpha_bar(t_next[None]) if t_next > 0 else torch.ones(1)
            out = []
            for i in range(0, n, 256):
                xb = x[i : i + 256]
                v = model(xb, t_now.repeat(len(xb)))
                x0 = (ab_now.sqrt() * xb - (1 - ab_now).sqrt() * v).clamp(-1, 1)
                eps = (xb - ab_now.sqrt() * x0) / (1 - ab_now).sqrt()  # consistent with the clipped x0
                out.append(ab_next.sqrt() * x0 + (1 - ab_next).sqrt() * eps)  # DDIM, eta = 0
            x = torch.cat(out)
        return x.clamp(-1, 1)


FAMILIES: dict[str, Family] = {f.name: f for f in (TConvGAN(), ResizeGAN(), VAE(), Diffusion())}


def family_names() -> list[str]:
    return list(FAMILIES)


def describe(name: str, cfg: FamilyConfig) -> dict[str, Any]:
    fam = FAMILIES[name]
    return {"family": name, "description": fam.description, **dataclasses.asdict(cfg)}
