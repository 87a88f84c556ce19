"""Hugging Face transformers checkpoints (ViT, DeiT, DINOv2) mapped into timm's layout.

A transformers folder holds ``config.json`` (``model_type``, ``architectures``, ``hidden_size``,
...), the weights (``model.safetensors`` or ``pytorch_model.bin``) and maybe a
``preprocessor_config.json``. This module turns the config into a timm-style config
(``architecture``, ``model_args``, ``img_size``, ``pretrained_cfg``) and the weights into timm's
names, so the rest of the tool sees a timm ViT. Nothing here imports transformers: only the
source-parity check builds transformers' own model.

Mapped, per layer: q/k/v concatenated into ``attn.qkv``; ``attention.output.dense`` (or
``o_proj``) to ``attn.proj``; ``layernorm_before/after`` (``norm1/2``) to ``norm1/2``;
``intermediate.dense``/``output.dense`` (``mlp.fc1/fc2``) to ``mlp.fc1/fc2``; DINOv2's
``layer_scale{1,2}.lambda1`` to ``ls{1,2}.gamma``. Both transformers 4's saved names
(``encoder.layer.N.attention.attention.query``) and transformers 5's module names
(``layers.N.attention.q_proj``) are read.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch
from typing_extensions import NotRequired, TypedDict

from exporter.core.assumptions import Assumption
from exporter.core.errors import CheckpointError
from exporter.core.numbers import finite_number
from exporter.source.hf_layout import Layout, layout
from exporter.source.hf_processor import ProcessorPreprocessing, _assumed_preprocessing, preprocessing
from exporter.source.hf_weights import _fold_class_position, map_weights

log = logging.getLogger(__name__)

# timm's registered distilled DeiT: VisionTransformerDistilled, every size argument overridden.
DISTILLED_TIMM = "deit_tiny_distilled_patch16_224"
# transformers' activations (ACT2FN) -> timm act_layer names. "gelu" is exact erf GELU in both.
ACTIVATIONS = {
    "gelu": "gelu",
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "quick_gelu": "quick_gelu",
    "relu": "relu",
    "silu": "silu",
    "swish": "silu",
}


class VitArgs(TypedDict):
    """timm ``VisionTransformer`` keyword arguments, as ``model_args`` maps them from a transformers config."""

    img_size: list[int]
    patch_size: list[int]
    in_chans: int
    num_classes: int
    global_pool: str
    embed_dim: int
    depth: int
    num_heads: int
    mlp_ratio: float
    qkv_bias: bool
    class_token: bool
    act_layer: str
    norm_eps: float  # the LayerNorm's eps (``load.create_vit``)
    init_values: NotRequired[float]  # LayerScale (DINOv2)
    pre_norm: NotRequired[bool]  # CLIP's pre_layrnorm
    reg_tokens: NotRequired[int]  # DINOv2's registers, or DeiT's distillation token
    no_embed_class: NotRequired[bool]


class TimmConfig(TypedDict):
    """A transformers config as the timm-style config the rest of ``exporter.source`` reads."""

    architecture: str | None  # timm's distilled DeiT, else None (a VisionTransformer)
    family: str
    img_size: list[int]
    model_args: VitArgs
    pretrained_cfg: ProcessorPreprocessing
    preprocessing_source: str
    assumptions: list[Assumption]
    label_names: list[str]
    transformers: dict[str, str]  # model_type, architecture, output
    _path: str


def _get(config: Mapping[str, Any], key: str, default: Any, kind: type | tuple[type, ...]) -> Any:
    value = config.get(key, default)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise CheckpointError(f"config {config.get('_path')}: {key} must be {kind_name(kind)}, got {value!r}")
    return value


def kind_name(kind: type | tuple[type, ...]) -> str:
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string", list: "a list"}
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def _size(config: Mapping[str, Any], key: str, default: int) -> tuple[int, int]:
    value = config.get(key, default)
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return (value, value)
    if isinstance(value, list) and len(value) == 2 and all(isinstance(v, int) and v > 0 for v in value):
        return (int(value[0]), int(value[1]))
    raise CheckpointError(f"config {config.get('_path')}: {key} must be a positive integer or [h, w], got {value!r}")


def image_size(config: Mapping[str, Any]) -> tuple[int, int]:
    """The native image size a transformers config states (``image_size``; 224 is transformers' default)."""
    return _size(config, "image_size", 224)


def to_timm(
    sd: Mapping[str, torch.Tensor], config: Mapping[str, Any]
) -> tuple[dict[str, torch.Tensor], TimmConfig, tuple[str, ...]]:
    """transformers weights and config → timm weights, a timm-style config and notes on what was
    left out. Every config value that shapes the model is checked against the weights."""
    lay = layout(config)
    mapped, dropped = map_weights(sd, lay)
    args = model_args(config, lay, mapped)
    pre = preprocessing(config, lay)
    assumed = _assumed_preprocessing(pre, lay)
    timm_config: TimmConfig = {
        "architecture": DISTILLED_TIMM if lay.distilled else None,
        "family": "transformers",
        "img_size": list(args["img_size"]),
        "model_args": args,
        "pretrained_cfg": pre,
        "preprocessing_source": pre.pop("source"),
        "assumptions": assumed,
        "label_names": label_names(config, int(args["num_classes"])),
        "transformers": {"model_type": lay.model_type, "architecture": lay.architecture, "output": lay.output},
        "_path": lay.path,
    }
    if lay.model_type == "dinov2_with_registers":
        mapped = _fold_class_position(mapped)
    notes = tuple(f"{key} dropped: {why}" for key, why in dropped.items() if why)
    for note in notes:  # the pooler changes what the model outputs: said; the mask token does not
        (log.warning if note.startswith("pooler") else log.info)("transformers %s: %s", lay.architecture, note)
    return mapped, timm_config, notes


def model_args(config: Mapping[str, Any], lay: Layout, sd: Mapping[str, torch.Tensor]) -> VitArgs:
    """timm ``VisionTransformer`` arguments (JSON-able: ``norm_eps`` becomes the LayerNorm's eps in
    ``load.create_vit``) from the config, each checked against the weights."""
    where = f"config {lay.path}"
    kernel = sd.get("patch_embed.proj.weight")
    if kernel is None or kernel.dim() != 4 or "pos_embed" not in sd or "cls_token" not in sd:
        raise CheckpointError(f"{where}: the weights lack the patch embedding, position embedding or class token")
    width = _get(config, "hidden_size", 768, int)
    heads = _get(config, "num_attention_heads", 12, int)
    depth = _get(config, "num_hidden_layers", 12, int)
    patch = _size(config, "patch_size", 16)
    img = image_size(config)
    chans = _get(config, "num_channels", 3, int)
    stored = {
        "hidden_size": (width, int(kernel.shape[0]), "the patch embedding's width"),
        "num_channels": (chans, int(kernel.shape[1]), "the patch embedding's input channels"),
        "patch_size": (list(patch), [int(kernel.shape[2]), int(kernel.shape[3])], "the patch kernel"),
        "num_hidden_layers": (depth, len({k.split(".")[1] for k in sd if k.startswith("blocks.")}), "the layers"),
    }
    for key, (said, found, what) in stored.items():
        if said != found:
            raise CheckpointError(f"{where}: {key} {said} does not match {what} in the weights ({found})")
    if heads < 1 or width % heads:
        raise CheckpointError(f"{where}: num_attention_heads {heads} does not divide hidden_size {width}")
    if img[0] % patch[0] or img[1] % patch[1]:
        raise CheckpointError(f"{where}: image_size {list(img)} is not a multiple of patch_size {list(patch)}")
    registers = int(sd["reg_token"].shape[1]) if "reg_token" in sd and lay.model_type != "deit" else 0
    said_registers = _get(config, "num_register_tokens", registers, int)
    if said_registers != registers:
        raise CheckpointError(
            f"{where}: num_register_tokens {said_registers} does not match the weights' register tokens ({registers})"
        )
    prefix = 2 if lay.model_type == "deit" else 1
    grid = (img[0] // patch[0], img[1] // patch[1])
    slots = int(sd["pos_embed"].shape[1])
    if slots != prefix + grid[0] * grid[1]:
        raise CheckpointError(
            f"{where}: image_size {list(img)} / patch_size {list(patch)} is a {grid[0]}x{grid[1]} grid "
            f"({prefix + grid[0] * grid[1]} position slots), but the weights' position embedding has {slots}"
        )
    act = _get(config, "hidden_act", "gelu", str)
    if act not in ACTIVATIONS:
        raise CheckpointError(
            f"{where}: hidden_act {act!r} has no timm equivalent (supported: {', '.join(ACTIVATIONS)})"
        )
    hidden = int(sd["blocks.0.mlp.fc1.weight"].shape[0])
    if lay.model_type.startswith("dinov2"):
        if config.get("use_swiglu_ffn"):
            raise CheckpointError(f"{where}: use_swiglu_ffn true (DINOv2 giant's SwiGLU MLP) is not supported")
        if config.get("apply_layernorm") is False:
            raise CheckpointError(f"{where}: apply_layernorm false (no final layernorm) is not supported")
        said_ratio = finite_number(_get(config, "mlp_ratio", 4, (int, float)))
        if said_ratio is None:  # NaN, inf or a 400-digit integer would raise in int() or float()
            raise CheckpointError(f"config {config.get('_path')}: mlp_ratio must be a finite number")
        said_hidden = int(width * said_ratio)
    else:
        said_hidden = _get(config, "intermediate_size", 3072, int)
    if said_hidden != hidden:
        raise CheckpointError(f"{where}: the MLP width {said_hidden} does not match the weights' ({hidden})")
    ratio = hidden / width
    if int(width * ratio) != hidden:  # timm computes int(width * mlp_ratio)
        raise CheckpointError(f"{where}: an MLP width of {hidden} for width {width} cannot be built by timm")
    qkv_bias = "blocks.0.attn.qkv.bias" in sd
    if bool(config.get("qkv_bias", qkv_bias)) != qkv_bias:
        raise CheckpointError(f"{where}: qkv_bias {config.get('qkv_bias')} does not match the weights ({qkv_bias})")
    default_eps = 1e-6 if lay.model_type.startswith("dinov2") else 1e-5 if lay.model_type.startswith("clip") else 1e-12
    eps = _get(config, "layer_norm_eps", default_eps, (int, float))
    classes = int(sd["head.weight"].shape[0]) if "head.weight" in sd else 0
    if lay.classifier and not classes:
        raise CheckpointError(f"{where}: a {lay.architecture} without classifier weights")
    args: VitArgs = {
        "img_size": list(img),
        "patch_size": list(patch),
        "in_chans": chans,
        "num_classes": classes,
        "global_pool": "token",
        "embed_dim": width,
        "depth": depth,
        "num_heads": heads,
        "mlp_ratio": ratio,
        "qkv_bias": qkv_bias,
        "class_token": True,
        "act_layer": ACTIVATIONS[act],
        "norm_eps": float(eps),
    }
    if "blocks.0.ls1.gamma" in sd:
        args["init_values"] = float(_get(config, "layerscale_value", 1.0, (int, float)))
    if lay.model_type == "clip_vision_model":
        if "norm_pre.weight" not in sd or "patch_embed.proj.bias" in sd:
            raise CheckpointError(f"{where}: a CLIPVisionModel without pre_layrnorm, or with a patch bias")
        args["pre_norm"] = True  # pre_layrnorm after the embeddings; timm then has no patch bias, as CLIP
    if lay.model_type == "deit" and not lay.distilled:
        args["reg_tokens"] = 1  # the distillation token: a second prefix token with its own position slot
    if registers:
        args["reg_tokens"] = registers
        args["no_embed_class"] = True  # see _fold_class_position
    return args


def label_names(config: Mapping[str, Any], classes: int) -> list[str]:
    """Class names from ``id2label``, by index; none when absent or transformers' ``LABEL_N`` placeholders."""
    id2label = config.get("id2label")
    if not classes or not isinstance(id2label, dict):
        return []
    try:
        names = [str(id2label[str(i)] if str(i) in id2label else id2label[i]) for i in range(classes)]
    except KeyError:
        return []
    return [] if names == [f"LABEL_{i}" for i in range(classes)] else names
