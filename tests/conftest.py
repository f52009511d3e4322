"""Shared fixtures: small feature sets written through the public writer, in temp dirs."""

from __future__ import annotations

import os

# Tests never touch the network: Hugging Face reads this when it is first imported.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import numpy as np
import pandas as pd
import pytest
import torch

from causalclip import write_feature_set
from causalclip.features.synthetic import SCMSpec, write_scm_benchmark

# A CLIP vision tower small enough for tests, saved and loaded the way users load real CLIP checkpoints.
TINY_VISION = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "image_size": 224,
    "patch_size": 32,
    "projection_dim": 16,
}

SMALL_SPEC = SCMSpec(dim=48, n_causal=8, n_specific=8, n_generators=3, nuisance_rank=4)


@pytest.fixture(autouse=True)
def _single_thread():
    # Deterministic and fast on the 2-core CI machine.
    torch.set_num_threads(1)


def make_samples(n: int, *, generator: str = "g", seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    rng.shuffle(labels)
    return pd.DataFrame({"path": [f"img/{i:05d}.png" for i in range(n)], "label": labels, "generator": generator})


@pytest.fixture(scope="session")
def scm_sets(tmp_path_factory):
    """train/val/test SCM feature sets (dim 48, 3 generators), written once per session."""
    root = tmp_path_factory.mktemp("scm")
    return write_scm_benchmark(root, SMALL_SPEC, n_train=600, n_val=200, n_test=150)


@pytest.fixture
def tiny_set(tmp_path):
    """A 64 x 16 float32 feature set with balanced labels."""
    rng = np.random.default_rng(0)
    df = make_samples(64)
    x = rng.normal(size=(64, 16)).astype(np.float32) + df["label"].to_numpy()[:, None] * 0.5
    return write_feature_set(tmp_path / "tiny", x, df, meta={"backbone": {"name": "test"}})


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """A folder holding a saved tiny CLIPVisionModelWithProjection (seed 0); needs transformers."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny-clip")
    model = transformers.CLIPVisionModelWithProjection(transformers.CLIPVisionConfig(**TINY_VISION))
    model.save_pretrained(folder)
    return folder
