"""The authors' released checkpoints, read safely and checked key by key.

Files are read with ``torch.load(path, map_location="cpu", weights_only=True)`` (tensors and plain containers only;
a file that needs a full unpickler is refused, never run) or with safetensors. The containers authors wrap state
dicts in (``{"model": sd, "optimizer": ..., "total_steps": ...}`` for CNNSpot, ``{"netC": sd}`` for
AIGCDetectBenchmark's FreDect, a bare state dict for NPR) are unwrapped and DataParallel's ``module.`` prefix
stripped. The authors' names are mapped onto ours with a short, explicit table (:data:`KEY_MAPS`); then every key and
shape is checked against the network and a mismatch lists all missing, unexpected and mis-shaped keys, naming the
file. docs/guides/comparison-methods.md lists where each official checkpoint is published and what is expected.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .lgrad import discriminator_state
from .registry import build_network, get_network_method, network_config_dict
from .resnet import ResNetTrunk

__all__ = [
    "CONTAINER_KEYS",
    "DROPPED_KEYS",
    "KEY_MAPS",
    "CheckpointImportError",
    "import_network",
    "load_imagenet_weights",
    "read_lgrad_transform",
    "read_state_dict",
    "read_tensor",
]

PathLike = str | os.PathLike[str]

# Authors' key prefix -> ours, per method. Everything else already has torchvision's names.
KEY_MAPS: dict[str, tuple[tuple[str, str], ...]] = {
    "npr": (("fc1.", "fc."),),  # NPR's networks/resnet.py names its 512 -> 1 layer fc1
    "cnnspot": (),
    "fredect": (),
    "fredect-simple": (),  # the authors publish TensorFlow SavedModels only; this reads our own exports
    "fusing": (),  # the authors' Patch5Model names (resnet., mha_list., fc1., fc.) are ours
    "lgrad": (),  # the classifier is CNNDetection's resnet50 (CNNSpot's layout); the transform comes separately
}

# Keys of the authors' files that their own forward never uses, dropped (and counted in the report), per method.
DROPPED_KEYS: dict[str, tuple[str, ...]] = {
    "fusing": ("resnet.fc.",),  # Patch5Model keeps torchvision's 1000-way ImageNet fc inside its trunk, unused
}

# Where authors put the state dict inside a saved dict, tried in this order.
CONTAINER_KEYS = ("model", "state_dict", "netC", "model_state_dict", "net", "network", "module")

# Statistics FreDect's spectrum needs that AIGCDetectBenchmark ships beside the checkpoint, not inside it.
_SPECTRUM_KEYS = ("spectrum.mean", "spectrum.var")


class CheckpointImportError(ValueError):
    """A checkpoint file cannot be read or does not fit the network; the message names the file and the problem."""


def _torch_load(path: Path) -> Any:
    if path.is_dir():
        raise CheckpointImportError(
            f"{path}: is a directory, not a checkpoint file (TensorFlow SavedModels, as Frank et al. publish, "
            "cannot be imported)"
        )
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*pickle protocol.*")  # we report the failure ourselves
            return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as exc:
        raise CheckpointImportError(f"{path}: no such file") from exc
    except pickle.UnpicklingError as exc:
        text = str(exc)
        glob = re.search(r"GLOBAL ([\w.]+)", text)
        operand = re.search(r"Unsupported operand (\d+)", text)
        if glob:
            why = f"it refers to {glob.group(1)}, which only a full unpickler would import and call"
        elif operand:
            why = (
                f"the weights-only reader stops at pickle opcode {operand.group(1)}: the file is either not a PyTorch "
                "checkpoint or a pickle that needs a full unpickler"
            )
        else:
            why = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
        raise CheckpointImportError(
            f"{path}: refused: {why}. Only tensors and plain containers are read (torch.load weights_only=True), "
            "because a full unpickler can run code stored in the file; nothing in it was run. If you trust the file, "
            "re-save its state dict with torch.save(state_dict) or as .safetensors and import that."
        ) from exc
    except OSError as exc:
        raise CheckpointImportError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    except (RuntimeError, EOFError, ValueError) as exc:
        raise CheckpointImportError(f"{path}: not a PyTorch checkpoint ({type(exc).__name__}: {exc})") from exc


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except FileNotFoundError as exc:
        raise CheckpointImportError(f"{path}: no such file") from exc
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointImportError(f"{path}: not a readable safetensors file ({exc})") from exc


def _unwrap(path: Path, obj: Any) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Descend through the authors' containers to the state dict; returns it and the keys descended through."""
    trail: list[str] = []
    while isinstance(obj, Mapping):
        if obj and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
            return dict(obj), trail
        key = next((k for k in CONTAINER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if key is None:
            top = sorted(map(str, obj))[:20]
            raise CheckpointImportError(
                f"{path}: no state dict found{' under ' + '/'.join(trail) if trail else ''}: expected a mapping of "
                f"names to tensors, or one of {list(CONTAINER_KEYS)} holding it; keys found: {top}"
            )
        trail.append(key)
        obj = obj[key]
    raise CheckpointImportError(
        f"{path}: holds a {type(obj).__name__}{' under ' + '/'.join(trail) if trail else ''}, not a state dict"
    )


def _read(path: PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    path = Path(path)
    if path.suffix.lower() == ".safetensors":
        state, trail = _read_safetensors(path), []
    else:
        state, trail = _unwrap(path, _torch_load(path))
    prefixed = sum(k.startswith("module.") for k in state)
    if prefixed:
        if prefixed != len(state):
            raise CheckpointImportError(f"{path}: only {prefixed} of {len(state)} keys start with 'module.'")
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state, {"container": "/".join(trail) or None, "stripped_prefix": "module." if prefixed else None}


def read_state_dict(path: PathLike) -> dict[str, torch.Tensor]:
    """The state dict stored in ``path`` (.safetensors, or a torch file read with ``weights_only=True`` only),
    unwrapped from the authors' containers and without DataParallel's ``module.`` prefix."""
    return _read(path)[0]


def read_tensor(path: PathLike) -> torch.Tensor:
    """One tensor saved with ``torch.save(tensor)`` (AIGCDetectBenchmark's dct_mean/dct_var) or the only tensor of
    a .safetensors file, read with ``weights_only=True``."""
    path = Path(path)
    if path.suffix.lower() == ".safetensors":
        tensors = _read_safetensors(path)
        if len(tensors) != 1:
            raise CheckpointImportError(f"{path}: expected one tensor, found {len(tensors)}: {sorted(tensors)[:10]}")
        return next(iter(tensors.values()))
    obj = _torch_load(path)
    if not isinstance(obj, torch.Tensor):
        raise CheckpointImportError(f"{path}: expected a tensor, found a {type(obj).__name__}")
    return obj


def sha256_file(path: PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _rename(
    path: Path, state: dict[str, torch.Tensor], mapping: tuple[tuple[str, str], ...]
) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        new = key
        for old_prefix, new_prefix in mapping:
            if key.startswith(old_prefix):
                new = new_prefix + key.removeprefix(old_prefix)
                break
        if new in out:
            raise CheckpointImportError(f"{path}: keys collide after renaming: {key!r} -> {new!r} already present")
        out[new] = value
    return out


def _check(path: Path, expected: Mapping[str, torch.Tensor], found: Mapping[str, torch.Tensor], what: str) -> list[str]:
    """Raise unless ``found`` has every key of ``expected`` with its shape and nothing else; returns the BN
    ``num_batches_tracked`` counters the file lacks (files saved before PyTorch 0.4.1 have none; they are set to 0
    and only matter for BatchNorm with momentum=None, which no network here uses)."""
    missing = [k for k in expected if k not in found]
    counters = [k for k in missing if k.endswith(".num_batches_tracked")]
    missing = [k for k in missing if k not in counters]
    unexpected = [k for k in found if k not in expected]
    shapes = [
        f"{k}: file {tuple(found[k].shape)}, network {tuple(v.shape)}"
        for k, v in expected.items()
        if k in found and tuple(found[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or shapes:
        parts = []
        for label, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes)):
            if items:
                shown = items[:12] + ([f"... {len(items) - 12} more"] if len(items) > 12 else [])
                parts.append(f"{len(items)} {label}: {shown}")
        raise CheckpointImportError(f"{path}: does not fit {what}: " + "; ".join(parts))
    return counters


def import_network(
    method: str,
    path: PathLike,
    *,
    config: Any = None,
    dct_mean: PathLike | None = None,
    dct_var: PathLike | None = None,
    transform: PathLike | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Build ``method``'s network (``config``: None, dict or config instance) and load the authors' checkpoint.

    Every key is mapped (:data:`KEY_MAPS`) and checked with its shape; any mismatch raises CheckpointImportError
    listing them all. ``dct_mean``/``dct_var`` (FreDect only): AIGCDetectBenchmark's ``weights/auxiliary`` files,
    needed when the checkpoint does not carry the spectrum statistics (theirs does not; ours does). ``transform``
    (LGrad only): the transformation model (:func:`read_lgrad_transform`), needed when the checkpoint is the
    authors' classifier alone. Returns the network in eval mode and a JSON-able report of what was read.
    """
    spec = get_network_method(method)
    path = Path(path)
    net = build_network(method, config)
    if (dct_mean is not None or dct_var is not None) and not hasattr(net, "spectrum"):
        raise CheckpointImportError(f"{path}: dct_mean/dct_var apply to FreDect's networks only, not {method!r}")
    if transform is not None and not hasattr(net, "discriminator"):
        raise CheckpointImportError(f"{path}: transform applies to LGrad only, not {method!r}")
    raw, found = _read(path)
    mapping = KEY_MAPS.get(method, ())
    state = _rename(path, raw, mapping)
    dropped = sorted(k for k in state if k.startswith(DROPPED_KEYS.get(method, ())) and k not in net.state_dict())
    for key in dropped:
        del state[key]
    aux: dict[str, Any] = {}
    if hasattr(net, "discriminator"):
        has = any(k.startswith("discriminator.") for k in state)
        if has and transform is not None:
            raise CheckpointImportError(f"{path}: carries the transformation model already; do not pass transform")
        if not has:
            if transform is None:
                raise CheckpointImportError(
                    f"{path}: holds no transformation model (discriminator.*); pass transform= (for the authors' "
                    "LGrad: karras2019stylegan-bedrooms-256x256_discriminator.pth)"
                )
            disc = read_lgrad_transform(transform, net.config.discriminator())
            state.update({f"discriminator.{k}": v for k, v in disc.items()})
            aux["transform"] = {"source": str(transform), "sha256": sha256_file(transform), "n_tensors": len(disc)}
    if hasattr(net, "spectrum"):
        has = [k in state for k in _SPECTRUM_KEYS]
        if any(has) and (dct_mean is not None or dct_var is not None):
            raise CheckpointImportError(f"{path}: carries the DCT statistics already; do not pass dct_mean/dct_var")
        if not any(has):
            if dct_mean is None or dct_var is None:
                raise CheckpointImportError(
                    f"{path}: has no DCT statistics (spectrum.mean/var); pass dct_mean= and dct_var= (for "
                    "AIGCDetectBenchmark's FreDect: weights/auxiliary/dct_mean and dct_var of that repository)"
                )
            for key, aux_path in zip(_SPECTRUM_KEYS, (dct_mean, dct_var), strict=True):
                state[key] = read_tensor(aux_path)
                aux[key] = {"source": str(aux_path), "sha256": sha256_file(aux_path), "dtype": str(state[key].dtype)}
    expected = net.state_dict()
    counters = _check(path, expected, state, f"{method} ({spec.title}) {network_config_dict(method, net)}")
    for key in counters:
        state[key] = torch.zeros((), dtype=torch.long)
    if "spectrum.var" in aux:
        var = state["spectrum.var"]
        if not (torch.isfinite(var).all() and (var > 0).all() and torch.isfinite(state["spectrum.mean"]).all()):
            raise CheckpointImportError(f"{dct_mean}, {dct_var}: the DCT means must be finite, the variances > 0")
    net.load_state_dict(state, strict=True)
    net.eval()
    report = {
        "method": method,
        "title": spec.title,
        "source": str(path),
        "sha256": sha256_file(path),
        "n_tensors": len(raw),
        "container": found["container"],
        "stripped_prefix": found["stripped_prefix"],
        "mapping": [list(pair) for pair in mapping],
        "renamed": sum(1 for k in raw if k not in state and k not in dropped),
        "dropped": dropped,
        "filled_num_batches_tracked": len(counters),
        "dtypes": sorted({str(v.dtype).removeprefix("torch.") for v in raw.values()}),
        "config": network_config_dict(method, net),
        "auxiliary": aux,
    }
    return net, report


def load_imagenet_weights(module: nn.Module, path: PathLike) -> dict[str, Any]:
    """Load a torchvision ResNet-50 ImageNet file (``resnet50-*.pth``) into the trunk of ``module`` (CNNSpot,
    FreDect, LGrad's classifier, Fusing's shared trunk): every key except ``fc`` must be present with its shape; the
    file's 1000-class fc is ignored and the module's fc (and FreDect's spectrum statistics, LGrad's transformation
    model: ``module.imagenet_exclude``) are kept. A module whose trunk is a submodule says where with
    ``imagenet_prefix`` (Fusing: ``"resnet."``). Returns a JSON-able report."""
    path = Path(path)
    prefix = getattr(module, "imagenet_prefix", "")
    trunk = module.get_submodule(prefix.rstrip(".")) if prefix else module
    if not isinstance(trunk, ResNetTrunk):
        raise CheckpointImportError(f"{path}: ImageNet weights load into a ResNet trunk, not a {type(module).__name__}")
    exclude = tuple(getattr(module, "imagenet_exclude", ()))
    own = module.state_dict()
    is_trunk = [
        k
        for k in own
        if k.startswith(prefix) and not k[len(prefix) :].startswith(("fc.", "spectrum.")) and not k.startswith(exclude)
    ]
    keep = [k for k in own if k not in set(is_trunk)]
    expected = {k: own[k] for k in is_trunk}
    raw, found = _read(path)
    ignored = [k for k in raw if k.startswith("fc.")]
    state = {prefix + k: v for k, v in raw.items() if k not in ignored}
    counters = _check(path, expected, state, f"the trunk of {type(module).__name__} (torchvision ResNet-50 layout)")
    for key in counters:
        state[key] = torch.zeros((), dtype=torch.long)
    result = module.load_state_dict(state, strict=False)
    if sorted(result.missing_keys) != sorted(keep) or result.unexpected_keys:  # _check makes this unreachable
        raise CheckpointImportError(
            f"{path}: loaded with missing {result.missing_keys}, unexpected {result.unexpected_keys}"
        )
    return {
        "source": str(path),
        "sha256": sha256_file(path),
        "n_tensors": len(raw),
        "container": found["container"],
        "loaded": len(state),
        "ignored": ignored,
        "kept_from_module": keep,
        "filled_num_batches_tracked": len(counters),
    }


def read_lgrad_transform(path: PathLike, config: Any) -> dict[str, torch.Tensor]:
    """The state dict of LGrad's transformation model (:class:`~causalclip.networks.lgrad.StyleGANDiscriminator`,
    or :class:`~causalclip.networks.lgrad.DCGANDiscriminator` for a DCGAN ``config``: a demo GAN family's
    ``discriminator.safetensors``, built from ``config``) read from ``path``: the authors' genforce file
    (``karras2019stylegan-bedrooms-256x256_discriminator.pth``, a bare state dict, read with ``weights_only``), our
    safetensors of the discriminator, or any file whose ``discriminator.*`` keys hold one (an LGrad run's
    model.safetensors); checked key by key (:func:`~causalclip.networks.lgrad.discriminator_state`)."""
    path = Path(path)
    state, _ = _read(path)
    try:
        return discriminator_state(state, config, where=str(path))
    except ValueError as exc:
        raise CheckpointImportError(str(exc)) from exc
