"""The CLS-only last layer (causalclip.backbones.clipfast) gives exactly what the model's own forward gives."""

import pytest
import torch

transformers = pytest.importorskip("transformers")

from causalclip.backbones import clipfast  # noqa: E402


def _model(layers: int, attn: str = "eager"):
    torch.manual_seed(layers)
    cfg = transformers.CLIPVisionConfig(
        hidden_size=48,
        intermediate_size=96,
        num_hidden_layers=layers,
        num_attention_heads=4,
        image_size=56,
        patch_size=14,
        projection_dim=24,
    )
    return transformers.CLIPVisionModelWithProjection._from_config(cfg, attn_implementation=attn).eval()


@pytest.mark.parametrize("layers", [1, 3])
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_pooled_cls_equals_model_forward(layers, attn):
    model = _model(layers, attn)
    x = torch.randn(5, 3, 56, 56)
    with torch.no_grad():
        ref = model(pixel_values=x)
        pooled = clipfast.pooled_cls_fn(model.vision_model)(x)
    assert clipfast.supports(model.vision_model)
    torch.testing.assert_close(pooled, model.vision_model.post_layernorm(ref.last_hidden_state[:, 0]))
    torch.testing.assert_close(model.visual_projection(pooled), ref.image_embeds)


def test_cls_output_depends_on_every_token():
    # the CLS token attends to all tokens: changing one patch must change the pooled output
    model = _model(2)
    x = torch.randn(1, 3, 56, 56)
    y = x.clone()
    y[..., 42:, 42:] += 1.0  # last patch only
    fn = clipfast.pooled_cls_fn(model.vision_model)
    with torch.no_grad():
        assert not torch.allclose(fn(x), fn(y))


def test_unusual_structure_is_not_supported():
    model = _model(1)
    del model.vision_model.encoder.layers[0].self_attn.q_proj
    assert not clipfast.supports(model.vision_model)
    assert not clipfast.supports(torch.nn.Linear(2, 2))
