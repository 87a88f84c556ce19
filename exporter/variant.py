"""One model per patch size: PI-resized kernel, resampled position grid, a timm ViT.

Also the image-size policy (DESIGN.md): native size, one fixed size, or ``auto`` (per variant,
the multiple of the patch size nearest the native size).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

import torch

from exporter.errors import FlexiExportError, ImageSizeError, UsageError
from exporter.limits import prefix_tokens
from exporter.load import KERNEL_KEY, POS_KEY, SourceModel, create_vit
from exporter.resize import ResizeMethod, interpolate_patch_embed, pi_resize_patch_embed, resample_pos_embed
from exporter.sizes import Size2, check_patch_fits, format_size, grid_for, nearest_multiple, nearest_multiples

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


@dataclass(frozen=True)
class VariantSpec:
    """What one variant is: patch and image size plus how its embeddings were resized."""

    patch_size: Size2
    img_size: Size2
    patch_resize: ResizeMethod
    pos_resize: ResizeMethod
    sized: bool = False  # one of a grid of image sizes: the label names the size too

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


def build_model(source: SourceModel, patch: Size2, img: Size2) -> torch.nn.Module:
    """An uninitialised-weights timm ViT of the source's architecture at ``patch``/``img``."""
    return create_vit(source.model_name, {**source.model_args, "patch_size": patch, "img_size": img})


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


def make_variant(source: SourceModel, spec: VariantSpec, naive_resize: bool = False) -> Variant:
    """Build, load (``strict=True``) and return the eval-mode model for one patch size.

    ``naive_resize`` interpolates the kernel instead of PI-resizing it (for comparisons only).
    """
    with torch.device("meta"):
        model = build_model(source, spec.patch_size, spec.img_size)
    model.load_state_dict(resized_state_dict(source, spec, naive_resize), strict=True, assign=True)
    model = model.float().eval()
    grid = spec.grid
    tokens = grid[0] * grid[1] + int(getattr(model, "num_prefix_tokens", 1))
    return Variant(spec, model, tokens, vit_gflops(source, spec))


def count_layernorms(model: torch.nn.Module) -> int:
    """LayerNorm modules in ``model``: how many LayerNormalization nodes its ONNX should keep."""
    return sum(isinstance(m, torch.nn.LayerNorm) for m in model.modules())
