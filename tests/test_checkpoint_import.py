"""Import of the authors' checkpoints (causalclip.networks.importer): files are built here in each official key
layout and container (NPR's bare state dict with fc1, CNNSpot's {"model": ..., "optimizer": ...}, the benchmark's
FreDect {"netC": {"module." ...}} plus its dct_mean/dct_var files, torchvision's ImageNet ResNet-50), imported, and
the network's outputs compared bit for bit with the network the file was made from; a pickle that would run code is
refused without running it."""

from __future__ import annotations

import builtins
import hashlib
import json
import pickle
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from causalclip.networks import build_network
from causalclip.networks.importer import (
    CheckpointImportError,
    import_network,
    load_imagenet_weights,
    read_state_dict,
    read_tensor,
)

TINY_CNNSPOT = {"layers": [1, 1, 2, 1], "widths": [4, 4, 8, 8], "stem_width": 8}
TINY_FREDECT = {"layers": [1, 1, 1, 1], "widths": [4, 4, 4, 8], "stem_width": 8, "size": 32}


def _images(n: int, size: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (n, 3, size, size), generator=g).float() / 255
    return (pixels - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(
        1, 3, 1, 1
    )


def _trained_looking(net: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random BN statistics and biases, so that a key mapped to the wrong place changes the outputs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in net.state_dict().items():
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif name.endswith(("running_mean", "bn1.bias", "bn2.bias", "bn3.bias", "fc.bias")):
                t.copy_(torch.randn(t.shape, generator=g) * 0.1)
            elif name.endswith("num_batches_tracked"):
                t.fill_(1234)
    return net.eval()


def _same_outputs(a: torch.nn.Module, b: torch.nn.Module, size: int) -> None:
    x = _images(3, size, seed=9)
    with torch.no_grad():
        assert torch.equal(a.eval()(x), b.eval()(x))


# ---- official layouts -----------------------------------------------------------------------------------------


def test_npr_bare_state_dict_with_fc1_imports_bit_for_bit(tmp_path):
    torch.manual_seed(0)
    ours = _trained_looking(build_network("npr"))
    authors = OrderedDict((("fc1." + k[3:]) if k.startswith("fc.") else k, v) for k, v in ours.state_dict().items())
    assert "fc1.weight" in authors and "fc.weight" not in authors
    path = tmp_path / "NPR.pth"
    torch.save(authors, path)
    net, report = import_network("npr", path)
    assert not net.training
    _same_outputs(net, ours, 64)
    assert report["mapping"] == [["fc1.", "fc."]] and report["renamed"] == 2
    assert report["n_tensors"] == 146 and report["container"] is None and report["method"] == "npr"
    assert report["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert json.loads(json.dumps(report)) == report


def test_cnnspot_training_checkpoint_with_optimizer_imports_bit_for_bit(tmp_path):
    torch.manual_seed(1)
    ours = _trained_looking(build_network("cnnspot", TINY_CNNSPOT))
    opt = torch.optim.Adam(ours.parameters(), lr=1e-4)
    ours.train()
    ours(_images(2, 64)).sum().backward()
    opt.step()
    ours.eval()
    path = tmp_path / "blur_jpg_prob0.5.pth"  # networks/base_model.py save_networks: model, optimizer, total_steps
    torch.save({"model": ours.state_dict(), "optimizer": opt.state_dict(), "total_steps": 17}, path)
    net, report = import_network("cnnspot", path, config=TINY_CNNSPOT)
    _same_outputs(net, ours, 64)
    assert report["container"] == "model" and report["mapping"] == [] and report["config"]["layers"] == [1, 1, 2, 1]


def test_benchmark_fredect_with_netc_module_prefix_and_auxiliary_statistics(tmp_path):
    torch.manual_seed(2)
    ours = _trained_looking(build_network("fredect", TINY_FREDECT))
    ours.fit([_images(4, 32, seed=1), _images(3, 32, seed=2)])
    trunk = {"module." + k: v for k, v in ours.state_dict().items() if not k.startswith("spectrum.")}
    torch.save({"netC": trunk}, tmp_path / "FreDect.pth")
    # weights/auxiliary/dct_mean and dct_var: float64 tensors saved with torch.save, no file suffix.
    torch.save(ours.spectrum.mean.double(), tmp_path / "dct_mean")
    torch.save(ours.spectrum.var.double(), tmp_path / "dct_var")
    net, report = import_network(
        "fredect",
        tmp_path / "FreDect.pth",
        config=TINY_FREDECT,
        dct_mean=tmp_path / "dct_mean",
        dct_var=tmp_path / "dct_var",
    )
    _same_outputs(net, ours, 32)
    assert report["container"] == "netC" and report["stripped_prefix"] == "module."
    assert report["auxiliary"]["spectrum.var"]["dtype"] == "torch.float64"
    with pytest.raises(CheckpointImportError, match=r"FreDect.pth: has no DCT statistics.*dct_mean="):
        import_network("fredect", tmp_path / "FreDect.pth", config=TINY_FREDECT)
    with pytest.raises(CheckpointImportError, match="FreDect's networks only"):
        import_network("npr", tmp_path / "FreDect.pth", dct_mean=tmp_path / "dct_mean", dct_var=tmp_path / "dct_var")
    bad = ours.spectrum.var.double().clone()
    bad[0, 0, 0] = 0.0
    torch.save(bad, tmp_path / "bad_var")
    with pytest.raises(CheckpointImportError, match="variances > 0"):
        import_network(
            "fredect",
            tmp_path / "FreDect.pth",
            config=TINY_FREDECT,
            dct_mean=tmp_path / "dct_mean",
            dct_var=tmp_path / "bad_var",
        )


def test_our_own_safetensors_export_imports_with_its_statistics(tmp_path):
    torch.manual_seed(3)
    ours = _trained_looking(build_network("fredect-simple", {"size": 32, "channels": [2, 3, 4, 4]}))
    ours.fit([_images(5, 32)])
    save_file({k: v.contiguous() for k, v in ours.state_dict().items()}, str(tmp_path / "model.safetensors"))
    net, report = import_network("fredect-simple", tmp_path / "model.safetensors", config=ours.config)
    _same_outputs(net, ours, 32)
    assert report["auxiliary"] == {} and report["container"] is None
    with pytest.raises(CheckpointImportError, match="carries the DCT statistics already"):
        import_network("fredect-simple", tmp_path / "model.safetensors", config=ours.config, dct_mean="m", dct_var="v")


def test_files_before_pytorch_041_without_bn_counters_import(tmp_path):
    torch.manual_seed(4)
    ours = _trained_looking(build_network("cnnspot", TINY_CNNSPOT))
    old = {k: v for k, v in ours.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(old, tmp_path / "old.pth")
    net, report = import_network("cnnspot", tmp_path / "old.pth", config=TINY_CNNSPOT)
    _same_outputs(net, ours, 64)  # the counters do not enter the forward pass
    assert report["filled_num_batches_tracked"] == sum(k.endswith("num_batches_tracked") for k in ours.state_dict())


# ---- mismatches are listed, naming the file -------------------------------------------------------------------


def test_every_missing_unexpected_and_misshaped_key_is_listed(tmp_path):
    sd = build_network("cnnspot", TINY_CNNSPOT).state_dict()
    sd.pop("layer2.0.conv1.weight")
    sd["layer9.0.conv1.weight"] = torch.zeros(1)
    sd["fc.weight"] = torch.zeros(1000, 32)  # an ImageNet head left in place
    torch.save(sd, tmp_path / "wrong.pth")
    with pytest.raises(CheckpointImportError) as err:
        import_network("cnnspot", tmp_path / "wrong.pth", config=TINY_CNNSPOT)
    msg = str(err.value)
    assert str(tmp_path / "wrong.pth") in msg
    assert "1 missing: ['layer2.0.conv1.weight']" in msg and "1 unexpected: ['layer9.0.conv1.weight']" in msg
    assert "fc.weight: file (1000, 32), network (1, 32)" in msg


def test_npr_file_with_both_fc_and_fc1_is_a_collision_not_a_silent_overwrite(tmp_path):
    sd = OrderedDict(build_network("npr").state_dict())
    sd["fc1.weight"], sd["fc1.bias"] = sd["fc.weight"], sd["fc.bias"]
    torch.save(sd, tmp_path / "both.pth")
    with pytest.raises(CheckpointImportError, match="collide"):
        import_network("npr", tmp_path / "both.pth")


def test_a_full_size_checkpoint_into_a_tiny_config_names_the_config(tmp_path):
    torch.save(build_network("npr").state_dict(), tmp_path / "npr.pth")
    with pytest.raises(CheckpointImportError, match=r"does not fit npr .*'widths': \[4, 8\].*shape mismatch"):
        import_network("npr", tmp_path / "npr.pth", config={"layers": [3, 4], "widths": [4, 8], "stem_width": 64})


# ---- reading files safely -------------------------------------------------------------------------------------


class _WritesAFile:
    """Unpickling this object with a full unpickler opens (creates) the marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (builtins.open, (str(self.marker), "w"))


def test_the_marker_pickle_does_run_code_under_a_full_unpickler(tmp_path):
    # The refusal test below can fail: a full unpickler does create the marker.
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps({"model": _WritesAFile(marker)}, protocol=2)).get("model").close()
    assert marker.exists()


@pytest.mark.parametrize("how", ["torch.save", "pickle-protocol-2", "pickle-protocol-4"])
def test_a_pickle_that_would_run_code_is_refused_and_does_not_run(tmp_path, how):
    marker = tmp_path / "ran"
    payload = {"model": {"conv1.weight": torch.zeros(1)}, "hook": _WritesAFile(marker)}
    path = tmp_path / "evil.pth"
    if how == "torch.save":
        torch.save(payload, path)
    else:
        with open(path, "wb") as f:
            pickle.dump(payload, f, protocol=int(how[-1]))
    for read in (read_state_dict, lambda p: import_network("cnnspot", p, config=TINY_CNNSPOT)):
        with pytest.raises(CheckpointImportError, match=r"evil.pth: refused: .*nothing in it was run"):
            read(path)
    assert not marker.exists()


def test_torch_save_pickle_names_the_global_it_refused(tmp_path):
    torch.save({"model": _WritesAFile(tmp_path / "ran")}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointImportError, match=r"refers to io.open"):
        read_state_dict(tmp_path / "evil.pth")


def test_unreadable_files_name_the_file_and_the_problem(tmp_path):
    (tmp_path / "empty.pth").write_bytes(b"")
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 40)
    (tmp_path / "savedmodel").mkdir()
    torch.save({"epoch": 3, "lr": 0.1}, tmp_path / "nodict.pth")
    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    cases = [
        ("missing.pth", "missing.pth: no such file"),
        ("empty.pth", "empty.pth: not a PyTorch checkpoint"),
        ("bad.safetensors", "bad.safetensors: not a readable safetensors file"),
        ("savedmodel", "savedmodel: is a directory"),
        ("nodict.pth", r"nodict.pth: no state dict found.*keys found: \['epoch', 'lr'\]"),
        ("list.pth", "list.pth: holds a list"),
    ]
    for name, match in cases:
        with pytest.raises(CheckpointImportError, match=match):
            read_state_dict(tmp_path / name)


def test_partial_module_prefix_is_an_error_and_read_tensor_wants_a_tensor(tmp_path):
    torch.save({"module.a": torch.zeros(1), "b": torch.zeros(1)}, tmp_path / "mixed.pth")
    with pytest.raises(CheckpointImportError, match="only 1 of 2 keys start with 'module.'"):
        read_state_dict(tmp_path / "mixed.pth")
    torch.save({"a": torch.ones(2)}, tmp_path / "dict.pth")
    with pytest.raises(CheckpointImportError, match="dict.pth: expected a tensor, found a dict"):
        read_tensor(tmp_path / "dict.pth")
    save_file({"x": torch.ones(2)}, str(tmp_path / "one.safetensors"))
    assert torch.equal(read_tensor(tmp_path / "one.safetensors"), torch.ones(2))


# ---- ImageNet initialisation ----------------------------------------------------------------------------------


def _torchvision_file(path: Path, seed: int) -> dict[str, torch.Tensor]:
    """A torchvision-layout ResNet file (tiny widths) with its 1000-class fc, as resnet50-*.pth stores it."""
    torch.manual_seed(seed)
    sd = _trained_looking(build_network("cnnspot", TINY_CNNSPOT)).state_dict()
    sd["fc.weight"], sd["fc.bias"] = torch.randn(1000, 32), torch.randn(1000)
    torch.save(OrderedDict(sd), path)
    return sd


def test_imagenet_weights_load_into_the_trunk_and_keep_the_new_fc(tmp_path):
    src = _torchvision_file(tmp_path / "resnet50-0676ba61.pth", seed=5)
    torch.manual_seed(6)
    net = build_network("cnnspot", TINY_CNNSPOT)
    fc_before = net.fc.weight.detach().clone()
    report = load_imagenet_weights(net, tmp_path / "resnet50-0676ba61.pth")
    after = net.state_dict()
    for k, v in src.items():
        if not k.startswith("fc."):
            assert torch.equal(after[k], v), k
    assert torch.equal(net.fc.weight, fc_before)
    assert report["ignored"] == ["fc.weight", "fc.bias"] and report["kept_from_module"] == ["fc.weight", "fc.bias"]
    assert report["loaded"] == len(src) - 2 and json.loads(json.dumps(report)) == report


def test_imagenet_weights_into_fredect_keep_its_statistics_and_refuse_npr(tmp_path):
    _torchvision_file(tmp_path / "resnet50.pth", seed=7)
    cfg = {**TINY_FREDECT, "layers": [1, 1, 2, 1], "widths": [4, 4, 8, 8]}
    net = build_network("fredect", cfg)
    net.fit([_images(3, 32)])
    mean = net.spectrum.mean.clone()
    report = load_imagenet_weights(net, tmp_path / "resnet50.pth")
    assert torch.equal(net.spectrum.mean, mean) and "spectrum.mean" in report["kept_from_module"]
    with pytest.raises(
        CheckpointImportError,
        match=r"resnet50.pth: does not fit .*conv1.weight: file \(8, 3, 7, 7\), network \(64, 3, 3, 3\)",
    ):
        load_imagenet_weights(build_network("npr"), tmp_path / "resnet50.pth")
