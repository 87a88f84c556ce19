"""The manifest's preprocessing, applied with Pillow and numpy: timm's eval transform, no torch.

Equal to ``timm.data.create_transform(input_size, interpolation, mean, std, crop_pct,
crop_mode)`` on PIL images (a test compares them on real images within 1e-6). ``center``: resize
the short side to ``floor(size / crop_pct)`` (torchvision's rounding: the long side truncated),
centre-crop (torchvision's rounding), scale to [0, 1], normalise; non-square targets follow
timm's ``ResizeKeepRatio``. ``squash``: each edge to ``floor(size / crop_pct)``, the aspect ratio
not kept, then the centre crop (transformers' ViT image processor is ``squash`` at crop_pct 1).

The work is bounded by the output, not by the resized image: when the resized image would be
larger than both the source and ``EXACT_RESIZE_FACTOR`` crops, the crop box is computed first, in
source coordinates, and only that region is resampled (Pillow's ``resize(size, box=...)``). A
663-byte 200000x1 PNG, whose resized image would hold 39 GB, costs what a 224x224 crop costs. A
batch's pixel values are checked against the memory available before they are allocated.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from exporter.bundle.records import PreprocessingRecord
from exporter.bundle.reference import normalize
from exporter.core.errors import UsageError
from exporter.core.machine import available_memory, gigabytes
from exporter.runtime.decode import Image, read_image, to_rgb

INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "box", "hamming", "lanczos")
CROP_MODES = ("center", "squash")  # timm's eval crop modes that this transform reproduces
MIN_CROP_PCT = 0.01  # timm's are 0.875-1.0; far smaller only magnifies one pixel (the schema says the same)
# A resized image up to this many crops (or the source's size) is made whole, as timm does; beyond
# that (aspect ratios past about 12:1, a tiny crop_pct) only the crop's region is resampled: every
# output pixel maps to the same source position (Pillow's box), and agrees within two levels of
# 255 (Pillow's fixed-point weights round differently, once per pass): the cost stays the crop's.
EXACT_RESIZE_FACTOR = 16
# Bytes per output value held at once: the uint8 crop, its float32 copy and the normalised result.
BYTES_PER_VALUE = 1 + 4 + 4


@dataclass(frozen=True)
class Preprocess:
    """One variant's input transform, from the manifest's ``preprocessing`` and image size."""

    img_size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"
    crop_pct: float = 0.875
    crop_mode: str = "center"

    def __post_init__(self) -> None:
        if self.interpolation not in INTERPOLATIONS:
            raise UsageError(f"interpolation must be one of {', '.join(INTERPOLATIONS)}, got {self.interpolation!r}")
        if self.crop_mode not in CROP_MODES:
            raise UsageError(f"crop_mode must be one of {', '.join(CROP_MODES)}, got {self.crop_mode!r}")
        if not MIN_CROP_PCT <= self.crop_pct <= 1:
            raise UsageError(f"crop_pct must be in [{MIN_CROP_PCT}, 1], got {self.crop_pct}")

    @classmethod
    def from_manifest(cls, pre: PreprocessingRecord, img_size: Sequence[int]) -> Preprocess:
        img = (int(img_size[0]), int(img_size[1]))
        return cls(img, pre.mean, pre.std, pre.interpolation, pre.crop_pct, pre.crop_mode)

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) after the resize step, with torchvision's and timm's rounding."""
        scale_h, scale_w = (math.floor(x / self.crop_pct) for x in self.img_size)
        if self.crop_mode == "squash":  # timm's Resize((h, w)): both edges, the aspect ratio not kept
            return scale_w, scale_h
        if scale_h == scale_w:  # torchvision Resize(int): short side to scale, long side truncated
            short, long = min(width, height), max(width, height)
            new_short, new_long = scale_h, int(scale_h * long / short)
            return (new_short, new_long) if width <= height else (new_long, new_short)
        ratio = min(height / scale_h, width / scale_w)  # timm ResizeKeepRatio, longest=0
        return round(width / ratio), round(height / ratio)

    def pixels(self, image: Image) -> np.ndarray:
        """A PIL image → uint8 RGB ``[H, W, 3]``, resized and centre-cropped (not yet normalised).
        The work is bounded by the larger of the source and the crop: a resized image larger than
        both (a 200000x1 strip, a tiny ``crop_pct``) is never made, only the crop's region of the
        source is resampled."""
        from PIL import Image as PILImage

        image = to_rgb(image)
        width, height = image.size
        if width < 1 or height < 1:
            raise UsageError(f"image of {width}x{height} has no pixels")
        new_w, new_h = self.resized_size(width, height)
        crop_h, crop_w = self.img_size
        if crop_w > new_w or crop_h > new_h:
            raise UsageError(f"image of {width}x{height} is smaller than the {crop_w}x{crop_h} crop after resizing")
        top, left = round((new_h - crop_h) / 2.0), round((new_w - crop_w) / 2.0)
        resample = getattr(PILImage.Resampling, self.interpolation.upper())
        if new_w * new_h <= max(width * height, EXACT_RESIZE_FACTOR * crop_w * crop_h):
            if (new_w, new_h) != (width, height):  # timm's own order: the whole image, then the crop
                image = image.resize((new_w, new_h), resample)
            return np.asarray(image.crop((left, top, left + crop_w, top + crop_h)), dtype=np.uint8)
        sx, sy = width / new_w, height / new_h  # source pixels per resized pixel
        box = (left * sx, top * sy, (left + crop_w) * sx, (top + crop_h) * sy)
        return np.asarray(image.resize((crop_w, crop_h), resample, box=box), dtype=np.uint8)

    def normalize(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 ``[N, H, W, 3]`` → float32 ``[N, 3, H, W]``."""

        return normalize(pixels, self.mean, self.std)

    def __call__(self, images: Any) -> np.ndarray:
        """Paths, PIL images, uint8 arrays (``[H, W, 3]`` or ``[N, H, W, 3]``) or a float32
        ``[N, 3, H, W]`` array that is already ``pixel_values`` → float32 NCHW."""
        if isinstance(images, np.ndarray):
            return self._array(images)
        if isinstance(images, (str, Path)) or hasattr(images, "convert"):
            images = [images]
        if isinstance(images, (bytes, bytearray, memoryview)) or not hasattr(images, "__iter__"):
            raise UsageError(f"images must be paths, PIL images or arrays, got {type(images).__name__}")
        items = list(images)
        if not items:
            raise UsageError("no images given (an empty batch)")
        self.check_memory(len(items))
        return self.normalize(np.stack([self.pixels(read_image(item)) for item in items]))

    def check_memory(self, count: int) -> None:
        """``UsageError`` when ``count`` images' pixel values would not fit in the memory available."""

        h, w = self.img_size
        needed = count * 3 * h * w * BYTES_PER_VALUE
        free = available_memory()
        if free is not None and needed > free:
            raise UsageError(
                f"{count:,} images of {w}x{h} need about {gigabytes(needed)} for their pixel values, this "
                f"machine has {gigabytes(free)} available; send fewer images at once"
            )

    def _array(self, array: np.ndarray) -> np.ndarray:
        from PIL import Image as PILImage

        h, w = self.img_size
        if array.ndim == 4 and len(array) == 0:
            raise UsageError("no images given (an empty batch)")
        if array.dtype == np.uint8 and array.ndim in (3, 4) and array.shape[-1] == 3:
            batch = array[None] if array.ndim == 3 else array
            self.check_memory(len(batch))
            return self.normalize(np.stack([self.pixels(PILImage.fromarray(a)) for a in batch]))
        if array.dtype == np.float32 and array.ndim == 4 and array.shape[1:] == (3, h, w):
            return np.ascontiguousarray(array)
        raise UsageError(
            f"an array must be uint8 RGB [H, W, 3] / [N, H, W, 3] or float32 pixel_values [N, 3, {h}, {w}], "
            f"got {array.dtype} {list(array.shape)}"
        )
