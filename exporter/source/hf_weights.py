"""A transformers ViT / DeiT / DINOv2 / CLIP-vision state dict renamed into timm's layout: the key
map per layout, the class token folded into the position table, what is dropped named."""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from exporter.core.errors import CheckpointError
from exporter.source.hf_layout import Layout

# Per-layer weights, after ``<layer>.N.``: transformers 4 saved names and transformers 5 module names.
LAYER_KEYS = {
    "attention.attention.query": "attn.q",
    "attention.attention.key": "attn.k",
    "attention.attention.value": "attn.v",
    "attention.q_proj": "attn.q",
    "attention.k_proj": "attn.k",
    "attention.v_proj": "attn.v",
    "attention.output.dense": "attn.proj",
    "attention.o_proj": "attn.proj",
    "self_attn.q_proj": "attn.q",  # CLIP
    "self_attn.k_proj": "attn.k",
    "self_attn.v_proj": "attn.v",
    "self_attn.out_proj": "attn.proj",
    "layer_norm1": "norm1",
    "layer_norm2": "norm2",
    "layernorm_before": "norm1",
    "norm1": "norm1",
    "layernorm_after": "norm2",
    "norm2": "norm2",
    "intermediate.dense": "mlp.fc1",
    "output.dense": "mlp.fc2",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}


LAYER_RE = re.compile(r"^(?:encoder\.layer|encoder\.layers|layers|layer)\.(\d+)\.(.+)\.(weight|bias|lambda1)$")


TOP_KEYS = {
    "embeddings.cls_token": "cls_token",
    "embeddings.position_embeddings": "pos_embed",
    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "embeddings.register_tokens": "reg_token",
    "layernorm.weight": "norm.weight",
    "layernorm.bias": "norm.bias",
    "embeddings.patch_embedding.weight": "patch_embed.proj.weight",  # CLIP: no bias (timm's pre_norm)
    "pre_layrnorm.weight": "norm_pre.weight",  # sic: CLIP's name
    "pre_layrnorm.bias": "norm_pre.bias",
    "post_layernorm.weight": "norm.weight",
    "post_layernorm.bias": "norm.bias",
    "classifier.weight": "head.weight",
    "classifier.bias": "head.bias",
    "cls_classifier.weight": "head.weight",
    "cls_classifier.bias": "head.bias",
    "distillation_classifier.weight": "head_dist.weight",
    "distillation_classifier.bias": "head_dist.bias",
}


# Weights the exported model does not use, and why (said once per build).
DROPPED = {
    "embeddings.mask_token": "the mask token (used only for masked-image pre-training)",
    "pooler.dense.weight": "the pooler (dense + tanh on the CLS token): the output is the CLS token after "
    "the final layernorm, last_hidden_state[:, 0]",
    "pooler.dense.bias": "",
    "embeddings.position_ids": "",  # a buffer of 0..N, not a weight
}


def _strip_base(sd: Mapping[str, torch.Tensor], lay: Layout) -> dict[str, torch.Tensor]:
    """Remove the base model's prefix (``vit.``) that a *For* class puts before its weights."""
    prefix = BASE_PREFIX[lay.model_type]
    return {k[len(prefix) :] if k.startswith(prefix) else k: v for k, v in sd.items()}


def map_weights(sd: Mapping[str, torch.Tensor], lay: Layout) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """timm's state dict from a transformers one, and the dropped keys with why."""
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    dropped: dict[str, str] = {}
    for key, value in _strip_base(sd, lay).items():
        if key in DROPPED:
            dropped[key] = DROPPED[key]
            continue
        if key == "embeddings.class_embedding":  # CLIP: a [width] vector
            out["cls_token"] = value.reshape(1, 1, -1)
            continue
        if key == "embeddings.position_embedding.weight":  # CLIP: an nn.Embedding [slots, width]
            out["pos_embed"] = value.unsqueeze(0)
            continue
        if key == "embeddings.distillation_token":
            out["dist_token" if lay.distilled else "reg_token"] = value
            continue
        if key in TOP_KEYS:
            out[TOP_KEYS[key]] = value
            continue
        match = LAYER_RE.match(key)
        target = LAYER_KEYS.get(match.group(2)) if match else None
        if match and match.group(3) == "lambda1" and match.group(2) in ("layer_scale1", "layer_scale2"):
            out[f"blocks.{match.group(1)}.ls{match.group(2)[-1]}.gamma"] = value
            continue
        if match is None or target is None:
            raise CheckpointError(
                f"{lay.path}: the transformers {lay.architecture} weights hold {key!r}, which this mapping "
                "to timm does not know (a modified model?)"
            )
        block, param = int(match.group(1)), match.group(3)
        if target in ("attn.q", "attn.k", "attn.v"):
            qkv.setdefault((block, param), {})[target[-1]] = value
        else:
            out[f"blocks.{block}.{target}.{param}"] = value
    for (block, param), parts in sorted(qkv.items()):
        missing = [p for p in "qkv" if p not in parts]
        if missing:
            raise CheckpointError(f"{lay.path}: layer {block} lacks its attention {'/'.join(missing)} {param}")
        out[f"blocks.{block}.attn.qkv.{param}"] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    return out, dropped


def _fold_class_position(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """DINOv2 with registers adds the class slot of the position embedding to the class token and
    none to the registers; timm's ``no_embed_class`` layout keeps the grid only, so the class slot
    moves into the class token (the same sum, done once)."""
    pos = sd["pos_embed"]
    return {**sd, "cls_token": sd["cls_token"] + pos[:, :1], "pos_embed": pos[:, 1:].contiguous()}


# The base model's attribute inside a *For* class: its weights carry this prefix.
BASE_PREFIX = {
    "vit": "vit.",
    "deit": "deit.",
    "dinov2": "dinov2.",
    "dinov2_with_registers": "dinov2_with_registers.",
    "clip_vision_model": "vision_model.",  # transformers 4 saved CLIPVisionModel's weights under it
}
