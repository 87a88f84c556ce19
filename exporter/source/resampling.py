"""How a source's kernel and position grid are resampled: the methods, each checkpoint family's
defaults, and the grid read off a position table."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from exporter.core.errors import UsageError
from exporter.core.sizes import Size2

INTERPOLATIONS: tuple[str, ...] = ("bilinear", "bicubic")


@dataclass(frozen=True)
class ResizeMethod:
    """How a kernel or a position grid is interpolated."""

    interpolation: str = "bicubic"
    antialias: bool = True

    def __post_init__(self) -> None:
        if self.interpolation not in INTERPOLATIONS:
            raise UsageError(f"interpolation must be one of {', '.join(INTERPOLATIONS)}, got {self.interpolation!r}")

    def __str__(self) -> str:
        return f"{self.interpolation}{'+antialias' if self.antialias else ''}"


# FlexiViT / big_vision checkpoints were trained with bilinear, non-antialiased kernel resizes;
# timm and the seed project default to bicubic with antialias for everything else.
FLEXIVIT_PATCH_RESIZE = ResizeMethod("bilinear", antialias=False)


FLEXIVIT_POS_RESIZE = ResizeMethod("bilinear", antialias=True)


TIMM_PATCH_RESIZE = ResizeMethod("bicubic", antialias=True)


TIMM_POS_RESIZE = ResizeMethod("bicubic", antialias=True)


# DINOv2's own code and transformers resample the position grid bicubic without antialias.
DINOV2_POS_RESIZE = ResizeMethod("bicubic", antialias=False)


def default_patch_resize(family: str) -> ResizeMethod:
    """The kernel-resize default for a checkpoint family (``"flexivit"`` or anything else)."""
    return FLEXIVIT_PATCH_RESIZE if family == "flexivit" else TIMM_PATCH_RESIZE


def default_pos_resize(family: str) -> ResizeMethod:
    """The position-embedding resize default for a checkpoint family (a source may set its own:
    ``SourceModel.pos_resize``, e.g. DINOv2 and transformers checkpoints)."""
    return FLEXIVIT_POS_RESIZE if family == "flexivit" else TIMM_POS_RESIZE


def num_pos_prefix_tokens(model: torch.nn.Module) -> int:
    """How many leading ``pos_embed`` slots are not on the grid (class/register tokens).

    timm models with ``no_embed_class`` (FlexiViT) keep no position slot for prefix tokens.
    """
    if getattr(model, "no_embed_class", False):
        return 0
    return int(getattr(model, "num_prefix_tokens", 1 if getattr(model, "cls_token", None) is not None else 0))


def pos_grid_size(pos_embed: torch.Tensor, num_prefix_tokens: int) -> Size2:
    """The square grid of a ``[1, prefix + h*w, d]`` position embedding."""
    n = pos_embed.shape[1] - num_prefix_tokens
    side = math.isqrt(n)
    if side * side != n:
        raise UsageError(
            f"pos_embed has {n} grid tokens after {num_prefix_tokens} prefix tokens, "
            "which is not a square grid; pass the grid size explicitly"
        )
    return (side, side)
