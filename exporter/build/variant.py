"""One model per patch size: PI-resized kernel, resampled position grid, a timm ViT.

Also the image-size policy (DESIGN.md): native size, one fixed size, or ``auto`` (per variant,
the multiple of the patch size nearest the native size).
"""

from __future__ import annotations

import types
from dataclasses import dataclass
from typing import Any, Union

import torch
import torch.nn.functional as F

from exporter.build.resize import interpolate_patch_embed, pi_resize_patch_embed, resample_pos_embed
from exporter.bundle.limits import prefix_tokens
from exporter.core.errors import FlexiExportError, ImageSizeError, UsageError, param
from exporter.core.sizes import (
    Size2,
    SizeRange,
    check_patch_fits,
    format_range,
    format_size,
    grid_for,
    nearest_multiple,
    nearest_multiples,
    sizes_in_range,
)
from exporter.source.infer import create_vit
from exporter.source.model import KERNEL_KEY, POS_KEY, SourceModel
from exporter.source.resampling import ResizeMethod

ImagePolicy = Union[str, Size2]  # "native", "auto" or a fixed (h, w)


def plan_img_size(native: Size2, patch: Size2, policy: ImagePolicy) -> Size2:
    """The image size a variant runs at; raises with suggestions when the patch does not fit."""
    if policy == "auto":
        img = (nearest_multiple(native[0], patch[0]), nearest_multiple(native[1], patch[1]))
    elif policy == "native":
        img = native
    elif isinstance(policy, tuple):
        img = policy
    else:
        raise UsageError(f"image size must be N, HxW, 'native' or 'auto', got {policy!r}")
    grid_for(img, patch)
    return img


def fitted_img_size(native: Size2 | None, patch: Size2, policy: ImagePolicy) -> Size2 | None:
    """``plan_img_size`` when the size to check against is known (``--img-size N``, or the
    native size); None when it is not (yet). Raises for a patch that does not fit."""
    reference = policy if isinstance(policy, tuple) else native
    if reference is None:
        return None
    check_patch_fits(patch, reference)
    return plan_img_size(native or reference, patch, policy)


def variant_label(patch: Size2, img: Size2 | None = None) -> str:
    """``p16``, or with an image size ``p16_64`` (see ``VariantSpec.label``)."""
    return f"p{format_size(patch)}" + (f"_{format_size(img)}" if img is not None else "")


@dataclass(frozen=True)
class GridPlan:
    """The (patch, image size) pairs of a grid that can exist, and one line for each that cannot."""

    pairs: tuple[tuple[Size2, Size2], ...]
    impossible: tuple[str, ...]


def plan_grid(patches: tuple[Size2, ...], sizes: tuple[Size2, ...]) -> GridPlan:
    """Every patch at every size (patch-major, the order asked). A pair whose patch does not
    tile the image is left out and named with the nearest sizes that fit; ``ImageSizeError``
    when no pair is left."""
    pairs, impossible = [], []
    for patch in patches:
        for img in sizes:
            try:
                grid_for(img, patch)
            except FlexiExportError:
                impossible.append(impossible_pair(patch, img))
                continue
            pairs.append((patch, img))
    if not pairs:
        raise ImageSizeError("no (patch, image size) pair can exist: " + "; ".join(impossible))
    return GridPlan(tuple(pairs), tuple(impossible))


def impossible_pair(patch: Size2, img: Size2) -> str:
    """``p32_48: 32 does not divide 48 (sizes that fit 32: 32 or 64)``."""
    dims = list(zip(img, patch))[: 1 if img[0] == img[1] and patch[0] == patch[1] else 2]
    near = " by ".join(" or ".join(map(str, nearest_multiples(i, p))) if i % p or p > i else str(i) for i, p in dims)
    return (
        f"{variant_label(patch, img)}: patch {format_size(patch)} does not tile image {format_size(img)} "
        f"(sizes that fit it: {near})"
    )


def plan_dynamic(
    patches: tuple[Size2, ...], span: SizeRange, native: Size2
) -> tuple[list[tuple[Size2, Size2, SizeRange]], list[str]]:
    """``--img-size dynamic:MIN-MAX``: per patch, the size its ONNX is traced and its position grid
    stored at (``opt``: the multiple of the patch nearest the native size, inside the range) and
    the multiples of the patch the range holds. A patch with none is left out and named;
    ``ImageSizeError`` when none is left."""
    planned, impossible = [], []
    for patch in patches:
        fits = sizes_in_range(patch, span)
        if fits is None:
            impossible.append(
                f"p{format_size(patch)}: no multiple of patch {format_size(patch)} lies in {format_range(span)}"
            )
            continue
        (lo_h, lo_w), (hi_h, hi_w) = fits
        opt = (
            min(max(nearest_multiple(native[0], patch[0]), lo_h), hi_h),
            min(max(nearest_multiple(native[1], patch[1]), lo_w), hi_w),
        )
        planned.append((patch, opt, fits))
    if not planned:
        raise ImageSizeError(f"{param('img_range')} dynamic:{format_range(span)}: " + "; ".join(impossible))
    return planned, impossible


@dataclass(frozen=True)
class VariantSpec:
    """What one variant is: patch and image size plus how its embeddings were resized.
    ``img_range``: a dynamic-resolution variant takes any multiple of its patch in this range;
    ``img_size`` is then the size it is traced at and its position grid is stored for (opt)."""

    patch_size: Size2
    img_size: Size2
    patch_resize: ResizeMethod
    pos_resize: ResizeMethod
    sized: bool = False  # one of a grid of image sizes: the label names the size too
    img_range: SizeRange | None = None

    def at(self, img_size: Size2) -> VariantSpec:
        """The fixed-size spec of this variant at ``img_size`` (what a dynamic one is checked against)."""
        return VariantSpec(self.patch_size, img_size, self.patch_resize, self.pos_resize, self.sized)

    @property
    def grid(self) -> Size2:
        return grid_for(self.img_size, self.patch_size)

    @property
    def label(self) -> str:
        """``p16`` or ``p10x15``; in a grid of image sizes ``p16_64`` or ``p10x15_48x64``.

        One name for the manifest, file names, Triton model names and script words, so it keeps
        to ``names.SAFE_NAME`` ('@' would read better but is reserved in URLs, where Triton puts
        model names)."""
        return variant_label(self.patch_size, self.img_size if self.sized else None)


@dataclass(frozen=True)
class Variant:
    spec: VariantSpec
    model: torch.nn.Module
    tokens: int
    gflops: float


def vit_gflops(source: SourceModel, spec: VariantSpec) -> float:
    """Forward GFLOPs per image (2 x multiply-adds) of the ViT at this patch and image size.

    patch embedding ``2·N·C·ph·pw·D`` + per block ``2·T·D·(3D + D + 2·r·D) + 4·T²·D``
    (qkv, proj, MLP; scores and weighted sum) + head ``2·D·classes``; T = N + prefix tokens.
    Norms, softmax and GELU are elementwise and left out (< 1 % at these sizes).
    """
    grid = spec.grid
    n = grid[0] * grid[1]
    d = source.embed_dim
    t = n + prefix_tokens(source.model_args)
    ratio = float(source.model_args.get("mlp_ratio", 4.0))
    embed = 2 * n * source.in_chans * spec.patch_size[0] * spec.patch_size[1] * d
    block = 2 * t * d * (4 * d + 2 * int(ratio * d)) + 4 * t * t * d
    head = 2 * d * source.num_classes
    return (embed + source.depth * block + head) / 1e9


def build_model(source: SourceModel, patch: Size2, img: Size2, dynamic: bool = False) -> torch.nn.Module:
    """An uninitialised-weights timm ViT of the source's architecture at ``patch``/``img``
    (``dynamic``: timm's ``dynamic_img_size``, any multiple of the patch)."""
    args = {**source.model_args, "patch_size": patch, "img_size": img}
    if dynamic:
        args["dynamic_img_size"] = True
    return create_vit(source.model_name, args)


def fixed_at(source: SourceModel, spec: VariantSpec, img_size: Size2) -> torch.nn.Module:
    """What a dynamic-resolution variant must compute at ``img_size``, built without its graph: a
    fixed-size model whose position grid is the variant's, resampled offline by timm's
    ``resample_abs_pos_embed`` the way the graph does (``GRAPH_POS_RESIZE``)."""
    from timm.layers import resample_abs_pos_embed

    state = resized_state_dict(source, spec.at(spec.img_size))
    if img_size != spec.img_size:
        state[POS_KEY] = resample_abs_pos_embed(
            state[POS_KEY],
            list(grid_for(img_size, spec.patch_size)),
            old_size=list(spec.grid),
            num_prefix_tokens=source.num_pos_prefix,
            interpolation=GRAPH_POS_RESIZE.interpolation,
            antialias=GRAPH_POS_RESIZE.antialias,
        )
    with torch.device("meta"):
        model = build_model(source, spec.patch_size, img_size)
    model.load_state_dict(state, strict=True, assign=True)
    return model.float().eval()


def resized_state_dict(source: SourceModel, spec: VariantSpec, naive: bool = False) -> dict[str, torch.Tensor]:
    """The source's weights with the kernel PI-resized (or, ``naive``, just interpolated) and the
    position grid resampled."""
    state = dict(source.state_dict)
    if naive:
        state[KERNEL_KEY] = interpolate_patch_embed(state[KERNEL_KEY], spec.patch_size, spec.patch_resize)
    else:
        state[KERNEL_KEY] = pi_resize_patch_embed(
            state[KERNEL_KEY], spec.patch_size, spec.patch_resize.interpolation, spec.patch_resize.antialias
        )
    state[POS_KEY] = resample_pos_embed(
        state[POS_KEY],
        spec.grid,
        num_prefix_tokens=source.num_pos_prefix,
        old_grid=source.pos_grid,
        method=spec.pos_resize,
    )
    return state


# The position grid a dynamic-resolution graph resamples: torch's plain bicubic, which exports as
# ONNX Resize (mode cubic, cubic_coeff_a -0.75, half_pixel). timm's dynamic_img_size path uses
# bicubic with antialias, which has no ONNX export (aten::_upsample_bicubic2d_aa), and skips the
# resample at the traced size, which freezes the graph to it.
GRAPH_POS_RESIZE = ResizeMethod("bicubic", antialias=False)


def _pos_embed_resampled_in_graph(self: Any, x: torch.Tensor) -> torch.Tensor:
    """timm ``VisionTransformer._pos_embed`` for NHWC patch tokens of any grid: the stored grid
    resampled to the input's, always (no early exit: one graph for every size)."""
    batch, h, w, channels = x.shape
    prefix = 0 if self.no_embed_class else self.num_prefix_tokens
    stored = self.patch_embed.grid_size
    head, grid = self.pos_embed[:, :prefix], self.pos_embed[:, prefix:]
    grid = grid.reshape(1, stored[0], stored[1], -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(h, w), mode=GRAPH_POS_RESIZE.interpolation, align_corners=False)
    pos = torch.cat([head, grid.permute(0, 2, 3, 1).reshape(1, h * w, -1)], dim=1)
    x = x.reshape(batch, h * w, channels)
    extra = [t.expand(batch, -1, -1) for t in (self.cls_token, self.reg_token) if t is not None]
    if self.no_embed_class:  # position embedding for the patch tokens only, prefix tokens after
        x = torch.cat([*extra, x + pos], dim=1)
    else:
        x = torch.cat([*extra, x], dim=1) + pos
    return self.pos_drop(x)


def make_variant(source: SourceModel, spec: VariantSpec, naive_resize: bool = False) -> Variant:
    """Build, load (``strict=True``) and return the eval-mode model for one patch size.

    ``naive_resize`` interpolates the kernel instead of PI-resizing it (for comparisons only).
    A dynamic-resolution spec (``img_range``) gets timm's ``dynamic_img_size`` model with the
    position grid resampled in the graph (``GRAPH_POS_RESIZE``).
    """
    with torch.device("meta"):
        model = build_model(source, spec.patch_size, spec.img_size, dynamic=spec.img_range is not None)
    model.load_state_dict(resized_state_dict(source, spec, naive_resize), strict=True, assign=True)
    model = model.float().eval()
    if spec.img_range is not None:
        model._pos_embed = types.MethodType(_pos_embed_resampled_in_graph, model)  # type: ignore[method-assign,assignment]
    grid = spec.grid
    tokens = grid[0] * grid[1] + int(getattr(model, "num_prefix_tokens", 1))
    return Variant(spec, model, tokens, vit_gflops(source, spec))


def count_layernorms(model: torch.nn.Module) -> int:
    """LayerNorm modules in ``model``: how many LayerNormalization nodes its ONNX should keep."""
    return sum(isinstance(m, torch.nn.LayerNorm) for m in model.modules())
