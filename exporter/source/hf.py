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

import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from exporter.core.assumptions import Assumption
from exporter.core.errors import CheckpointError
from exporter.core.names import printable
from exporter.core.numbers import finite_number, is_finite_number

log = logging.getLogger(__name__)

# model_type -> the architectures (transformers class names) this module maps.
ARCHITECTURES: dict[str, tuple[str, ...]] = {
    "vit": ("ViTModel", "ViTForImageClassification"),
    "deit": ("DeiTModel", "DeiTForImageClassification", "DeiTForImageClassificationWithTeacher"),
    "dinov2": ("Dinov2Model",),
    "dinov2_with_registers": ("Dinov2WithRegistersModel",),
    "clip_vision_model": ("CLIPVisionModel",),
}
SUPPORTED = ", ".join(ARCHITECTURES)  # the vision tower of CLIP alone: a full CLIPModel is refused
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
# The base model's attribute inside a *For* class: its weights carry this prefix.
BASE_PREFIX = {
    "vit": "vit.",
    "deit": "deit.",
    "dinov2": "dinov2.",
    "dinov2_with_registers": "dinov2_with_registers.",
    "clip_vision_model": "vision_model.",  # transformers 4 saved CLIPVisionModel's weights under it
}
DISTILLED = "DeiTForImageClassificationWithTeacher"
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
# PIL's resampling numbers, as image processors store ``resample``.
PIL_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# Each model type's image processor defaults (transformers' ViTImageProcessor, DeiTImageProcessor,
# BitImageProcessor for DINOv2), used when the folder has no preprocessor_config.json.
PROCESSOR_DEFAULTS: dict[str, dict[str, Any]] = {
    "vit": {"image_mean": [0.5] * 3, "image_std": [0.5] * 3, "resample": 2, "size": {"height": 224, "width": 224}},
    "deit": {
        "image_mean": list(IMAGENET_MEAN),
        "image_std": list(IMAGENET_STD),
        "resample": 3,
        "size": {"height": 256, "width": 256},
        "do_center_crop": True,
        "crop_size": {"height": 224, "width": 224},
    },
    "dinov2": {
        "image_mean": list(IMAGENET_MEAN),
        "image_std": list(IMAGENET_STD),
        "resample": 3,
        "size": {"shortest_edge": 256},
        "do_center_crop": True,
        "crop_size": {"height": 224, "width": 224},
    },
}
PROCESSOR_DEFAULTS["dinov2_with_registers"] = PROCESSOR_DEFAULTS["dinov2"]
PROCESSOR_DEFAULTS["clip_vision_model"] = {  # CLIPImageProcessor
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "resample": 3,
    "size": {"shortest_edge": 224},
    "do_center_crop": True,
    "crop_size": {"height": 224, "width": 224},
}

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


@dataclass(frozen=True)
class Layout:
    """Which transformers model a config describes."""

    model_type: str
    architecture: str
    path: str  # the config file, for messages

    @property
    def distilled(self) -> bool:
        return self.architecture == DISTILLED

    @property
    def classifier(self) -> bool:
        return "ForImageClassification" in self.architecture

    @property
    def output(self) -> str:
        """What transformers' model returns that our ONNX must equal."""
        if self.model_type == "clip_vision_model":
            return "pooler_output (the CLS token after post_layernorm)"
        return "logits" if self.classifier else "CLS token of last_hidden_state (after the final layernorm)"


def is_transformers_config(config: Mapping[str, Any]) -> bool:
    """A transformers ``config.json`` names its ``model_type``; timm's names an ``architecture``."""
    return isinstance(config.get("model_type"), str) and "model_args" not in config


def weights_in(folder: Path) -> Path | None:
    """The weights file of a transformers or timm folder (``model.safetensors`` first), or None."""
    return next((folder / name for name in WEIGHT_FILES if (folder / name).is_file()), None)


def layout(config: Mapping[str, Any]) -> Layout:
    """The supported layout ``config`` describes; ``CheckpointError`` naming any other."""
    where = config.get("_path", "config.json")
    model_type = str(config.get("model_type"))
    archs = config.get("architectures") or []
    arch = str(archs[0]) if isinstance(archs, list) and archs else ""
    known = ARCHITECTURES.get(model_type)
    if known is None or (arch and arch not in known):
        name = arch or model_type
        classes = ", ".join(c for group in ARCHITECTURES.values() for c in group)
        raise CheckpointError(
            f"config {where}: a transformers {name} checkpoint (model_type {model_type!r}); "
            f"supported: {SUPPORTED} ({classes})"
        )
    return Layout(model_type, arch or known[0], str(where))


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
) -> tuple[dict[str, torch.Tensor], dict[str, Any], tuple[str, ...]]:
    """transformers weights and config → timm weights, a timm-style config and notes on what was
    left out. Every config value that shapes the model is checked against the weights."""
    lay = layout(config)
    mapped, dropped = map_weights(sd, lay)
    args = model_args(config, lay, mapped)
    pre = preprocessing(config, lay)
    assumed = _assumed_preprocessing(pre, lay)
    timm_config = {
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


def model_args(config: Mapping[str, Any], lay: Layout, sd: Mapping[str, torch.Tensor]) -> dict[str, Any]:
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
    args: dict[str, Any] = {
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


def _assumed_preprocessing(pre: Mapping[str, Any], lay: Layout) -> list[Assumption]:
    """The image processor's defaults stand in for a missing ``preprocessor_config.json``: said."""
    if not str(pre.get("source", "")).startswith("assumed"):
        return []
    mean, std = ("[" + ", ".join(f"{v:g}" for v in pre[k]) + "]" for k in ("mean", "std"))
    value = f"mean {mean}, std {std}, {pre['interpolation']}, crop_pct {pre['crop_pct']:g}"
    settle = (
        f"transformers {lay.model_type} image processor defaults; a preprocessor_config.json in the folder settles it"
    )
    return [Assumption("preprocessing", value, settle)]


def read_processor(config: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
    """``preprocessor_config.json`` beside the config, or the model type's defaults (said so)."""
    path = Path(str(config.get("_path", ""))).parent / "preprocessor_config.json"
    if path.is_file():
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"cannot read {path}: {exc}") from exc
        if not isinstance(data, dict):
            raise CheckpointError(f"{path}: must be a JSON object")
        return data, f"transformers image processor ({path.name})"
    model_type = str(config.get("model_type"))
    return dict(PROCESSOR_DEFAULTS[model_type]), f"assumed (transformers {model_type} image processor defaults)"


def _edge(sizes: Mapping[str, Any], key: str, where: str) -> float:
    """An image processor's edge length (``size.shortest_edge``, ``crop_size.height``...): a
    positive number a float holds, else one error naming the key and the value."""
    value = finite_number(sizes.get(key))
    if value is None or value <= 0:
        raise CheckpointError(f"{where}.{key} must be a positive number, got {printable(repr(sizes.get(key)))[:80]}")
    return value


def preprocessing(config: Mapping[str, Any], lay: Layout) -> dict[str, Any]:
    """A timm ``pretrained_cfg`` (mean, std, interpolation, crop) from the image processor."""
    proc, source = read_processor(config)
    where = source
    mean = proc.get("image_mean", PROCESSOR_DEFAULTS[lay.model_type]["image_mean"])
    std = proc.get("image_std", PROCESSOR_DEFAULTS[lay.model_type]["image_std"])
    if proc.get("do_normalize") is False:
        mean, std = [0.0] * 3, [1.0] * 3
    for name, value in (("image_mean", mean), ("image_std", std)):
        if not (isinstance(value, list) and len(value) == 3 and all(map(is_finite_number, value))):
            raise CheckpointError(f"{where}: {name} must be 3 finite numbers, got {printable(repr(value))[:80]}")
    resample = proc.get("resample", 3)
    interpolation = PIL_RESAMPLE.get(resample, str(resample)) if isinstance(resample, int) else str(resample)
    size, crop = proc.get("size") or {}, proc.get("crop_size") or {}
    crop_pct, crop_mode = 1.0, "squash"  # resize straight to the model's size (ViTImageProcessor)
    if isinstance(size, dict) and "shortest_edge" in size:
        crop_mode = "center"
        if proc.get("do_center_crop") and isinstance(crop, dict) and crop.get("height"):
            crop_pct = _edge(crop, "height", f"{where}: crop_size") / _edge(size, "shortest_edge", f"{where}: size")
    elif isinstance(size, dict) and proc.get("do_center_crop") and isinstance(crop, dict) and size.get("height"):
        resized = _edge(size, "height", f"{where}: size")
        cropped = _edge(crop, "height", f"{where}: crop_size") if crop.get("height") else resized
        crop_mode, crop_pct = "center", cropped / resized
    if not 0.05 <= crop_pct <= 1:
        raise CheckpointError(f"{where}: the crop ({crop}) is larger than the resize ({size})")
    return {
        "mean": [float(v) for v in mean],
        "std": [float(v) for v in std],
        "interpolation": interpolation,
        "crop_pct": round(crop_pct, 6),
        "crop_mode": crop_mode,
        "source": source,
    }
