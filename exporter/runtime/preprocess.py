"""The manifest's preprocessing, applied with Pillow and numpy: timm's eval transform, no torch.

Equal to ``timm.data.create_transform(input_size, interpolation, mean, std, crop_pct,
crop_mode="center")`` on PIL images (a test compares them on real images within 1e-6): resize
the short side to ``floor(size / crop_pct)`` (torchvision's rounding: the long side truncated),
centre-crop (torchvision's rounding), scale to [0, 1], normalise. Non-square targets follow
timm's ``ResizeKeepRatio``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from exporter.errors import UsageError

Image = Any  # a PIL image; Pillow is imported only when images are read
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "box", "hamming", "lanczos")


@dataclass(frozen=True)
class Preprocess:
    """One variant's input transform, from the manifest's ``preprocessing`` and image size."""

    img_size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"
    crop_pct: float = 0.875

    def __post_init__(self) -> None:
        if self.interpolation not in INTERPOLATIONS:
            raise UsageError(f"interpolation must be one of {', '.join(INTERPOLATIONS)}, got {self.interpolation!r}")
        if not 0 < self.crop_pct <= 1:
            raise UsageError(f"crop_pct must be in (0, 1], got {self.crop_pct}")

    @classmethod
    def from_manifest(cls, pre: dict[str, Any], img_size: Sequence[int]) -> Preprocess:
        return cls(
            (int(img_size[0]), int(img_size[1])),
            tuple(pre["mean"]),  # type: ignore[arg-type]
            tuple(pre["std"]),  # type: ignore[arg-type]
            str(pre.get("interpolation", "bicubic")),
            float(pre.get("crop_pct", 0.875)),
        )

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) after the resize step, with torchvision's and timm's rounding."""
        scale_h, scale_w = (math.floor(x / self.crop_pct) for x in self.img_size)
        if scale_h == scale_w:  # torchvision Resize(int): short side to scale, long side truncated
            short, long = min(width, height), max(width, height)
            new_short, new_long = scale_h, int(scale_h * long / short)
            return (new_short, new_long) if width <= height else (new_long, new_short)
        ratio = min(height / scale_h, width / scale_w)  # timm ResizeKeepRatio, longest=0
        return round(width / ratio), round(height / ratio)

    def pixels(self, image: Image) -> np.ndarray:
        """A PIL image → uint8 RGB ``[H, W, 3]``, resized and centre-cropped (not yet normalised)."""
        from PIL import Image as PILImage

        image = image.convert("RGB")
        size = self.resized_size(*image.size)
        if size != image.size:
            image = image.resize(size, getattr(PILImage.Resampling, self.interpolation.upper()))
        width, height = image.size
        crop_h, crop_w = self.img_size
        if crop_w > width or crop_h > height:
            raise UsageError(f"image of {width}x{height} is smaller than the {crop_w}x{crop_h} crop after resizing")
        top, left = round((height - crop_h) / 2.0), round((width - crop_w) / 2.0)
        return np.asarray(image.crop((left, top, left + crop_w, top + crop_h)), dtype=np.uint8)

    def normalize(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 ``[N, H, W, 3]`` → float32 ``[N, 3, H, W]``."""
        from exporter.reference import normalize

        return normalize(pixels, self.mean, self.std)

    def __call__(self, images: Any) -> np.ndarray:
        """Paths, PIL images, uint8 arrays (``[H, W, 3]`` or ``[N, H, W, 3]``) or a float32
        ``[N, 3, H, W]`` array that is already ``pixel_values`` → float32 NCHW."""
        if isinstance(images, np.ndarray):
            return self._array(images)
        if isinstance(images, (str, Path)) or hasattr(images, "convert"):
            images = [images]
        return self.normalize(np.stack([self.pixels(read_image(item)) for item in images]))

    def _array(self, array: np.ndarray) -> np.ndarray:
        from PIL import Image as PILImage

        h, w = self.img_size
        if array.dtype == np.uint8 and array.ndim in (3, 4) and array.shape[-1] == 3:
            batch = array[None] if array.ndim == 3 else array
            return self.normalize(np.stack([self.pixels(PILImage.fromarray(a)) for a in batch]))
        if array.dtype == np.float32 and array.ndim == 4 and array.shape[1:] == (3, h, w):
            return np.ascontiguousarray(array)
        raise UsageError(
            f"an array must be uint8 RGB [H, W, 3] / [N, H, W, 3] or float32 pixel_values [N, 3, {h}, {w}], "
            f"got {array.dtype} {list(array.shape)}"
        )


def read_image(item: Any) -> Image:
    """A path (opened, bombs refused) or a PIL image as it is."""
    if hasattr(item, "convert"):
        return item
    from exporter.images import opened_image

    with opened_image(Path(item)) as image:
        image.load()
        return image.copy()
