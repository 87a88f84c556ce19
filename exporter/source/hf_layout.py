"""Which transformers model a folder holds: the layouts we map (ViT, DeiT, DINOv2 with and
without registers, the CLIP vision tower), read from config.json, and the weights file beside it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from exporter.core.errors import CheckpointError

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


DISTILLED = "DeiTForImageClassificationWithTeacher"


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
