"""The config beside a checkpoint: where it is, what it states, and whether it is well formed.

A checkpoint is a weights file or a folder. A folder holds ``config.json`` and ``model.safetensors``
or ``pytorch_model.bin``: what timm's ``save_for_hf`` writes, and what transformers'
``save_pretrained`` writes (its ``config.json`` has a ``model_type``). Beside a file, ``<stem>.json``
or ``config.json`` is read. A timm config states the architecture (``architecture``, ``model_args``),
the native image size (``model_args.img_size``, ``pretrained_cfg.input_size``), classes, pooling and
preprocessing (``pretrained_cfg``); what it states is the truth the weights are checked against.
No torch here: only JSON.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from exporter.core.errors import CheckpointError, UsageError, param
from exporter.core.numbers import is_finite_number
from exporter.core.sizes import Size2, format_size, to_size2

# What timm's save_for_hf and transformers' save_pretrained write, in the order they are tried:
# safetensors first (no pickle).
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
CONFIG_FILE = "config.json"


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]


def read_config(weights: Path) -> dict[str, Any]:
    """The timm-style JSON config beside ``weights`` (``<stem>.json`` or ``config.json``), or {}.

    The fields this tool uses are checked here (``CheckpointError`` naming the file and the
    field), so nothing downstream meets a string where it needs a width."""
    for candidate in (weights.with_suffix(".json"), weights.parent / "config.json"):
        if candidate.is_file():
            try:
                config = json.loads(candidate.read_text())
            except (OSError, ValueError) as exc:
                raise CheckpointError(f"cannot read config {candidate}: {first_line(exc)}") from exc
            try:
                check_config(config)
            except UsageError as exc:
                raise CheckpointError(f"config {candidate}: {exc}") from None
            config.setdefault("_path", str(candidate))
            return config  # type: ignore[no-any-return]
    return {}


CONFIG_INTS = {"embed_dim": 1, "depth": 1, "num_heads": 1, "in_chans": 1, "num_classes": 0, "reg_tokens": 0}
CONFIG_BOOLS = ("class_token", "no_embed_class", "qkv_bias", "qk_norm", "pre_norm", "dynamic_img_size", "patch_bias")
CONFIG_SIZES = ("img_size", "patch_size")


def _json_kind(value: object) -> str:
    kinds = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}
    return kinds.get(type(value), "a number")


def _is_number(value: object) -> bool:
    return is_finite_number(value)  # not a 400-digit integer either (float() of it overflows)


def _check_size(value: object, field: str) -> None:
    try:
        to_size2(value if isinstance(value, (int, list)) else str(value), "image size")  # type: ignore[arg-type]
    except UsageError:
        raise UsageError(f"{field} must be N or [H, W] with positive integers, got {value!r}") from None


def check_config(config: object) -> None:
    """Raise ``UsageError`` naming the first field of a timm-style config that is the wrong type."""
    if not isinstance(config, dict):
        raise UsageError(f"must be a JSON object ({{...}}), got {_json_kind(config)}")
    for key in ("architecture", "name", "family"):
        if config.get(key) is not None and not (isinstance(config[key], str) and config[key]):
            what = "a timm model name (a string)" if key == "architecture" else "a string"
            raise UsageError(f"{key!r} must be {what}, got {config[key]!r}")
    if config.get("img_size") is not None:
        _check_size(config["img_size"], "'img_size'")
    for key in ("model_args", "pretrained_cfg"):
        if config.get(key) is not None and not isinstance(config[key], dict):
            raise UsageError(f"{key!r} must be a JSON object, got {_json_kind(config[key])}")
    check_model_args(config.get("model_args") or {})
    check_pretrained_cfg(config.get("pretrained_cfg") or {})
    check_top_level(config)


def check_top_level(config: Mapping[str, Any]) -> None:
    """timm's top-level ``num_classes`` / ``global_pool`` (agreeing with ``model_args``), the class
    names and a transformers ``model_type``."""
    args = config.get("model_args") or {}
    value = config.get("num_classes")
    if "num_classes" in config and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
        raise UsageError(f"'num_classes' must be a non-negative integer, got {value!r}")
    for key in ("global_pool", "model_type"):
        if config.get(key) is not None and not isinstance(config[key], str):
            raise UsageError(f"{key!r} must be a string, got {config[key]!r}")
    for key in ("num_classes", "global_pool"):
        if key in config and key in args and config[key] != args[key]:
            raise UsageError(
                f"{key!r} {config[key]!r} and model_args.{key} {args[key]!r} disagree; make them one value"
            )
    pre = config.get("pretrained_cfg") or {}
    for key, names in (
        ("label_names", config.get("label_names")),
        ("pretrained_cfg.label_names", pre.get("label_names")),
    ):
        if names is not None and not (
            isinstance(names, list) and all(isinstance(n, str) and 0 < len(n) <= 512 for n in names)
        ):
            raise UsageError(f"{key} must be a list of class names (strings of 1 to 512 characters)")


def check_model_args(args: Mapping[str, Any]) -> None:
    """Types and ranges of the model arguments the tool reads; timm checks the names."""
    for key, least in CONFIG_INTS.items():
        value = args.get(key)
        if key in args and (not isinstance(value, int) or isinstance(value, bool)):
            raise UsageError(f"model_args.{key} must be an integer, got {value!r}")
        if key in args and value < least:  # type: ignore[operator]
            raise UsageError(f"model_args.{key} must be at least {least}, got {value!r}")
    if "mlp_ratio" in args and not _is_number(args["mlp_ratio"]):
        raise UsageError(f"model_args.mlp_ratio must be a number, got {args['mlp_ratio']!r}")
    if "mlp_ratio" in args and not 0 < args["mlp_ratio"] <= 64:
        raise UsageError(f"model_args.mlp_ratio must be in (0, 64], got {args['mlp_ratio']!r}")
    for key in CONFIG_BOOLS:
        if key in args and not isinstance(args[key], bool):
            raise UsageError(f"model_args.{key} must be true or false, got {args[key]!r}")
    for key in CONFIG_SIZES:
        if args.get(key) is not None:
            _check_size(args[key], f"model_args.{key}")


def check_pretrained_cfg(cfg: Mapping[str, Any]) -> None:
    """The preprocessing fields: what every deployment will do to its images."""
    for key in ("mean", "std"):
        value = cfg.get(key)
        if key in cfg and not (isinstance(value, list) and len(value) == 3 and all(map(_is_number, value))):
            raise UsageError(f"pretrained_cfg.{key} must be 3 numbers, got {value!r}")
    if "std" in cfg and min(cfg["std"]) <= 0:
        raise UsageError(f"pretrained_cfg.std must be positive, got {cfg['std']!r}")
    # crop_pct sets the resize before the crop: a tiny one would blow every image up to gigapixels.
    if "crop_pct" in cfg and not (_is_number(cfg["crop_pct"]) and 0.05 <= cfg["crop_pct"] <= 1):
        raise UsageError(f"pretrained_cfg.crop_pct must be a number in [0.05, 1], got {cfg['crop_pct']!r}")
    for key in ("interpolation", "crop_mode"):
        if key in cfg and not isinstance(cfg[key], str):
            raise UsageError(f"pretrained_cfg.{key} must be a string, got {cfg[key]!r}")
    size = cfg.get("input_size")
    if size is not None and not (
        isinstance(size, list) and len(size) == 3 and all(isinstance(v, int) and not isinstance(v, bool) for v in size)
    ):
        raise UsageError(f"pretrained_cfg.input_size must be [channels, height, width], got {size!r}")
    if size is not None:
        _check_size(size[1:], "pretrained_cfg.input_size")


def resolve_weights(path: Path) -> Path:
    """The weights file of ``--weights``: the path itself, or in a folder the file timm's
    ``save_for_hf`` / transformers' ``save_pretrained`` write (``model.safetensors``, else
    ``pytorch_model.bin``). The config is then the folder's ``config.json`` (``read_config``)."""
    if not path.is_dir():
        return path
    for name in WEIGHT_FILES:
        if (path / name).is_file():
            return path / name
    if any((path / f"{name}.index.json").is_file() for name in WEIGHT_FILES):
        raise CheckpointError(
            f"{param('weights')} {str(path)!r} holds a sharded checkpoint (*.index.json); merge it into one "
            f"{' or '.join(WEIGHT_FILES)} first"
        )
    raise CheckpointError(
        f"{param('weights')} {str(path)!r} is a folder without {' or '.join(WEIGHT_FILES)} (the timm and transformers "
        "layout: config.json beside them); give the weights file instead"
    )


# Weights file stems that name a format or a training step, not a model.
GENERIC_STEMS = ("model", "pytorch_model", "checkpoint", "weights", "best", "last", "final", "ema", "state_dict")


def is_generic_name(weights: Path) -> bool:
    """A weights file named for its format, not its model (``model.safetensors``, ``pytorch_model.bin``,
    ``checkpoint.pth``): the bundle is named after the config's architecture or the folder instead."""
    return weights.name in WEIGHT_FILES or weights.stem.lower() in GENERIC_STEMS


def config_architecture(config: Mapping[str, Any]) -> str:
    """The architecture a config names: timm's ``architecture``, transformers' ``architectures[0]``
    (``ViTForImageClassification``) or ``model_type`` (``vit``); '' when it names none."""
    found = config.get("architecture")
    if not found and isinstance(config.get("architectures"), list) and config["architectures"]:
        found = config["architectures"][0]
    found = found or config.get("model_type")
    return found if isinstance(found, str) else ""


def where(config: Mapping[str, Any]) -> str:
    """``config PATH`` for messages."""
    return f"config {config.get('_path', CONFIG_FILE)}"


def transformers_type(config: Mapping[str, Any]) -> str | None:
    """The ``model_type`` of a transformers ``config.json`` (``vit``, ``dinov2``...); None for timm's."""
    value = config.get("model_type")
    return str(value) if value else None


def stated_img_size(config: Mapping[str, Any]) -> tuple[Size2, str] | None:
    """The native image size a timm-style config states and the key that states it: ``img_size``
    (flexiexport's own), ``model_args.img_size`` or ``pretrained_cfg.input_size`` (timm's
    ``save_for_hf`` writes both). Two keys that disagree are an error naming both."""
    args, pre = config.get("model_args") or {}, config.get("pretrained_cfg") or {}
    found: list[tuple[Size2, str]] = []
    if config.get("img_size") is not None:
        found.append((to_size2(config["img_size"], "image size"), "img_size"))
    if args.get("img_size") is not None:
        found.append((to_size2(args["img_size"], "image size"), "model_args.img_size"))
    if pre.get("input_size") is not None:
        found.append((to_size2(list(pre["input_size"][1:]), "image size"), "pretrained_cfg.input_size"))
    for size, key in found[1:]:
        if size != found[0][0]:
            raise CheckpointError(
                f"{where(config)}: {found[0][1]} {format_size(found[0][0])} and {key} {format_size(size)} disagree; "
                "make them one size"
            )
    return found[0] if found else None


def label_names(config: Mapping[str, Any]) -> tuple[str, ...]:
    """Class names by output index: the config's ``label_names`` (the demo's) or
    ``pretrained_cfg.label_names`` (timm's); empty when it names none."""
    names = config.get("label_names") or (config.get("pretrained_cfg") or {}).get("label_names") or ()
    return tuple(names)


def timm_model_args(config: Mapping[str, Any]) -> dict[str, Any]:
    """``model_args`` with timm's top-level ``num_classes`` and ``global_pool`` where they are not
    in it (``save_for_hf`` writes both places; a hand-written config may have only the top)."""
    args = dict(config.get("model_args") or {})
    for key in ("num_classes", "global_pool"):
        if key in config and key not in args:
            args[key] = config[key]
    return args
