"""Fusing (causalclip.networks.fusing): the patch selection against a NumPy reference written from the authors'
description (window means summed over channels, greedy picks with 3 x 3 suppression, boxes in the central
square shifted inside the image), the picks against the attention ranking itself, the authors' Patch5Model key
list, the import of their checkpoint layout, and ImageNet weights into the shared trunk."""

from __future__ import annotations

import json
from collections import OrderedDict

import numpy as np
import pytest
import torch

from causalclip.networks import build_network, get_network_method
from causalclip.networks.fusing import feature_map_side, patch_scores, select_patches
from causalclip.networks.importer import CheckpointImportError, import_network, load_imagenet_weights

TINY = {"layers": [1, 1, 1, 1], "widths": [4, 4, 4, 8], "stem_width": 8, "global_size": 128,
        "patch_sizes": [48, 24], "embed_dim": 8, "heads": 2, "depth": 1}  # fmt: skip


def _reference_boxes(fm: np.ndarray, height: int, width: int, windows=(3, 2), counts=(3, 3), sizes=(224, 112)):
    """The PSM for one image, with loops: (C, h, w) feature map -> list of (top, left, bottom, right)."""
    _, fh, fw = fm.shape
    side = min(height, width)
    base = ((height - side) // 2, (width - side) // 2)
    boxes = []
    for k, count, size in zip(windows, counts, sizes, strict=True):
        sh, sw = fh - k + 1, fw - k + 1
        score = np.array([[fm[:, i : i + k, j : j + k].mean(axis=(1, 2)).sum() for j in range(sw)] for i in range(sh)])
        for _ in range(count):
            flat = int(np.argmax(score))  # first maximum in row-major order
            r, c = divmod(flat, sw)
            peak = score[r, c]
            erase = np.zeros_like(score, dtype=bool)
            for i in range(sh):
                for j in range(sw):
                    hood = score[max(i - 1, 0) : i + 2, max(j - 1, 0) : j + 2]
                    erase[i, j] = hood.max() == peak
            score = np.where(erase, 0.0, score)
            centre = []
            for pos, f, s, b in ((r, fh, sh, base[0]), (c, fw, sw, base[1])):
                rate = np.float32(2 * pos + f - s + 1) / np.float32(2 * f)
                centre.append(int(np.float32(b) + np.float32(side) * rate))
            tl = [centre[0] - size // 2, centre[1] - size // 2]
            br = [centre[0] + size // 2 + size % 2, centre[1] + size // 2 + size % 2]
            for d, limit in ((0, height), (1, width)):
                if tl[d] < 0:  # off the top/left edge: shift in
                    br[d] -= tl[d]
                    tl[d] = 0
                if br[d] > limit:  # off the bottom/right edge: shift in, clip at 0 if larger than the image
                    tl[d] -= br[d] - limit
                    br[d] = limit
                    tl[d] = max(tl[d], 0)
            boxes.append((tl[0], tl[1], br[0], br[1]))
    return boxes


@pytest.mark.parametrize("height,width", [(256, 256), (300, 450), (512, 384), (120, 100)])
def test_patch_selection_equals_the_reference(height, width):
    fm = torch.rand(3, 16, 7, 7, generator=torch.Generator().manual_seed(height + width))
    ours = select_patches(fm, height, width).numpy()
    assert ours.shape == (3, 6, 4) and ours.dtype == np.int64
    for i in range(3):
        assert [tuple(b) for b in ours[i].tolist()] == _reference_boxes(fm[i].numpy(), height, width)
    # Every box lies inside the image and has its type's size where the image allows it.
    assert (ours[..., :2] >= 0).all() and (ours[..., 2] <= height).all() and (ours[..., 3] <= width).all()
    sizes = np.array([224] * 3 + [112] * 3)
    assert (ours[..., 2] - ours[..., 0] == np.minimum(sizes, height)).all()
    assert (ours[..., 3] - ours[..., 1] == np.minimum(sizes, width)).all()


def test_patch_selection_picks_the_windows_its_attention_ranks_highest():
    # A feature map whose 3 x 3 window scores are planted: a 3 x 3 block of value v makes the window exactly on it
    # score v (plus background) and every other window less. Four blocks, scores 9 > 7 > 5 > 1.
    fm = torch.full((1, 4, 7, 7), 0.01)
    blocks = {(0, 0): 9.0, (4, 4): 7.0, (0, 4): 5.0, (4, 0): 1.0}
    for (r, c), v in blocks.items():
        fm[0, :, r : r + 3, c : c + 3] = v
    score = patch_scores(fm, 3)[0]  # (5, 5): window (i, j) covers rows i..i+2, cols j..j+2
    ranked = sorted(((float(score[i, j]), (i, j)) for i in range(5) for j in range(5)), reverse=True)
    assert ranked[0][1] == (0, 0)  # the planted ranking is the attention's own

    def window(box):  # the window a 64-px box in a 224-px image was centred on (centre = 224 (2i + 3) / 14)
        centre = [(box[0] + box[2]) // 2, (box[1] + box[3]) // 2]
        return tuple(min(range(5), key=lambda i, c=c: abs(int(224 * (2 * i + 3) / 14) - c)) for c in centre)

    # The fourth pick is the best window left after suppression: (0, 2), which straddles the 9- and 5-blocks
    # ((3 * 9 + 3 * 5) / 9 = 4.7), ahead of the 1-block.
    for count, expected in ((3, [(0, 0), (4, 4), (0, 4)]), (4, [(0, 0), (4, 4), (0, 4), (0, 2)])):
        boxes = select_patches(fm, 224, 224, score_windows=(3,), patches_per_window=(count,), patch_sizes=(64,))[0]
        assert [window(b) for b in boxes.tolist()] == expected
        assert [float(score[w]) for w in expected] == sorted((float(score[w]) for w in expected), reverse=True)
    # Suppression: the windows next to the best one score almost as high, yet are never picked before the others.
    assert float(score[0, 1]) > float(score[0, 4])


def test_the_network_scores_the_patches_the_selection_picked():
    torch.manual_seed(0)
    net = build_network("fusing", TINY).eval()
    x = torch.randn(2, 3, 96, 80)
    with torch.no_grad():
        fm, _ = net.resnet.feature_map(torch.nn.functional.interpolate(x, size=(153, 128))[..., 12:140, :])
        boxes = net.boxes(fm, 96, 80)
        patches = net.crop_patches(x, boxes)
    assert patches.shape == (2 * 6, 3, 128, 128)
    # The first patch of image 0 is its box, resized (bilinear, align_corners=True) to the global size.
    top, left, bottom, right = boxes[0, 0].tolist()
    ref = torch.nn.functional.interpolate(
        x[:1, :, top:bottom, left:right], size=(128, 128), mode="bilinear", align_corners=True
    )
    assert torch.equal(patches[0], ref[0])


def test_local_size_resizes_the_same_patches_to_it_and_the_trunk_reads_them():
    """FusingConfig.local_size (the demo's cheaper Fusing): the same boxes, each resized to local_size, not the global
    view's size; the network still scores them (its output differs from the authors' resize)."""
    torch.manual_seed(0)
    small = build_network("fusing", {**TINY, "local_size": 32}).eval()
    x = torch.randn(2, 3, 96, 80)
    boxes = torch.tensor([[[0, 0, 48, 48], [10, 20, 34, 44]]] * 2)
    patches = small.crop_patches(x, boxes)
    assert patches.shape == (4, 3, 32, 32)
    ref = torch.nn.functional.interpolate(x[1:, :, 10:34, 20:44], size=(32, 32), mode="bilinear", align_corners=True)
    assert torch.equal(patches[3], ref[0])
    with torch.no_grad():
        assert small(x).shape == (2,) and torch.isfinite(small(x)).all()
    with pytest.raises(ValueError, match="local_size"):
        build_network("fusing", {**TINY, "local_size": 0})


def test_a_global_size_too_small_for_the_windows_is_refused():
    assert feature_map_side(224, 4) == 7 and feature_map_side(128, 4) == 4
    with pytest.raises(ValueError, match="2 x 2 feature map"):
        build_network("fusing", {**TINY, "global_size": 64})


# ---- the authors' checkpoint -----------------------------------------------------------------------------------

# Patch5Model's state dict beyond its torchvision ResNet-50 (resnet.*): "name shape".
AUTHORS_HEAD = """
resnet.fc.weight 1000,2048
resnet.fc.bias 1000
mha_list.0.mha.in_proj_weight 384,128
mha_list.0.mha.in_proj_bias 384
mha_list.0.mha.out_proj.weight 128,128
mha_list.0.mha.out_proj.bias 128
mha_list.0.ln1.weight 128
mha_list.0.ln1.bias 128
mha_list.0.fc1.weight 128,128
mha_list.0.fc1.bias 128
mha_list.0.fc2.weight 128,128
mha_list.0.fc2.bias 128
mha_list.0.ln2.weight 128
mha_list.0.ln2.bias 128
fc1.weight 128,2048
fc1.bias 128
fc.weight 1,128
fc.bias 1
"""


def test_state_dict_is_patch5model_without_its_unused_imagenet_fc():
    from test_networks import RESNET50_KEYS, _parse_keys

    ours = {k: tuple(v.shape) for k, v in build_network("fusing").state_dict().items()}
    trunk = {f"resnet.{k}": s for k, s in _parse_keys(RESNET50_KEYS) if not k.startswith("fc.")}
    head = dict(_parse_keys(AUTHORS_HEAD))
    for i in (1, 2):  # three identical SA layers
        head.update({k.replace("mha_list.0.", f"mha_list.{i}."): s for k, s in head.items() if ".0." in k})
    authors = {**trunk, **head}
    assert ours == {k: s for k, s in authors.items() if not k.startswith("resnet.fc.")}
    assert sum(int(np.prod(s)) for k, s in ours.items() if "running" not in k and "num_batches" not in k) == 24_069_185


def test_authors_multi_gpu_checkpoint_imports_bit_for_bit(tmp_path):
    torch.manual_seed(0)
    ours = build_network("fusing", TINY).eval()
    with torch.no_grad():
        for name, t in ours.state_dict().items():
            if name.endswith("running_var"):
                t.uniform_(0.5, 1.5)
            elif name.endswith("running_mean"):
                t.normal_(0, 0.1)
    state = OrderedDict((f"module.{k}", v) for k, v in ours.state_dict().items())
    state["module.resnet.fc.weight"] = torch.randn(1000, 8 * 4)  # the unused ImageNet fc (tiny trunk: 32 features)
    state["module.resnet.fc.bias"] = torch.randn(1000)
    path = tmp_path / "model_epoch_best.pth"
    torch.save({"model": state, "optimizer": {}, "total_steps": 7}, path)
    net, report = import_network("fusing", path, config=TINY)
    assert report["dropped"] == ["resnet.fc.bias", "resnet.fc.weight"] and report["stripped_prefix"] == "module."
    assert json.loads(json.dumps(report)) == report
    x = torch.randn(2, 3, 100, 90)
    with torch.no_grad():
        assert torch.equal(net(x), ours(x))
    del state["module.fc1.weight"]
    torch.save({"model": state}, path)
    with pytest.raises(CheckpointImportError, match="1 missing.*fc1.weight"):
        import_network("fusing", path, config=TINY)


def test_imagenet_weights_load_into_the_shared_trunk_only(tmp_path):
    from test_networks import RESNET50_KEYS, _parse_keys

    g = torch.Generator().manual_seed(0)
    tv = {k: (torch.randn(s, generator=g) if s else torch.tensor(5)) for k, s in _parse_keys(RESNET50_KEYS)}
    tv["fc.weight"], tv["fc.bias"] = torch.randn(1000, 2048), torch.randn(1000)
    torch.save(tv, tmp_path / "resnet50-0676ba61.pth")
    net = build_network("fusing")
    head_before = {k: v.clone() for k, v in net.state_dict().items() if not k.startswith("resnet.")}
    report = load_imagenet_weights(net, tmp_path / "resnet50-0676ba61.pth")
    assert report["ignored"] == ["fc.weight", "fc.bias"] and len(report["kept_from_module"]) == len(head_before)
    assert torch.equal(net.resnet.layer4[2].conv3.weight, tv["layer4.2.conv3.weight"])
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in head_before.items())


def test_recipe_is_the_authors_train_sh():
    spec = get_network_method("fusing")
    r = spec.recipe
    assert (r.batch_size, r.lr, r.optimizer, r.plateau_patience) == (128, 5e-5, "adam", 10)
    assert (r.blur_prob, r.blur_sigma, r.jpeg_prob, r.jpeg_quality) == (0.1, (0.0, 3.0), 0.1, (30, 100))
    assert spec.init == "imagenet" and r.train_resize is None
