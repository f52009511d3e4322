"""CLIPping: prompt tuning on cached CLIP image embeddings with a tiny CLIP (both towers) that the tests build.

The class embeddings are checked against the text transformer run by hand (plain torch on the same weights), prompt
tuning against bit-for-bit frozen towers, and a saved run against scoring with the text tower gone.
"""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from causalclip import HEADS, build_head, load_head, write_feature_set
from causalclip.backbones.base import BackboneError
from causalclip.heads.predict import predict

transformers = pytest.importorskip("transformers")

DIM = 16  # the tiny CLIP's projection_dim: the image_embeds dimension
TEXT_WIDTH = 24  # differs from the vision width (32), so a mix-up of the two shows
CHARS = "abcdefghijklmnopqrstuvwxyz."


def _vocab() -> dict[str, int]:
    """A character-level CLIP vocabulary (no merges): every word is its letters, the last one ending in </w>."""
    vocab = {c: i for i, c in enumerate(CHARS)}
    vocab.update({c + "</w>": len(CHARS) + i for i, c in enumerate(CHARS)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return vocab


def save_tiny_clip(folder, seed: int = 0):
    """A full CLIPModel (text + vision towers, projections, logit scale) and its tokenizer, saved like a hub model."""
    vocab = _vocab()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tok = transformers.CLIPTokenizer.from_pretrained(folder)
    text = dict(
        vocab_size=len(vocab), hidden_size=TEXT_WIDTH, intermediate_size=48, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=32, projection_dim=DIM,
        bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"], pad_token_id=vocab["<|endoftext|>"],
    )  # fmt: skip
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=64,
                  patch_size=32, projection_dim=DIM)  # fmt: skip
    torch.manual_seed(seed)
    config = transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=DIM)
    model = transformers.CLIPModel(config)
    with torch.no_grad():
        model.logit_scale.fill_(3.0)  # not the init value, so a default in place of the checkpoint's shows
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return save_tiny_clip(tmp_path_factory.mktemp("tiny-clip-full") / "clip")


def backbone_record(clip_dir) -> dict:
    """meta.json's backbone record exactly as extraction writes it (ClipBackbone.describe)."""
    from causalclip.backbones.clip import ClipBackbone, ClipSpec

    return ClipBackbone.load(ClipSpec(model=str(clip_dir))).describe()


def write_set(root, clip_dir, *, n=96, seed=0, record=None):
    """Image embeddings whose real and fake ones lean opposite ways along one fixed direction (separable; the
    tiny random text tower learns them slowly, hence the wide margin)."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    rng.shuffle(labels)
    direction = np.random.default_rng(123).normal(size=DIM)
    x = rng.normal(size=(n, DIM)) + 3.0 * (2 * labels[:, None] - 1) * direction / np.linalg.norm(direction)
    df = pd.DataFrame({"path": [f"img/{i:04d}.png" for i in range(n)], "label": labels, "generator": "g"})
    meta = {"backbone": record if record is not None else backbone_record(clip_dir)}
    return write_feature_set(root, x.astype(np.float32), df, meta=meta)


@pytest.fixture(scope="module")
def sets(tmp_path_factory, clip_dir):
    root = tmp_path_factory.mktemp("clipping-sets")
    record = backbone_record(clip_dir)
    return {
        split: write_set(root / split, clip_dir, n=n, seed=s, record=record)
        for split, n, s in (("train", 128, 0), ("val", 64, 1), ("test", 64, 2))
    }


def open_set(path):
    from causalclip.features.featureset import open_feature_set

    return open_feature_set(path)


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------------------------------------------------------
# the class embeddings against the text transformer run by hand


def text_model_by_hand(tower, embeds: torch.Tensor, eos_pos: torch.Tensor) -> torch.Tensor:
    """CLIP's text transformer in plain torch: token embeddings (B, L, w) -> projected EOS output (B, proj)."""
    tm = tower.text_model
    x = embeds + tm.embeddings.position_embedding.weight[: embeds.shape[1]]
    n, length, width = x.shape
    mask = torch.full((length, length), float("-inf")).triu(1)  # causal: position t sees 0..t
    for layer in tm.encoder.layers:
        a = layer.self_attn
        h = F.layer_norm(x, (width,), layer.layer_norm1.weight, layer.layer_norm1.bias, layer.layer_norm1.eps)
        heads = a.num_heads
        q, k, v = (
            (h @ p.weight.T + p.bias).view(n, length, heads, -1).transpose(1, 2) for p in (a.q_proj, a.k_proj, a.v_proj)
        )
        att = torch.softmax(q @ k.transpose(-1, -2) * (width // heads) ** -0.5 + mask, dim=-1)
        o = (att @ v).transpose(1, 2).reshape(n, length, width)
        x = x + o @ a.out_proj.weight.T + a.out_proj.bias
        h = F.layer_norm(x, (width,), layer.layer_norm2.weight, layer.layer_norm2.bias, layer.layer_norm2.eps)
        h = h @ layer.mlp.fc1.weight.T + layer.mlp.fc1.bias
        h = h * torch.sigmoid(1.702 * h)  # quick_gelu, CLIP's activation
        x = x + h @ layer.mlp.fc2.weight.T + layer.mlp.fc2.bias
    ln = tm.final_layer_norm
    x = F.layer_norm(x, (width,), ln.weight, ln.bias, ln.eps)
    return x[torch.arange(n), eos_pos] @ tower.text_projection.weight.T


@pytest.mark.parametrize(
    "position, class_specific", [("front", False), ("end", False), ("middle", False), ("front", True)]
)
def test_class_embeddings_equal_the_text_model_run_by_hand(sets, position, class_specific):
    torch.manual_seed(0)
    cfg = {"n_ctx": 4, "class_token_position": position, "class_specific": class_specific, "ctx_init_std": 0.5}
    head = build_head("clipping", dim=DIM, config=cfg, feature_set=open_set(sets["train"]))
    tower = transformers.CLIPTextModelWithProjection.from_pretrained(head.config.clip_model)
    tok = transformers.CLIPTokenizer.from_pretrained(head.config.clip_model)
    # CoOp's tokenisation: the whole prompt "X X X X <name>." padded to the 32 positions (CLIP pads to 77)
    ids = torch.tensor(
        [tok(f"X X X X {name}.", padding="max_length", max_length=32)["input_ids"] for name in ("real", "fake")]
    )
    eos_pos = (ids == tok.eos_token_id).int().argmax(1)
    emb = tower.text_model.embeddings.token_embedding.weight[ids].detach()  # (2, 32, w)
    ctx = head.ctx.detach() if class_specific else head.ctx.detach().expand(2, -1, -1)
    rows = []
    for i, k in enumerate((4, 4)):  # "real" and "fake" are four characters: four tokens here
        sos, name, rest = emb[i, :1], emb[i, 5 : 5 + k], emb[i, 5 + k :]
        parts = {
            "front": [sos, name, ctx[i], rest],
            "end": [sos, ctx[i], name, rest],
            "middle": [sos, ctx[i, :2], name, ctx[i, 2:], rest],
        }[position]
        rows.append(torch.cat(parts))
    want = text_model_by_hand(tower, torch.stack(rows), eos_pos)
    got = head.class_embeddings().detach()
    assert got.shape == (2, DIM)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    head.eval()  # eval mode fixes them into the buffer the saved head scores with
    torch.testing.assert_close(head.class_embeds, want, atol=1e-5, rtol=1e-4)
    # and the score is the scaled cosine difference, with the checkpoint's own logit scale (3.0, not the default)
    e = torch.randn(5, DIM)
    cos = F.normalize(e, dim=-1) @ F.normalize(want, dim=-1).T
    torch.testing.assert_close(head(e), np.exp(3.0) * (cos[:, 1] - cos[:, 0]), atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------------------------------------------------------
# prompt tuning changes only the context vectors


def test_prompt_tuning_changes_only_the_context_vectors(sets, clip_dir):
    weights = clip_dir / "model.safetensors"
    digest = sha256(weights)
    fs = open_set(sets["train"])
    feats_before = fs.take(np.arange(len(fs))).copy()
    torch.manual_seed(0)
    head = build_head("clipping", dim=DIM, config={"n_ctx": 4}, feature_set=fs)
    tower = head._text.model
    tower_before = {k: v.clone() for k, v in tower.state_dict().items()}
    ctx_before = head.ctx.detach().clone()
    # nothing but the context vectors can train, and only they are saved (beside the fixed class embeddings)
    assert [n for n, p in head.named_parameters() if p.requires_grad] == ["ctx"]
    assert set(head.state_dict()) == {"ctx", "class_embeds", "logit_scale"}
    assert all(not p.requires_grad for p in tower.parameters())

    groups = head.param_groups()
    opts = {g: torch.optim.Adam(ps, lr=0.05) for g, ps in groups.items()}
    head.train()
    x = torch.from_numpy(fs.take(np.arange(len(fs))).astype(np.float32))
    y = torch.from_numpy(fs.labels.copy())
    losses = []
    for step in range(4):
        b = slice(32 * step, 32 * step + 32)
        for group, loss, _ in head.training_phases(x[b], y[b]):
            opts[group].zero_grad(set_to_none=True)
            loss.backward()  # every input, not only the group's: a tower weight that required grad would get one
            assert all(p.grad is None for p in tower.parameters())
            opts[group].step()
            losses.append(loss.item())
    assert not torch.equal(head.ctx.detach(), ctx_before)
    for k, v in tower.state_dict().items():
        assert torch.equal(v, tower_before[k]), k
    fresh = transformers.CLIPTextModelWithProjection.from_pretrained(clip_dir).state_dict()
    for k, v in tower.state_dict().items():
        assert torch.equal(v, fresh[k]), k
    assert sha256(weights) == digest  # the vision tower (and the text tower) on disk: untouched
    assert np.array_equal(fs.take(np.arange(len(fs))), feats_before)  # the image side: the cached embeddings
    # the class embeddings followed the context vectors
    before = head.class_embeds.clone()
    head.eval()
    assert not torch.equal(head.class_embeds, before)


# ---------------------------------------------------------------------------------------------------------------
# the contract every head meets (tests/test_heads.py), with the text tower this head needs


def test_clipping_meets_the_head_contract(sets):
    torch.manual_seed(0)
    head = build_head("clipping", dim=DIM, config={"n_ctx": 4}, feature_set=open_set(sets["train"]))
    e = torch.randn(32, DIM) + (torch.arange(32) % 2)[:, None].float()
    y = torch.arange(32) % 2
    head.eval()
    out = head(e)
    assert out.shape == (32,) and torch.isfinite(out).all() and torch.equal(out, head(e))
    head.train()
    torch.testing.assert_close(head(e), out)  # train and eval forward agree while the context is unchanged
    (group, loss, logs), *rest = list(head.training_phases(e, y))
    assert not rest and group == "prompt" and "cls" in logs
    (grad,) = torch.autograd.grad(loss, head.param_groups()["prompt"])
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


# ---------------------------------------------------------------------------------------------------------------
# end to end through the command line; a saved run scores without the text tower


def test_train_and_evaluate_through_the_cli(sets, clip_dir, tmp_path, capsys):
    from causalclip.cli.main import main

    run, ev = tmp_path / "run", tmp_path / "eval"
    # The authors' SGD recipe stalls on this tiny random text tower (its loss stops at ~0.85 whatever the lr), so
    # this run overrides the recipe's optimiser and schedule from the command line, as a user can.
    argv = ["train", "--head", "clipping", "--train", str(sets["train"]), "--val", str(sets["val"]), "--out",
            str(run), "--epochs", "8", "--batch-size", "32", "--lr", "0.05", "--set", "n_ctx=4",
            "--set", 'optimizer="adam"', "--set", 'lr_schedule="plateau"', "--set", "warmup_epochs=0", "-q"]  # fmt: skip
    assert main(argv) == 0
    assert "trained clipping" in capsys.readouterr().out
    recorded = json.loads((run / "run.json").read_text())["train"]
    assert (recorded["optimizer"], recorded["lr_schedule"], recorded["batch_size"]) == ("adam", "plateau", 32)
    assert recorded["weight_decay"] == 5e-4  # what the command line did not set stays the recipe's
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["head"] == "clipping"
    # the resolved text tower: the feature set's CLIP, recorded so the folder says what it was trained against
    assert cfg["head_config"]["clip_model"] == str(clip_dir)
    assert cfg["head_config"]["text_width"] == TEXT_WIDTH and cfg["head_config"]["n_ctx"] == 4
    assert main(["evaluate", str(run), "--test", str(sets["test"]), "--out", str(ev)]) == 0
    metrics = pd.read_csv(ev / "metrics.csv")
    assert metrics.loc[metrics["generator"] == "mean", "ap"].item() > 0.75  # learnt: 0.4 untrained


def test_experiment_trains_clipping_with_the_authors_recipe(sets, tmp_path):
    """`experiment`'s training step (train_or_reuse) resolves the clipping head's recipe: SGD 0.002 with momentum
    0.9 and weight decay 5e-4, batch 16, 2 epochs, the first at the warm-up lr 1e-5 and the second at 0.002 (the
    cosine's epoch 0); the run is reused when asked again with the same configuration."""
    from causalclip.paper.experiment import RunSpec, train_or_reuse

    spec = RunSpec("clipping-seed0", "clipping", 0, "CLIPping")
    kw = {"train_set": sets["train"], "val_set": sets["val"], "run_dir": tmp_path / "run", "progress": False}
    assert train_or_reuse(spec, overrides=["n_ctx=4"], **kw) == "trained"
    recorded = json.loads((tmp_path / "run" / "run.json").read_text())["train"]
    got = {k: recorded[k] for k in ("optimizer", "lr", "momentum", "weight_decay", "lr_schedule", "batch_size")}
    assert got == {"optimizer": "sgd", "lr": 0.002, "momentum": 0.9, "weight_decay": 5e-4, "lr_schedule": "cosine",
                   "batch_size": 16}  # fmt: skip
    history = pd.read_csv(tmp_path / "run" / "metrics.csv")
    assert list(history["lr"]) == [1e-5, 0.002]
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["best_epoch"] == 2  # the last, as Dassl's
    assert train_or_reuse(spec, overrides=["n_ctx=4"], **kw) == "reused"


def test_saved_run_scores_identically_without_the_text_tower(sets, tmp_path):
    from causalclip.training.config import resolve_run_config
    from causalclip.training.loop import train

    clip_copy = save_tiny_clip(tmp_path / "clip-copy", seed=1)
    train_set = write_set(tmp_path / "train", clip_copy, n=96, seed=0)
    val_set = write_set(tmp_path / "val", clip_copy, n=48, seed=1)
    rc = resolve_run_config("clipping", overrides={"epochs": 2, "batch_size": 32, "lr": 0.02, "n_ctx": 4})
    result = train(train_set=train_set, val_set=val_set, out=tmp_path / "run", run_config=rc, progress=False)
    test = open_set(sets["test"])
    want = predict(result.head, test)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["head_config"]["clip_model"] == str(clip_copy)
    shutil.rmtree(clip_copy)  # the text tower is gone: loading it now would fail
    loaded = load_head(tmp_path / "run")
    assert loaded.head._text is None
    assert np.array_equal(predict(loaded.head, test), want)
    with pytest.raises(RuntimeError, match="no text tower"):
        next(loaded.head.training_phases(torch.zeros(2, DIM), torch.tensor([0, 1])))


# ---------------------------------------------------------------------------------------------------------------
# refusals that name the feature set


def test_refuses_features_that_are_not_clip_image_embeds(tmp_path, clip_dir):
    record = backbone_record(clip_dir)
    for bad, match in (
        ({"name": "test"}, "needs features made by a CLIP backbone"),
        ({**record, "feature": "pooled"}, "'pooled' output"),
    ):
        fs = open_set(write_set(tmp_path / bad.get("feature", "x"), clip_dir, n=8, record=bad))
        with pytest.raises(ValueError, match=match) as info:
            build_head("clipping", dim=DIM, feature_set=fs)
        assert str(fs.root / "meta.json") in str(info.value)


def test_refuses_a_clip_without_a_text_tower(tmp_path, tiny_clip, clip_dir):
    # conftest's tiny_clip is a CLIPVisionModelWithProjection checkpoint: enough to extract, no text tower
    from causalclip.backbones.clip import ClipBackbone, ClipSpec

    record = ClipBackbone.load(ClipSpec(model=str(tiny_clip))).describe()
    fs = open_set(write_set(tmp_path / "vision-only", clip_dir, n=8, record=record))
    with pytest.raises(BackboneError, match="clip_vision_model") as info:
        build_head("clipping", dim=DIM, feature_set=fs)
    assert str(fs.root) in str(info.value)
    gone = {**backbone_record(clip_dir), "model": str(tmp_path / "nowhere")}
    fs = open_set(write_set(tmp_path / "gone", clip_dir, n=8, record=gone))
    with pytest.raises(BackboneError, match="no such folder"):
        build_head("clipping", dim=DIM, feature_set=fs)


def test_without_a_feature_set_only_a_saved_head_can_be_built():
    with pytest.raises(ValueError, match="text_width"):
        build_head("clipping", dim=DIM)


# ---------------------------------------------------------------------------------------------------------------
# the linear-probe variant


def test_linear_probe_variant_is_the_authors_two_way_linear_layer():
    """The authors' Linear(d, 2) under cross-entropy equals our Linear(d, 1) on the logit difference under BCE:
    same loss, and an SGD step of lr on the pair moves the difference as a step of 2 lr on ours."""
    torch.manual_seed(0)
    d = 12
    pair = torch.nn.Linear(d, 2)
    head = build_head("clipping-lp", dim=d)
    with torch.no_grad():
        head.fc.weight.copy_(pair.weight[1:] - pair.weight[:1])
        head.fc.bias.copy_(pair.bias[1:] - pair.bias[:1])
    e, y = torch.randn(16, d), torch.arange(16) % 2
    ce = F.cross_entropy(pair(e), y)
    (_, loss, _), *_ = list(head.training_phases(e, y))
    torch.testing.assert_close(loss, ce)
    lr = 0.3
    torch.optim.SGD(pair.parameters(), lr=lr).zero_grad()
    ce.backward()
    loss.backward()
    with torch.no_grad():
        for p in pair.parameters():
            p -= lr * p.grad
        for p in head.fc.parameters():
            p -= 2 * lr * p.grad
    torch.testing.assert_close(head.fc.weight, pair.weight[1:] - pair.weight[:1])
    torch.testing.assert_close(head(e), pair(e)[:, 1] - pair(e)[:, 0])
    # the initial spread of the difference of two N(0, 0.01^2) rows
    big = build_head("clipping-lp", dim=200_000)
    assert big.fc.weight.std().item() == pytest.approx(0.01 * 2**0.5, rel=0.02)


def test_linear_probe_recipe_follows_the_authors_sgd_on_their_two_way_layer(tmp_path):
    """clipping-lp trained by the loop with its recipe ends where the authors' Linear(d, 2) ends under
    torch.optim.SGD(lr=3e-3) and cross-entropy (train_linear.py), on the same batches: 16 samples, batch 16, two
    epochs, so two full-batch steps from the same initial difference."""
    from causalclip.features.featureset import open_feature_set
    from causalclip.training.config import resolve_run_config
    from causalclip.training.loop import train

    n, d = 16, 5
    df = pd.DataFrame({"path": [f"i{i}.png" for i in range(n)], "label": np.arange(n) % 2, "generator": "g"})
    x = 10 * np.random.default_rng(0).normal(size=(n, d)).astype(np.float32)  # large: the steps move visibly
    fs = write_feature_set(tmp_path / "set", x, df, meta={"backbone": {"name": "test"}})
    rc = resolve_run_config("clipping-lp", overrides={"seed": 5})
    res = train(train_set=fs, val_set=fs, out=tmp_path / "run", run_config=rc, progress=False)
    assert res.best_epoch == 2 and len(res.history) == 2

    torch.manual_seed(5)  # the loop's seed, then the head: its initial row is the pair's initial difference
    init = build_head("clipping-lp", dim=d)
    pair = torch.nn.Linear(d, 2)
    with torch.no_grad():
        pair.weight.copy_(torch.cat([torch.zeros(1, d), init.fc.weight]))
        pair.bias.copy_(torch.cat([torch.zeros(1), init.fc.bias]))
    opt = torch.optim.SGD(pair.parameters(), lr=3e-3)  # the authors' optimiser, as train_linear.py builds it
    stored = open_feature_set(fs)
    e = torch.from_numpy(stored.take(np.arange(n)).astype(np.float32))
    y = torch.from_numpy(stored.labels.astype(np.int64))
    for _ in range(2):
        opt.zero_grad()
        F.cross_entropy(pair(e), y).backward()
        opt.step()
    with torch.no_grad():
        torch.testing.assert_close(res.head.fc.weight, pair.weight[1:] - pair.weight[:1], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(res.head.fc.bias, pair.bias[1:] - pair.bias[:1], rtol=1e-5, atol=1e-6)
    assert (res.head.fc.weight - init.fc.weight).abs().max() > 1e-3  # it moved


def test_both_variants_are_listed_by_train_help(capsys):
    from causalclip.cli.main import main

    assert {"clipping", "clipping-lp"} <= set(HEADS)
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    assert "clipping" in out and "clipping-lp" in out
