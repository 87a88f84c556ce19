"""Read a checkpoint into a ``SourceModel``: weights, inferred architecture and metadata.

Accepted: ``.pt/.pth/.bin`` (``torch.load(weights_only=True)``), ``.safetensors``, big_vision
``.npz`` (read by timm, needs a model name), a timm model name with ``pretrained=True`` (hub),
or a timm model name plus local weights. A ``<stem>.json`` beside the weights (or
``config.json``, the timm/Hugging Face layout) supplies the architecture name, model arguments
and preprocessing when present.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from exporter.bundle.manifest import Preprocessing
from exporter.core.assumptions import Assumption
from exporter.core.errors import CheckpointError, UsageError, param
from exporter.core.files import sha256_file
from exporter.core.names import printable, slug
from exporter.core.sizes import Size2, format_size, to_size2
from exporter.source import hf, hf_layout
from exporter.source.config import (
    config_architecture,
    is_generic_name,
    label_names,
    read_config,
    resolve_weights,
    timm_model_args,
    transformers_type,
)
from exporter.source.config import stated_img_size as config_img_size
from exporter.source.config import where as config_where
from exporter.source.infer import (
    _check_model_name,
    _meta_model,
    _named_defaults,
    _named_pos_prefix,
    _num_pos_prefix,
    check_config_fits,
    check_state_dict,
    infer_vit_args,
)
from exporter.source.model import KERNEL_KEY, POS_KEY, Origin, SourceModel, SourceSpec
from exporter.source.readers import _download_pretrained, _read_weights
from exporter.source.resampling import DINOV2_POS_RESIZE, pos_grid_size

log = logging.getLogger(__name__)


def preprocessing_from(cfg: Mapping[str, Any] | None, source: str) -> Preprocessing:
    """``Preprocessing`` from a timm pretrained config or a manifest's ``preprocessing`` (unknown keys ignored)."""
    if not cfg:
        return Preprocessing()
    default = Preprocessing()
    return Preprocessing(
        mean=tuple(float(v) for v in cfg.get("mean", default.mean)),  # type: ignore[arg-type]
        std=tuple(float(v) for v in cfg.get("std", default.std)),  # type: ignore[arg-type]
        interpolation=str(cfg.get("interpolation", default.interpolation)),
        crop_pct=float(cfg.get("crop_pct", default.crop_pct)),
        crop_mode=str(cfg.get("crop_mode", default.crop_mode)),
        source=source,
    )


def weights_path(spec: SourceSpec) -> Path | None:
    """The file to read: ``--weights`` (a folder's ``model.safetensors`` or ``pytorch_model.bin``),
    the shipped demo, or none (a hub download)."""
    from exporter.source.demo import DEMO_WEIGHTS

    if spec.weights is not None:
        return resolve_weights(spec.weights)
    return None if spec.model_name else DEMO_WEIGHTS


def source_name(spec: SourceSpec, announce: bool = True) -> str:
    """The bundle's name, known before any weights are read: always a safe name (it becomes the
    folder ``bundles/<name>`` and a word in scripts). An unsafe name from the config beside the
    weights, ``--model`` or the weights' stem is slugged, with a warning when ``announce``."""
    from exporter.source.demo import DEMO_NAME, DEMO_WEIGHTS

    weights = weights_path(spec)
    if weights == DEMO_WEIGHTS:
        return DEMO_NAME
    config = read_config(weights) if weights is not None and weights.is_file() else {}
    if config.get("name"):
        name, origin = str(config["name"]), f"the config {config.get('_path')}"
    elif spec.model_name:
        name, origin = spec.model_name, "--model"
    elif weights is not None and is_generic_name(weights) and config_architecture(config):
        name, origin = config_architecture(config), f"the config {config.get('_path')}"
    elif weights is not None and is_generic_name(weights):
        name, origin = weights.absolute().parent.name, f"the folder of {weights.name}"
    elif weights is not None:
        name, origin = weights.stem, f"the weights file {weights.name}"
    else:
        name, origin = "model", "the default"
    safe = slug(name)
    if safe != name and announce:
        log.warning("bundle name %r from %s is not a safe name; using %r", printable(name), printable(origin), safe)
    return safe


def stated_img_size(spec: SourceSpec) -> Size2 | None:
    """The native image size when the config beside the weights states it (``img_size`` as the
    demo's does, timm's ``model_args.img_size`` / ``pretrained_cfg.input_size``), read without
    touching the weights; None when only the weights can tell."""
    weights = weights_path(spec)
    config = read_config(weights) if weights is not None and weights.is_file() else {}

    if hf_layout.is_transformers_config(config):
        hf_layout.layout(config)  # an unsupported transformers model is named before anything is read
        return hf.image_size(config)
    stated = config_img_size(config)
    return stated[0] if stated else None


def load_source(spec: SourceSpec) -> SourceModel:
    """Load weights and work out (or check) the architecture they belong to."""
    weights = weights_path(spec)
    if spec.model_name:
        _check_model_name(spec.model_name)
    config: Mapping[str, Any] = read_config(weights) if weights is not None else {}
    if transformers_type(config):
        hf_layout.layout(config)  # an unsupported transformers model is named before any weights are read
    model_name = spec.model_name or config.get("architecture") or None
    if not spec.model_name and model_name:
        _check_model_name(model_name, f"config {config['_path']}: unknown timm architecture", CheckpointError)
    if weights is not None:
        sd, container, file_format = _read_weights(
            weights, model_name, config.get("model_args") or {}, spec.trust_checkpoint, spec.use_ema
        )
        origin = Origin("file", weights.resolve(), sha256_file(weights), file_format, container)
        sd, config, model_name, origin = _from_transformers(sd, config, model_name, spec, origin)
    elif spec.pretrained:
        sd = _download_pretrained(str(model_name))
        origin = Origin("pretrained", file_format="timm hub", container=f"timm {model_name} pretrained=True")
    else:
        raise UsageError(f"{param('model_name')} {model_name} needs {param('weights')} FILE or {param('pretrained')}")
    return _describe(sd, source_name(spec, announce=False), model_name, config, origin, spec.num_heads)


def _from_transformers(
    sd: dict[str, torch.Tensor], config: Mapping[str, Any], model_name: str | None, spec: SourceSpec, origin: Origin
) -> tuple[dict[str, torch.Tensor], Mapping[str, Any], str | None, Origin]:
    """A transformers checkpoint mapped into timm's layout (``exporter.source.hf``); anything else as is."""
    from dataclasses import replace

    if not hf_layout.is_transformers_config(config):
        return sd, config, model_name, origin
    lay = hf_layout.layout(config)
    sd, config, notes = hf.to_timm(sd, config)
    if spec.model_name and spec.model_name != config["architecture"]:
        raise UsageError(
            f"{param('model_name')} {spec.model_name}: {lay.path} is a transformers {lay.architecture}, whose config "
            f"decides the architecture; drop {param('model_name')}"
        )
    container = f"{origin.container}, transformers {lay.architecture} mapped to timm"
    return sd, config, config["architecture"], replace(origin, container=container, notes=notes)


def _describe(
    sd: dict[str, torch.Tensor],
    name: str,
    model_name: str | None,
    config: Mapping[str, Any],
    origin: Origin,
    num_heads: int | None,
) -> SourceModel:
    config_args = timm_model_args(config)
    inferred, assumed = infer_vit_args(sd, num_heads or config_args.get("num_heads"))  # assumed only when nothing says
    check_config_fits(sd, config, num_heads)
    named_cfg: dict[str, Any] = {}
    args: dict[str, Any]  # timm's keywords: what the config's model_args say is free-form
    if model_name:
        args, assumed = {"num_classes": inferred["num_classes"], **config_args}, []
        if num_heads is not None:
            args["num_heads"] = num_heads
        named_cfg, heads = _named_defaults(model_name, args, config)
        num_heads = num_heads or heads
    else:
        args = {**inferred, **config_args}
    if num_heads is not None:
        args["num_heads"] = num_heads
    kernel = sd[KERNEL_KEY]
    patch = (int(kernel.shape[2]), int(kernel.shape[3]))
    prefix = _num_pos_prefix(args) if not model_name else _named_pos_prefix(model_name, args, config)
    grid = pos_grid_size(sd[POS_KEY], prefix)
    family = str(config.get("family") or ("flexivit" if (model_name or "").startswith("flexivit") else "vit"))
    img, img_assumed = _native_img_size(config, named_cfg, grid, patch, free_grid=_free_grid(family, origin))
    meta = _meta_model(
        model_name, {**args, "patch_size": patch, "img_size": (grid[0] * patch[0], grid[1] * patch[1])}, config
    )
    check_state_dict(sd, meta, f"timm {model_name}" if model_name else "the inferred ViT")
    named = f"timm {model_name}" if model_name else ""
    preprocessing, pre_assumed = _preprocessing(config, named_cfg, named, origin.kind == "pretrained")
    if img_assumed and origin.kind != "pretrained":
        assumed.append(Assumption("image size", format_size(img), f"{img_assumed}; a config.json img_size settles it"))
    if not model_name and not config.get("model_args"):
        assumed.append(
            Assumption("layers", "LayerNorm eps 1e-6, GELU", "timm ViT's; pass --model NAME or a config.json")
        )
    attn = meta.blocks[0].attn  # type: ignore[index,union-attr]
    return SourceModel(
        name=name,
        family=family,
        model_name=model_name,
        model_args=args,
        state_dict=sd,
        patch_size=patch,
        img_size=img,
        pos_grid=grid,
        num_pos_prefix=prefix,
        embed_dim=int(kernel.shape[0]),
        depth=len(meta.blocks),  # type: ignore[arg-type]
        num_heads=int(attn.num_heads),  # type: ignore[arg-type]
        num_classes=int(getattr(meta, "num_classes", 0)),
        in_chans=int(kernel.shape[1]),
        preprocessing=preprocessing,
        origin=origin,
        assumptions=tuple(assumed + pre_assumed + list(config.get("assumptions") or ())),  # + exporter.source.hf's
        pos_resize=DINOV2_POS_RESIZE if "dinov2" in (model_name or "") or family == "transformers" else None,
        class_names=_class_names(config, int(getattr(meta, "num_classes", 0))),
    )


def _class_names(config: Mapping[str, Any], num_classes: int) -> tuple[str, ...]:
    """The config's class names, one per output."""
    names = label_names(config)
    if names and len(names) != num_classes:
        key = "label_names" if config.get("label_names") else "pretrained_cfg.label_names"
        raise CheckpointError(
            f"{config_where(config)}: {key} has {len(names)} names but the weights have {num_classes} classes; "
            f"give one name per class (or drop {key} and pass {param('labels')} FILE)"
        )
    return names


PREPROCESSING_KEYS = ("mean", "std", "interpolation", "crop_pct")


def _preprocessing(
    config: Mapping[str, Any], named_cfg: Mapping[str, Any], named: str, pretrained: bool
) -> tuple[Preprocessing, list[Assumption]]:
    """What the config's ``pretrained_cfg`` says, then the named timm model's defaults, then timm's
    ViT defaults; what the checkpoint's own config (or, for hub weights, timm's) did not say is assumed."""
    own = dict(config.get("pretrained_cfg") or {})
    stated = {**named_cfg, **own} if pretrained else own
    merged = {**named_cfg, **own}
    source = (
        (config.get("preprocessing_source") or "checkpoint config") if own else (named or "assumed (timm ViT default)")
    )
    pre = preprocessing_from(merged, source) if merged else Preprocessing()
    missing = [k for k in PREPROCESSING_KEYS if k not in stated]
    if not missing:
        return pre, []
    values = {"mean": _numbers(pre.mean), "std": _numbers(pre.std), "interpolation": pre.interpolation}
    values["crop_pct"] = f"{pre.crop_pct:g}"
    whose = f"{named}'s default" if named_cfg else "timm ViT default"
    keys = "/".join(missing)
    value = ", ".join(f"{k} {values[k]}" for k in missing)
    return pre, [Assumption("preprocessing", value, f"{whose}; a config.json pretrained_cfg.{keys} settles it")]


def _numbers(values: tuple[float, ...]) -> str:
    return "[" + ", ".join(f"{v:g}" for v in values) + "]"


def _free_grid(family: str, origin: Origin) -> bool:
    """Whether the stored position grid is independent of the kernel, so grid x kernel need not be
    the native size: FlexiViT (its grid is resampled for every patch size) and big_vision .npz."""
    return family == "flexivit" or origin.file_format == "npz"


def _native_img_size(
    config: Mapping[str, Any], named_cfg: Mapping[str, Any], grid: Size2, patch: Size2, free_grid: bool
) -> tuple[Size2, str]:
    """The native image size and, when nothing stated it, what it was taken from (else "").

    The config's stated size is the truth; for a timm ViT it must be the position grid times the
    kernel (the size its grid was trained for), else config and weights disagree."""
    from_weights = (grid[0] * patch[0], grid[1] * patch[1])
    stated = config_img_size(config)
    if stated is not None:
        size, key = stated
        if not free_grid and size != from_weights:
            raise CheckpointError(
                f"{config_where(config)}: {key} {format_size(size)} does not match the weights: position grid "
                f"{grid[0]}x{grid[1]} times kernel {patch[0]}x{patch[1]} is {format_size(from_weights)}; correct {key}"
            )
        return size, ""
    if free_grid and named_cfg.get("input_size"):
        size = to_size2(tuple(named_cfg["input_size"])[1:], "image size")
        return size, "" if size == from_weights else "timm's default for the model"
    if free_grid:
        return from_weights, f"position grid {format_size(grid)} x kernel {format_size(patch)}"
    return from_weights, ""
