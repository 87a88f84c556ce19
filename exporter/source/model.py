"""What a source is once read: ``SourceModel`` (weights, architecture, sizes, preprocessing,
assumptions), where it came from (``Origin``) and what was asked for (``SourceSpec``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from exporter.bundle.manifest import Preprocessing
from exporter.core.assumptions import Assumption
from exporter.core.errors import CheckpointError, UsageError, param
from exporter.core.sizes import Size2
from exporter.source.resampling import ResizeMethod, default_pos_resize

KERNEL_KEY = "patch_embed.proj.weight"
POS_KEY = "pos_embed"
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
FLOAT_NAMES = "float16, bfloat16, float32 or float64"


@dataclass(frozen=True)
class Origin:
    """Where the weights came from and how they were unpacked."""

    kind: str  # "file" or "pretrained"
    path: Path | None = None
    sha256: str | None = None
    file_format: str | None = None
    container: str = "(top level)"
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class SourceModel:
    """A checkpoint's weights plus everything needed to rebuild its ViT at any patch size.

    ``patch_size`` is the stored kernel's size and ``pos_grid`` the stored position grid; they
    need not match ``img_size`` (big_vision FlexiViT keeps a 32x32 kernel and a 7x7 grid).
    """

    name: str
    family: str
    model_name: str | None
    model_args: Mapping[str, Any]
    state_dict: Mapping[str, torch.Tensor]
    patch_size: Size2
    img_size: Size2
    pos_grid: Size2
    num_pos_prefix: int
    embed_dim: int
    depth: int
    num_heads: int
    num_classes: int
    in_chans: int
    preprocessing: Preprocessing
    origin: Origin
    # Every value neither the weights nor their config stated (exporter.core.assumptions).
    assumptions: tuple[Assumption, ...] = field(default=())
    # How its own framework resamples the position grid; None: the family's default.
    pos_resize: ResizeMethod | None = None
    class_names: tuple[str, ...] = ()  # from the config (label_names, transformers' id2label), by output index

    @property
    def dtype(self) -> torch.dtype:
        return self.state_dict[KERNEL_KEY].dtype

    @property
    def inferred(self) -> tuple[str, ...]:
        """The assumptions as text (the manifest's ``assumed`` list)."""
        return tuple(map(str, self.assumptions))

    def pos_resize_method(self) -> ResizeMethod:
        """The position-grid resample a build uses unless ``--pos-interpolation/--[no-]pos-antialias`` say otherwise."""
        return self.pos_resize or default_pos_resize(self.family)


@dataclass(frozen=True)
class SourceSpec:
    """What the user asked to load. No weights and no model: the shipped demo."""

    weights: Path | None = None
    model_name: str | None = None
    pretrained: bool = False
    trust_checkpoint: bool = False
    use_ema: bool = False
    num_heads: int | None = None

    def __post_init__(self) -> None:
        if self.pretrained and not self.model_name:
            raise UsageError(f"{param('pretrained')} needs {param('model_name')} NAME (a timm model name)")
        if self.pretrained and self.weights:
            raise UsageError(f"use either {param('pretrained')} or {param('weights')}, not both")
        if self.num_heads is not None and self.num_heads <= 0:
            raise UsageError(f"{param('num_heads')} must be a positive integer, got {self.num_heads}")


def check_float(key: str, tensor: torch.Tensor) -> None:
    """Weights are floating point; an integer or bool tensor is a wrong key or a broken file."""
    if tensor.dtype not in FLOAT_DTYPES:
        name = str(tensor.dtype).replace("torch.", "")
        raise CheckpointError(f"{key!r} has dtype {name}; weights must be {FLOAT_NAMES}")
