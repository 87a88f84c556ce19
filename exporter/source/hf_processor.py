"""A transformers folder's image processor (preprocessor_config.json) as timm's preprocessing:
mean, std, resample, crop; the processor class's defaults said as assumptions where the file is missing."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from typing_extensions import NotRequired, TypedDict

from exporter.core.assumptions import Assumption
from exporter.core.errors import CheckpointError
from exporter.core.names import printable
from exporter.core.numbers import finite_number, is_finite_number
from exporter.source.hf_layout import Layout

# PIL's resampling numbers, as image processors store ``resample``.
PIL_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class ProcessorDefaults(TypedDict):
    """An image processor's defaults, in ``preprocessor_config.json``'s keys."""

    image_mean: list[float]
    image_std: list[float]
    resample: int  # PIL's number
    size: dict[str, int]  # height and width, or shortest_edge
    do_center_crop: NotRequired[bool]
    crop_size: NotRequired[dict[str, int]]


class ProcessorPreprocessing(TypedDict):
    """An image processor's preprocessing in timm's ``pretrained_cfg`` keys, and where it came from."""

    mean: list[float]
    std: list[float]
    interpolation: str
    crop_pct: float
    crop_mode: str
    source: NotRequired[str]  # the file, or the defaults assumed (moved to the config's preprocessing_source)


# Each model type's image processor defaults (transformers' ViTImageProcessor, DeiTImageProcessor,
# BitImageProcessor for DINOv2), used when the folder has no preprocessor_config.json.
PROCESSOR_DEFAULTS: dict[str, ProcessorDefaults] = {
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


def _assumed_preprocessing(pre: ProcessorPreprocessing, lay: Layout) -> list[Assumption]:
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


def preprocessing(config: Mapping[str, Any], lay: Layout) -> ProcessorPreprocessing:
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
