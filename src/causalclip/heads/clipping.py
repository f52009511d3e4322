"""CLIPping (Khan & Dang-Nguyen, ICMR 2024): CLIP prompt tuning (CoOp) for real/fake, and its linear-probe variant.

Prompt tuning keeps both CLIP towers frozen and learns only the context vectors of the text prompt: each class
("real", "fake") is the prompt ``[SOS] <name> [V]_1 ... [V]_M . [EOS]`` (the authors' "front" class-token
position) run through CLIP's frozen text tower; an image scores
``logit_c = exp(logit_scale) * cos(image_embed, text_embed_c)`` and the head's logit of fake is
``logit_fake - logit_real`` (so sigmoid of it is the two-class softmax's probability of fake, and BCE on it is the
two-class cross-entropy the authors train with). The image side is our cached ``image_embeds``: the image tower
never runs here. Once trained, the two class embeddings are fixed, so they are kept as buffers: a saved head scores
without loading the text tower again. Recipe, sources and deviations: docs/guides/clipping.md.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from types import MappingProxyType
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..backbones.base import BackboneError
from ..backbones.clip import ClipTextTower, load_clip_text
from ..features.featureset import FeatureSet
from .base import Head, Phase
from .linear import LinearProbeConfig, LinearProbeHead
from .losses import bce

__all__ = ["ClippingConfig", "ClippingHead", "ClippingLinearProbeConfig", "ClippingLinearProbeHead"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class ClippingConfig:
    """CoOp as the authors ran it (their eval_utils.py and configs/trainers/CoOp/vit_l14_ep2.yaml).

    ``clip_model``/``revision``: the CLIP whose text tower is used; None = the one recorded in the training feature
    set's meta.json (the model that made the image embeddings). A trained head's config.json holds the resolved
    values, and ``text_width`` (the text tower's token width, the context vectors' size), so that it loads without
    the text tower.
    """

    clip_model: str | None = None
    revision: str | None = None
    class_names: tuple[str, str] = ("real", "fake")  # label 0, label 1 (authors' data/progan_train/classnames.txt)
    n_ctx: int = 16  # context tokens M (authors' best model: 100000_16context)
    class_token_position: Literal["front", "middle", "end"] = "front"  # authors: front; CoOp's default: end
    class_specific: bool = False  # CoOp's CSC: one context per class instead of one shared (authors: shared)
    ctx_init_std: float = 0.02  # context vectors start as N(0, 0.02^2) (CoOp without CTX_INIT, as the authors)
    text_width: int = 0  # set from the text tower when trained; 0 = not known yet

    def validate(self) -> None:
        if self.n_ctx < 1:
            raise ValueError(f"n_ctx: must be at least 1, got {self.n_ctx}")
        if self.class_token_position == "middle" and self.n_ctx < 2:
            raise ValueError("n_ctx: the 'middle' class-token position needs at least 2 context tokens")
        if any(not n.strip() for n in self.class_names) or self.class_names[0] == self.class_names[1]:
            raise ValueError(f"class_names: two different, non-empty names, got {list(self.class_names)}")
        if self.text_width < 0 or self.ctx_init_std < 0:
            raise ValueError("text_width and ctx_init_std must be >= 0")


class ClippingHead(Head):
    """Prompt tuning on cached CLIP ``image_embeds``: only ``ctx`` (M, width) or (2, M, width) trains.

    Built with ``feature_set`` (training), the head loads the frozen text tower of the feature set's CLIP and
    computes the class embeddings from the context vectors; without it (loading a saved head), it scores with the
    saved ``class_embeds`` and ``logit_scale`` buffers and cannot train.
    """

    name = "clipping"
    config_cls = ClippingConfig
    uses_feature_set = True
    # CoOp on Dassl as the authors ran it: configs/trainers/CoOp/vit_l14_ep2.yaml (sgd, LR 0.002, MAX_EPOCH 2,
    # cosine, WARMUP_EPOCH 1, WARMUP_TYPE constant, WARMUP_CONS_LR 1e-5, TRAIN_X BATCH_SIZE 16) over
    # dassl/config/defaults.py (MOMENTUM 0.9, WEIGHT_DECAY 5e-4, SGD_NESTEROV False). min_epochs 2: the saved
    # epoch is the last one, as Dassl's TEST.FINAL_MODEL "last_step".
    train_recipe = MappingProxyType(
        {
            "optimizer": "sgd",
            "lr": 0.002,
            "momentum": 0.9,
            "weight_decay": 5e-4,
            "nesterov": False,
            "lr_schedule": "cosine",
            "warmup_epochs": 1,
            "warmup_lr": 1e-5,
            "batch_size": 16,
            "epochs": 2,
            "min_epochs": 2,
        }
    )

    def __init__(self, *, dim: int, config: ClippingConfig, feature_set: FeatureSet | None = None) -> None:
        text = None
        if feature_set is not None:
            config, text = _text_tower_for(feature_set, config, dim)
        elif config.text_width <= 0:
            raise ValueError(
                "the clipping head needs its training feature set (to load the CLIP text tower) or, to load a "
                "trained head, a config with text_width (a saved clipping head's config.json has it)"
            )
        super().__init__(dim=dim, config=config)
        c = config
        shape = (2, c.n_ctx, c.text_width) if c.class_specific else (c.n_ctx, c.text_width)
        self.ctx = nn.Parameter(torch.empty(shape))
        nn.init.normal_(self.ctx, std=c.ctx_init_std)
        # The fixed results of training: with them the head scores without the text tower.
        self.register_buffer("class_embeds", torch.zeros(2, dim))  # (2, dim): text embeddings of real, fake
        self.register_buffer("logit_scale", torch.tensor(0.0))  # CLIP's log temperature
        self._text: ClipTextTower | None = text  # a plain attribute: the frozen tower is not part of the state
        if text is not None:
            self._ids, self._name_lens = _prompt_ids(text, c)
            self.logit_scale.fill_(text.logit_scale)
            self.refresh_class_embeds()

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"prompt": [self.ctx]}

    def train(self, mode: bool = True) -> ClippingHead:
        """Switching to eval mode fixes the class embeddings of the current context vectors into the buffer."""
        super().train(mode)
        if not mode and self._text is not None:
            self.refresh_class_embeds()
        return self

    @torch.no_grad()
    def refresh_class_embeds(self) -> None:
        self.class_embeds.copy_(self.class_embeddings())

    def assemble(self, token_embeds: torch.Tensor) -> torch.Tensor:
        """Token embeddings (2, L, width) of ``[SOS] X..X name . [EOS] pad`` -> the prompts with the context
        vectors in place of the X's, the class name moved to the configured position (CoOp's PromptLearner)."""
        n = self.config.n_ctx
        ctx = self.ctx if self.ctx.dim() == 3 else self.ctx.unsqueeze(0).expand(2, -1, -1)
        rows = []
        for i, k in enumerate(self._name_lens):
            sos, name, rest = token_embeds[i, :1], token_embeds[i, 1 + n : 1 + n + k], token_embeds[i, 1 + n + k :]
            c = ctx[i].to(token_embeds.dtype)
            if self.config.class_token_position == "end":
                parts = [sos, c, name, rest]
            elif self.config.class_token_position == "front":
                parts = [sos, name, c, rest]
            else:
                parts = [sos, c[: n // 2], name, c[n // 2 :], rest]
            rows.append(torch.cat(parts))
        return torch.stack(rows)

    def class_embeddings(self) -> torch.Tensor:
        """(2, dim): the frozen text tower's projected embeddings of the two prompts (differentiable in ``ctx``)."""
        if self._text is None:
            raise RuntimeError(
                "this clipping head was loaded from a checkpoint: it scores with its saved class embeddings and has "
                "no text tower to train with (train a new one with `causalclip train --head clipping`)"
            )
        tower = self._text.model.to(self.ctx.device)
        # The tower's own forward (causal mask, position embeddings, EOS pooling, projection) with the context
        # vectors spliced in after the token lookup: a forward hook that replaces the lookup's output.
        handle = tower.get_input_embeddings().register_forward_hook(lambda _m, _i, out: self.assemble(out))
        try:
            out = tower(input_ids=self._ids.to(self.ctx.device))
        finally:
            handle.remove()
        return out.text_embeds

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        # in training the class embeddings follow the context vectors; in eval mode they are the fixed buffer
        text = self.class_embeddings() if self.training and self._text is not None else self.class_embeds
        cos = F.normalize(e, dim=-1) @ F.normalize(text, dim=-1).T  # (B, 2)
        logits = self.logit_scale.exp() * cos
        return logits[:, 1] - logits[:, 0]

    def training_phases(self, e: torch.Tensor, y: torch.Tensor) -> Iterator[Phase]:
        if self._text is None:
            self.class_embeddings()  # raises: a loaded head cannot train
        loss = bce(self(e), y)
        yield "prompt", loss, {"cls": loss}

    @torch.no_grad()
    def diagnostics(self, e: torch.Tensor, y: torch.Tensor, *, probe: bool) -> dict[str, Any]:
        t = F.normalize(self.class_embeds, dim=-1)
        return {"clipping_text_cos": float(t[0] @ t[1])}  # how far apart the two class prompts are (1 = same)


def _text_tower_for(fs: FeatureSet, config: ClippingConfig, dim: int) -> tuple[ClippingConfig, ClipTextTower]:
    """The text tower of the CLIP that made ``fs`` (or of ``config.clip_model``), and the config resolved to it."""
    meta_path = fs.root / "meta.json"
    record = fs.meta.get("backbone")
    record = record if isinstance(record, dict) else {}
    if record.get("name") != "clip":
        raise ValueError(
            f"{meta_path}: the clipping head compares image embeddings with CLIP text embeddings, so it needs "
            f"features made by a CLIP backbone; this feature set's backbone is {record.get('name')!r}"
        )
    if record.get("feature") != "image_embeds":
        raise ValueError(
            f"{meta_path}: features are CLIP's {record.get('feature')!r} output; the clipping head needs "
            "'image_embeds' (the projected embedding in CLIP's joint image-text space, extraction's default)"
        )
    if config.clip_model:
        model, revision = config.clip_model, config.revision
    else:
        model, revision = record.get("model"), record.get("revision")
    if not model:
        raise ValueError(f"{meta_path}: the backbone record names no CLIP model; set clipping.clip_model")
    try:
        text = load_clip_text(str(model), revision=revision)
    except BackboneError as exc:
        raise BackboneError(
            f"{fs.root}: the clipping head needs the text tower of the CLIP that made these features: {exc}"
        ) from exc
    proj = int(text.model.config.projection_dim)
    if proj != dim:
        raise ValueError(
            f"{fs.root}: features have dim {dim} but the text projection of {model} gives {proj}: not the same CLIP"
        )
    resolved = dataclasses.replace(
        config, clip_model=text.model_id, revision=text.revision, text_width=int(text.model.config.hidden_size)
    )
    return resolved, text


def _prompt_ids(text: ClipTextTower, c: ClippingConfig) -> tuple[torch.Tensor, list[int]]:
    """Token ids (2, L) of CoOp's prompt ``X X ... X <name>.`` per class, and each name's length in tokens.

    Padded to the longer prompt, not to CLIP's 77: under the causal mask the EOS output never sees later tokens.
    """
    tok = text.tokenizer
    x_ids = tok("X", add_special_tokens=False)["input_ids"]
    if len(x_ids) != 1:
        raise BackboneError(f"{text.model_id}: its tokenizer splits the placeholder 'X' into {len(x_ids)} tokens")
    rows, name_lens = [], []
    for name in c.class_names:
        name_lens.append(len(tok(name, add_special_tokens=False)["input_ids"]))
        body = tok(f"{name}.", add_special_tokens=False)["input_ids"]
        rows.append([tok.bos_token_id, *x_ids * c.n_ctx, *body, tok.eos_token_id])
    length = max(len(r) for r in rows)
    limit = int(text.model.config.max_position_embeddings)
    if length > limit:
        raise ValueError(f"clipping prompts of {length} tokens exceed the text tower's {limit}: lower n_ctx")
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    return torch.tensor([r + [pad] * (length - len(r)) for r in rows]), name_lens


@dataclasses.dataclass(frozen=True, kw_only=True)
class ClippingLinearProbeConfig(LinearProbeConfig):
    """The authors' linear probe (train_linear.py, models.py): Linear(768, 2) with weights N(0, 0.01^2), zero bias,
    cross-entropy. A two-way softmax is a sigmoid of the logit difference, so this is UnivFD's Linear(d, 1) under
    BCE with the difference's initial spread, N(0, 2 * 0.01^2)."""

    init_std: float = 0.01 * math.sqrt(2)


class ClippingLinearProbeHead(LinearProbeHead):
    """CLIPping's linear-probe variant: UnivFD's network and loss with the authors' initialisation and SGD recipe
    (a preset)."""

    name = "clipping-lp"
    config_cls = ClippingLinearProbeConfig
    # train_linear.py: optim.SGD(model.fc.parameters(), lr=3e-3) (no momentum, no weight decay), batch_size 16,
    # epochs 2, warmup_epochs 0; its StepLR(step_size=3) is never stepped, so the lr is constant. The saved model is
    # the last epoch's (min_epochs 2). An SGD step of lr on their two rows moves the rows' difference (our one row)
    # by 2 lr times its gradient, so their 3e-3 is 6e-3 here: the same trajectory (tests/test_clipping.py).
    train_recipe = MappingProxyType(
        {
            "optimizer": "sgd",
            "lr": 2 * 3e-3,
            "momentum": 0.0,
            "weight_decay": 0.0,
            "lr_schedule": "constant",
            "batch_size": 16,
            "epochs": 2,
            "min_epochs": 2,
        }
    )
