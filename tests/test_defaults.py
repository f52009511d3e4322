"""Each default has one definition: the command line takes it from the config dataclass; "auto" extraction
settings are chosen from the job's size."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from causalclip.cli.main import build_parser
from causalclip.features import job
from causalclip.features.job import AUTO_COMPILE_MIN_IMAGES, AUTO_PROCESSES_MIN_IMAGES, ExtractConfig
from causalclip.paper.experiment import ExtractOptions
from causalclip.training.config import TrainConfig

CPU, GPU = torch.device("cpu"), torch.device("cuda")


def test_extract_options_come_from_extract_config(monkeypatch):
    for name, value in (("batch_size", 13), ("shard_size", 77), ("workers", 3), ("processes", 2)):
        monkeypatch.setattr(ExtractConfig, name, value)
    args = build_parser().parse_args(["extract", "root", "--layout", "folders", "--out", "o"])
    assert (args.batch_size, args.shard_size, args.workers, args.processes) == (13, 77, 3, 2)
    assert args.compile is None  # None = ExtractConfig's "auto"


def test_library_and_command_line_extract_the_same_way():
    args = build_parser().parse_args(["extract", "root", "--layout", "folders", "--out", "o"])
    cfg = ExtractConfig()
    assert (args.batch_size, args.shard_size, args.workers, args.processes, args.dtype) == (
        cfg.batch_size,
        cfg.shard_size,
        cfg.workers,
        cfg.processes,
        cfg.storage_dtype,
    )
    o = ExtractOptions()  # what `causalclip experiment` extracts with when no option is given
    assert (o.batch_size, o.shard_size, o.workers, o.processes, o.compile, o.dtype) == (
        cfg.batch_size,
        cfg.shard_size,
        cfg.workers,
        cfg.processes,
        cfg.compile,
        cfg.storage_dtype,
    )


def _help(command: str) -> str:
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return re.sub(r"\s+", " ", sub.choices[command].format_help())


def test_train_help_states_the_dataclass_defaults():
    d, text = TrainConfig(), _help("train")
    assert f"maximum epochs (default: the head's recipe, else {d.epochs};" in text
    assert f"--batch-size BATCH_SIZE default: the head's recipe, else {d.batch_size}" in text
    assert f"learning rate (default: the head's recipe, else {d.lr:g})" in text
    assert f"--seed SEED default {d.seed}" in text


def test_experiment_help_states_the_extraction_defaults():
    d, text = ExtractOptions(), _help("experiment")
    assert f"default {d.batch_size} (CPU)" in text and f"(default {d.processes};" in text


@pytest.mark.parametrize(
    ("cfg", "n_images", "n_batches", "device", "want"),
    [
        (ExtractConfig(), AUTO_PROCESSES_MIN_IMAGES - 1, 8, CPU, (1, False)),  # small: one process, eager
        (ExtractConfig(), AUTO_PROCESSES_MIN_IMAGES, 8, CPU, (2, False)),
        (ExtractConfig(), AUTO_COMPILE_MIN_IMAGES, 100, CPU, (2, True)),  # large: compiled
        (ExtractConfig(), 10_000, 1, CPU, (1, True)),  # never more processes than batches
        (ExtractConfig(), 10_000, 100, GPU, (1, False)),  # a GPU compiles only when asked
        (ExtractConfig(processes=3, compile=False), 10_000, 100, CPU, (3, False)),
        (ExtractConfig(processes=1, compile=True), 1, 1, CPU, (1, True)),
        (ExtractConfig(compile=True), 10, 2, GPU, (1, True)),
    ],
)
def test_auto_settings_follow_the_job_size(monkeypatch, cfg, n_images, n_batches, device, want):
    monkeypatch.setattr(job, "default_processes", lambda device: 2 if device.type == "cpu" else 1)
    assert cfg.resolved(n_images, n_batches, device) == want


def test_a_large_job_runs_compiled_without_touching_the_callers_backbone(monkeypatch, tmp_path, tiny_clip):
    import causalclip as cc

    compiled = []

    def fake_compile(model, **kwargs):  # torch.compile's real work takes a minute here; its use is what is tested
        compiled.append(model)
        return model

    monkeypatch.setattr(torch, "compile", fake_compile)
    monkeypatch.setattr(job, "AUTO_COMPILE_MIN_IMAGES", 6)
    for i in range(6):
        Image.fromarray(np.full((40, 40, 3), 20 * i, np.uint8)).save(tmp_path / f"{i}.png")
    samples = pd.DataFrame({"path": [f"{i}.png" for i in range(6)], "label": [0, 1] * 3, "generator": "g"})
    bb = cc.load_backbone(str(tiny_clip), precision="fp32")
    model_before = bb.model
    res = cc.extract(
        samples, root=tmp_path, out=tmp_path / "f", backbone=bb, config=ExtractConfig(workers=0), progress=False
    )
    assert res.compiled and res.processes == 1 and compiled == [model_before]
    assert bb.model is model_before  # the caller's backbone is not replaced by the compiled copy
    res = cc.extract(
        samples,
        root=tmp_path,
        out=tmp_path / "g",
        backbone=bb,
        config=ExtractConfig(workers=0, compile=False),
        progress=False,
    )
    assert not res.compiled and len(compiled) == 1


def test_detect_and_serve_take_the_engines_defaults():
    import inspect

    from causalclip.detect.engine import DetectionEngine
    from causalclip.serve.limits import DEFAULT_MAX_FILES, DEFAULT_MAX_UPLOAD_BYTES, MIB

    engine = {k: v.default for k, v in inspect.signature(DetectionEngine).parameters.items()}
    detect = build_parser().parse_args(["detect", "det", "x.png"])
    serve = build_parser().parse_args(["serve", "det"])
    for args in (detect, serve):
        assert (args.crops, args.max_crops, args.batch_size, args.device) == (
            engine["crops"],
            engine["max_crops"],
            engine["batch_size"],
            engine["device"],
        )
    assert detect.workers == engine["workers"]
    assert serve.max_upload_mb * MIB == DEFAULT_MAX_UPLOAD_BYTES and serve.max_files == DEFAULT_MAX_FILES
