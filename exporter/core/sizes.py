"""Parsing and checking of patch and image sizes.

Kept free of heavy imports: the CLI parses sizes before it decides to import torch.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Union

from exporter.core.errors import ImageSizeError, PatchSizeError, param

Size2 = tuple[int, int]
SizeLike = Union[int, str, Iterable[int]]


def _positive_int(value: object, what: str) -> int:
    if isinstance(value, bool):
        raise PatchSizeError(f"{what} must be a positive integer, got {value!r}")
    if isinstance(value, int):
        number = value
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    elif isinstance(value, str) and value.strip().lstrip("+-").isdigit():
        number = int(value.strip())
    else:
        raise PatchSizeError(f"{what} must be a positive integer, got {value!r}")
    if number <= 0:
        raise PatchSizeError(f"{what} must be a positive integer, got {number}")
    return number


def to_size2(value: SizeLike, what: str = "patch size") -> Size2:
    """Return ``(height, width)`` from ``16``, ``"16"``, ``"10x15"`` or ``(10, 15)``.

    Raises ``PatchSizeError`` naming the value for anything that is not one or two positive
    integers.
    """
    if isinstance(value, str):
        parts = value.lower().replace("×", "x").split("x")
        if len(parts) not in (1, 2) or not all(p.strip() for p in parts):
            raise PatchSizeError(f"{what} must be N or HxW (e.g. 16 or 10x15), got {value!r}")
        items: list[object] = list(parts)
    elif isinstance(value, (int, float)):
        items = [value]
    else:
        items = list(value)
    if len(items) == 1:
        items = items * 2
    if len(items) != 2:
        raise PatchSizeError(f"{what} must have one or two values (N or HxW), got {value!r}")
    try:
        return (_positive_int(items[0], what), _positive_int(items[1], what))
    except PatchSizeError:
        if isinstance(value, str) and "x" in value.lower():
            raise PatchSizeError(f"{what} must be N or HxW with positive integers, got {value!r}") from None
        raise


def format_size(size: Size2) -> str:
    """``16`` for a square size, ``10x15`` otherwise: the form used in file names and tables."""
    return str(size[0]) if size[0] == size[1] else f"{size[0]}x{size[1]}"


def check_patch_fits(patch_size: Size2, img_size: Size2) -> None:
    """Raise ``PatchSizeError`` when a patch is larger than the image it tiles."""
    if patch_size[0] > img_size[0] or patch_size[1] > img_size[1]:
        raise PatchSizeError(
            f"patch size {format_size(patch_size)} is larger than the image "
            f"{format_size(img_size)}; use a patch size of at most {min(img_size)}"
        )


BUILD_ADVICE = f"use {param('img_size')} N or {param('img_size')} auto"


def grid_for(img_size: Size2, patch_size: Size2, advice: str = BUILD_ADVICE) -> Size2:
    """The token grid for an image and patch size; raises ``ImageSizeError`` if not whole
    (``advice``: what the command that asked can do about it)."""
    check_patch_fits(patch_size, img_size)
    if img_size[0] % patch_size[0] or img_size[1] % patch_size[1]:
        raise ImageSizeError(divisibility_message(img_size, patch_size, advice))
    return (img_size[0] // patch_size[0], img_size[1] // patch_size[1])


def valid_patch_sizes(img_size: int, smallest: int = 4) -> list[int]:
    """Square patch sizes (at least ``smallest``) that divide ``img_size`` with >= 2 tokens a side."""
    return [p for p in range(smallest, img_size // 2 + 1) if img_size % p == 0]


def nearest_multiples(n: int, p: int) -> list[int]:
    """The multiples of ``p`` just below and just above ``n`` (one if ``n`` is below ``p``)."""
    below = (n // p) * p
    above = below + p
    return [m for m in (below, above) if m >= p]


def nearest_multiple(n: int, p: int) -> int:
    """The multiple of ``p`` closest to ``n`` (ties go up: fewer tokens lost), at least ``p``."""
    candidates = nearest_multiples(n, p)
    return min(candidates, key=lambda m: (abs(m - n), -m))


def divisibility_message(img_size: Size2, patch_size: Size2, advice: str = BUILD_ADVICE) -> str:
    dims = [(i, p) for i, p in zip(img_size, patch_size) if i % p]
    img, p = dims[0]
    valid = ", ".join(map(str, valid_patch_sizes(img)))
    near = " or ".join(map(str, nearest_multiples(img, p)))
    return (
        f"patch size {format_size(patch_size)} does not divide image size "
        f"{format_size(img_size)}; patch sizes that fit {img}: {valid}; "
        f"image sizes that fit {p}: {near} ({advice})"
    )


DYNAMIC_PREFIX = "dynamic:"
SizeRange = tuple[Size2, Size2]  # (smallest, largest) image size a dynamic-resolution ONNX takes


def parse_img_range(text: str) -> SizeRange:
    """``dynamic:32-128`` or ``dynamic:32x48-128x160`` → ``((32, 32), (128, 128))``."""
    body = text[len(DYNAMIC_PREFIX) :] if text.startswith(DYNAMIC_PREFIX) else text
    parts = body.split("-")
    if len(parts) != 2:
        raise ImageSizeError(
            f"{param('img_size')} dynamic takes MIN-MAX (e.g. dynamic:160-320 or dynamic:32x48-128x160), got {text!r}"
        )
    try:
        low, high = to_size2(parts[0], "image size"), to_size2(parts[1], "image size")
    except PatchSizeError:
        raise ImageSizeError(
            f"{param('img_size')} dynamic takes MIN-MAX with positive sizes N or HxW (e.g. dynamic:160-320), "
            f"got {text!r}"
        ) from None
    if low[0] > high[0] or low[1] > high[1]:
        raise ImageSizeError(f"{param('img_size')} {text}: the smallest size must not exceed the largest")
    return low, high


def sizes_in_range(patch: Size2, span: SizeRange) -> SizeRange | None:
    """The smallest and largest multiples of ``patch`` inside ``span`` (per side), or None when a
    side has none."""
    (lo_h, lo_w), (hi_h, hi_w) = span
    low = (-(-lo_h // patch[0]) * patch[0], -(-lo_w // patch[1]) * patch[1])
    high = ((hi_h // patch[0]) * patch[0], (hi_w // patch[1]) * patch[1])
    if low[0] > high[0] or low[1] > high[1] or high[0] < patch[0] or high[1] < patch[1]:
        return None
    return (max(low[0], patch[0]), max(low[1], patch[1])), high


def format_range(span: SizeRange) -> str:
    """``32-128``, the form ``--img-size dynamic:`` takes."""
    return f"{format_size(span[0])}-{format_size(span[1])}"
