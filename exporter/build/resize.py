"""PI-resize of patch embeddings and resampling of position embeddings (pure functions).

FlexiViT (Beyer et al., 2022): for the matrix ``B`` that resizes an old patch to a new one,
``w_new = pinv(B^T) w_old`` keeps ``<x, w_old> == <B x, w_new>`` exactly when the patch grows;
when it shrinks, ``w_new`` is the least-squares solution of ``B^T w_new = w_old``.

torch's bilinear and bicubic resizes (with or without antialias) are separable, so
``B = B_h (x) B_w`` (Kronecker product) and ``pinv(B^T) = pinv(B_h^T) (x) pinv(B_w^T)``. We
therefore apply two small 1-D pseudo-inverses, ``P_h @ W @ P_w^T``, computed once per size
pair in float64: more exact than timm's float32 full pseudo-inverse, and faster.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F

from exporter.core.errors import UsageError
from exporter.core.sizes import Size2, SizeLike, to_size2
from exporter.source.resampling import (
    INTERPOLATIONS,
    TIMM_POS_RESIZE,
    ResizeMethod,
    num_pos_prefix_tokens,
    pos_grid_size,
)


@dataclass(frozen=True)
class ResizeOverride:
    """What the command line asked of a resize; a part left ``None`` comes from the checkpoint
    family's default, which is known only once the checkpoint is loaded."""

    interpolation: str | None = None
    antialias: bool | None = None

    def __post_init__(self) -> None:
        if self.interpolation is not None and self.interpolation not in INTERPOLATIONS:
            raise UsageError(f"interpolation must be one of {', '.join(INTERPOLATIONS)}, got {self.interpolation!r}")

    def resolve(self, default: ResizeMethod) -> ResizeMethod:
        """``default`` with the parts that were asked for replaced."""
        return ResizeMethod(
            self.interpolation or default.interpolation,
            default.antialias if self.antialias is None else self.antialias,
        )


@lru_cache(maxsize=256)
def resize_matrix_1d(old: int, new: int, interpolation: str, antialias: bool) -> torch.Tensor:
    """The float64 ``[new, old]`` matrix that torch's 1-D resize applies (CPU, cached)."""
    basis = torch.eye(old, dtype=torch.float64).reshape(old, 1, 1, old)
    resized = F.interpolate(basis, size=(1, new), mode=interpolation, antialias=antialias, align_corners=False)
    return resized.reshape(old, new).T.contiguous()


def resize_matrix(old: Size2, new: Size2, method: ResizeMethod) -> torch.Tensor:
    """The full ``[new_h*new_w, old_h*old_w]`` resize matrix ``B`` (row-major flattening)."""
    b_h = resize_matrix_1d(old[0], new[0], method.interpolation, method.antialias)
    b_w = resize_matrix_1d(old[1], new[1], method.interpolation, method.antialias)
    return torch.kron(b_h, b_w)


@lru_cache(maxsize=256)
def _pinv_1d(old: int, new: int, interpolation: str, antialias: bool) -> torch.Tensor:
    """``pinv(B^T)`` for one axis, float64 ``[new, old]``, computed once per size pair."""
    if old == new:
        return torch.eye(old, dtype=torch.float64)
    return torch.linalg.pinv(resize_matrix_1d(old, new, interpolation, antialias).T)


def pi_resize_matrices(old: Size2, new: Size2, method: ResizeMethod) -> tuple[torch.Tensor, torch.Tensor]:
    """The two float64 1-D pseudo-inverses ``(P_h, P_w)`` with ``w_new = P_h @ w @ P_w^T``."""
    return (
        _pinv_1d(old[0], new[0], method.interpolation, method.antialias),
        _pinv_1d(old[1], new[1], method.interpolation, method.antialias),
    )


def _check_kernel(patch_embed: torch.Tensor) -> None:
    if patch_embed.dim() != 4:
        raise UsageError(f"patch embedding weight must be 4-D [out, in, h, w], got shape {tuple(patch_embed.shape)}")


def pi_resize_patch_embed(
    patch_embed: torch.Tensor,
    new_patch_size: SizeLike,
    interpolation: str = "bicubic",
    antialias: bool = True,
) -> torch.Tensor:
    """PI-resize a ``[out, in, h, w]`` kernel to ``new_patch_size`` (int or ``(h, w)``).

    Same signature and semantics as the seed project's function. The arithmetic is float64;
    the result has the input's dtype and device (fp16, bf16, fp32 and fp64 all work) and is
    differentiable with respect to ``patch_embed``.
    """
    _check_kernel(patch_embed)
    method = ResizeMethod(interpolation, antialias)
    old = (int(patch_embed.shape[2]), int(patch_embed.shape[3]))
    new = to_size2(new_patch_size)
    if old == new:
        return patch_embed
    p_h, p_w = (p.to(patch_embed.device) for p in pi_resize_matrices(old, new, method))
    out_ch, in_ch = patch_embed.shape[:2]
    # Two plain 2-D/3-D matmuls (W @ P_w^T, then P_h @ .) beat one batched P_h @ W @ P_w^T.
    rows = patch_embed.to(torch.float64).reshape(-1, old[1]) @ p_w.T
    resized = p_h @ rows.reshape(out_ch * in_ch, old[0], new[1])
    return resized.reshape(out_ch, in_ch, *new).to(patch_embed.dtype)


def pi_resize_patch_embed_full(
    patch_embed: torch.Tensor, new_patch_size: SizeLike, method: ResizeMethod
) -> torch.Tensor:
    """Reference formulation: one pseudo-inverse of the full 2-D matrix (slow; for tests)."""
    _check_kernel(patch_embed)
    old = (int(patch_embed.shape[2]), int(patch_embed.shape[3]))
    new = to_size2(new_patch_size)
    pinv = torch.linalg.pinv(resize_matrix(old, new, method).T)
    flat = patch_embed.to(torch.float64).reshape(*patch_embed.shape[:2], -1)
    return (flat @ pinv.T).reshape(*patch_embed.shape[:2], *new).to(patch_embed.dtype)


def interpolate_patch_embed(patch_embed: torch.Tensor, new_patch_size: SizeLike, method: ResizeMethod) -> torch.Tensor:
    """Naive kernel resize, the FlexiViT paper's baseline: plain interpolation of the weights.

    For comparisons only (``evaluate --compare-resize``): unlike PI-resize it does not keep a
    token's response to the resized patch, which is what breaks models when patches grow.
    """
    _check_kernel(patch_embed)
    new = to_size2(new_patch_size)
    resized = F.interpolate(
        patch_embed.to(torch.float32),
        size=new,
        mode=method.interpolation,
        antialias=method.antialias,
        align_corners=False,
    )
    return resized.to(patch_embed.dtype)


def resample_pos_embed(
    pos_embed: torch.Tensor,
    new_grid: SizeLike,
    model: torch.nn.Module | None = None,
    num_prefix_tokens: int | None = None,
    old_grid: SizeLike | None = None,
    method: ResizeMethod = TIMM_POS_RESIZE,
) -> torch.Tensor:
    """Resample ``pos_embed`` to ``new_grid`` with timm's ``resample_abs_pos_embed``.

    The number of prefix slots comes from ``model`` (see ``num_pos_prefix_tokens``) unless
    given. The arithmetic is float32 or wider; the result keeps the input's dtype.
    """
    from timm.layers import resample_abs_pos_embed

    if num_prefix_tokens is None:
        if model is None:
            raise UsageError("resample_pos_embed needs a model or num_prefix_tokens")
        num_prefix_tokens = num_pos_prefix_tokens(model)
    old = to_size2(old_grid, "grid size") if old_grid is not None else pos_grid_size(pos_embed, num_prefix_tokens)
    new = to_size2(new_grid, "grid size")
    if old == new:
        return pos_embed
    work = pos_embed if pos_embed.dtype in (torch.float32, torch.float64) else pos_embed.float()
    resized = resample_abs_pos_embed(
        work,
        new_size=list(new),
        old_size=list(old),
        num_prefix_tokens=num_prefix_tokens,
        interpolation=method.interpolation,
        antialias=method.antialias,
    )
    return resized.to(pos_embed.dtype)
