"""Bad values and unsafe folders found by trying the tool as a newcomer: each is one clear error."""

from __future__ import annotations

import os

import pytest
import torch

from causalclip.cli.main import main
from causalclip.core.config import ConfigError, config_from_dict
from causalclip.training.config import TrainConfig


@pytest.mark.parametrize(
    ("key", "value"),
    [("epochs", 0), ("batch_size", 0), ("patience", 0), ("lr", -1.0), ("lr", 0.0), ("val_max_samples", -1)],
)
def test_out_of_range_training_values_are_config_errors(key, value):
    with pytest.raises(ConfigError, match=key):
        config_from_dict(TrainConfig, {key: value})
    config_from_dict(TrainConfig, {"epochs": 1, "batch_size": 1, "lr": 1e-6})  # the smallest valid values


@pytest.mark.parametrize("flag", [["--epochs", "0"], ["--batch-size", "0"], ["--lr", "-1"]])
def test_cli_rejects_out_of_range_values_before_training(scm_sets, tmp_path, capsys, flag):
    run = tmp_path / "run"
    argv = ["train", "--train", str(scm_sets["train"]), "--val", str(scm_sets["val"]), "--out", str(run), "-q"]
    assert main(argv + flag) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "must be" in err[0]
    assert not run.exists() or not (run / "config.json").exists()


def test_run_folder_with_a_pickle_beside_safetensors_is_refused(scm_sets, tmp_path, capsys):
    run = tmp_path / "run"
    argv = ["train", "--train", str(scm_sets["train"]), "--val", str(scm_sets["val"]), "--out", str(run)]
    assert main([*argv, "--epochs", "1", "-q"]) == 0
    assert main(["evaluate", str(run), "--test", str(scm_sets["test"])]) == 0
    torch.save({"x": 1}, run / "model.bin")
    capsys.readouterr()
    assert main(["evaluate", str(run), "--test", str(scm_sets["test"])]) == 2
    err = capsys.readouterr().err
    assert "model.bin" in err and "pickle" in err


def test_local_clip_folder_is_recorded_as_an_absolute_path(tmp_path, monkeypatch):
    transformers = pytest.importorskip("transformers")
    from causalclip.backbones.base import BackboneError
    from causalclip.backbones.registry import load_backbone

    cfg = transformers.CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4, image_size=28,
        patch_size=14, projection_dim=8,
    )  # fmt: skip
    transformers.CLIPVisionModelWithProjection(cfg).save_pretrained(tmp_path / "clip")
    monkeypatch.chdir(tmp_path)
    bb = load_backbone("clip")
    assert bb.describe()["model"] == os.path.join(str(tmp_path), "clip")
    with pytest.raises(BackboneError, match="no such folder"):  # a trailing slash means a folder, not a hub id
        load_backbone("nofolder/")
