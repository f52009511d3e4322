"""Every method of the paper's Tables 1-4 end to end through `causalclip experiment` on a tiny tree: the four heads on
cached CLIP features (CausalCLIP, UnivFD, VIB-Net, CLIPping) and the five networks trained on the images (NPR,
CNNSpot, FreDect, LGrad, Fusing), to tables with nine rows of ours beside the paper's."""

from __future__ import annotations

import contextlib
import io
import json

import pandas as pd
import pytest

pytest.importorskip("transformers")
from safetensors.torch import save_file  # noqa: E402

from causalclip.cli.main import main  # noqa: E402
from causalclip.networks.lgrad import StyleGANDiscriminatorConfig  # noqa: E402
from causalclip.paper.tables import TEST_SETS  # noqa: E402
from test_clipping import save_tiny_clip  # noqa: E402  (tests/ is on sys.path under pytest)
from test_lgrad import _random_discriminator  # noqa: E402
from test_presets import build_fake_tree  # noqa: E402

HEADS = ["causalclip", "univfd", "vib", "clipping"]
NETWORKS = ["npr", "cnnspot", "fredect", "lgrad", "fusing"]
NARROW = {"layers": [1, 1, 1, 1], "widths": [4, 4, 4, 8], "stem_width": 8}
ARCH = {
    "npr": {"layers": [1, 1], "widths": [4, 8], "stem_width": 8},
    "cnnspot": NARROW,
    "fredect": {**NARROW, "size": 32},
    "lgrad": {**NARROW, "resolution": 32, "fmaps_base": 64, "fmaps_max": 8},
    "fusing": {**NARROW, "global_size": 96, "patch_sizes": [32, 16], "embed_dim": 8, "heads": 2, "depth": 1},
}


@pytest.mark.parametrize(("preset", "n_paper"), [("sd14", 8), ("progan", 9)])  # the paper's SD v1.4 tables lack FreDect
def test_all_nine_methods_run_through_experiment_to_nine_rows(tmp_path, preset, n_paper):
    roots = build_fake_tree(tmp_path / "data", n_test=3, n_train=8)
    clip = save_tiny_clip(tmp_path / "clip")
    disc = _random_discriminator(StyleGANDiscriminatorConfig(resolution=32, fmaps_base=64, fmaps_max=8))
    disc_file = tmp_path / "discriminator.safetensors"
    save_file({k: v.contiguous() for k, v in disc.state_dict().items()}, str(disc_file))
    sets = ["recipe.train_crop=32", "recipe.test_crop=32", "recipe.train_resize=null", "recipe.batch_size=8",
            "recipe.epochs=1", "train.workers=0", f"lgrad.transform={disc_file}"]  # fmt: skip
    sets += [f"{net}.{k}={json.dumps(v)}" for net, arch in ARCH.items() for k, v in arch.items()]
    out = tmp_path / "out"
    argv = [
        "experiment", "--preset", preset, "--genimage", str(roots["genimage"]), "--cnndetection",
        str(roots["cnndetection"]), "--out", str(out), "--backbone", str(clip), "--precision", "fp32", "--workers",
        "0", "--processes", "1", "--val-fraction", "0.3", "--epochs", "2", "-q", "--heads", *HEADS,
        "--networks", *NETWORKS, *[a for s in sets for a in ("--network-set", s)],
    ]  # fmt: skip
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(argv) == 0
    for metric in ("ap", "acc"):
        table = pd.read_csv(out / f"results_{metric}.csv", index_col="method")
        ours = [m for m in table.index if m.endswith("(ours)")]
        paper = [m for m in table.index if m.endswith("(paper)")]
        assert len(ours) == 9 and len(paper) == n_paper, list(table.index)
        assert "CNNSpot (scratch) (ours)" in ours  # no ImageNet weights were given: the row says so
        assert table.loc[ours, list(TEST_SETS)].notna().all().all()
    record = json.loads((out / "experiment.json").read_text())
    assert sorted(r["head"] for r in record["runs"]) == sorted(HEADS + NETWORKS)
