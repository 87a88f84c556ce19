"""Turn image files into ``pixel_values`` with a bundle's recorded preprocessing.

timm's eval transform: resize the short side to ``img / crop_pct`` with the recorded
interpolation, centre-crop to ``img``, scale to [0, 1], normalise with mean/std.
"""

from __future__ import annotations

import hashlib
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from exporter.errors import UsageError
from exporter.manifest import walk
from exporter.runtime.preprocess import Preprocess, read_image
from exporter.sizes import Size2

if TYPE_CHECKING:
    from exporter.load import Preprocessing

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff")


def list_images(folder: Path) -> list[Path]:
    """Image files under ``folder``, sorted, recursively."""
    if not folder.is_dir():
        raise UsageError(f"image folder {str(folder)!r} does not exist or is not a folder")
    files = image_files(folder)
    if not files:
        raise UsageError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {str(folder)!r}")
    return files


def image_files(folder: Path) -> list[Path]:
    """Regular image files under ``folder`` (sorted; links to regular files too, never a FIFO or
    device that would block a read)."""
    return [
        e.path
        for e in walk(folder)
        if e.path.suffix.lower() in IMAGE_SUFFIXES and (e.is_file or (e.is_link and e.path.is_file()))
    ]


def folder_digest(folder: Path, limit: int) -> str:
    """sha256 over the names and bytes of the first ``limit`` images (sorted) of ``folder``:
    the ones a build reads, so ``--resume`` notices an image replaced under the same name."""
    digest = hashlib.sha256()
    for path in list_images(folder)[:limit]:
        digest.update(str(path.relative_to(folder)).encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


@contextmanager
def opened_image(path: Path) -> Iterator[Any]:
    """``PIL.Image.open`` (lazy: header only) that refuses unreadable files and decompression
    bombs. PIL only warns between ``MAX_IMAGE_PIXELS`` and twice that, and would then decode
    gigabytes; here both are a ``UsageError`` naming the file."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                yield image
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise UsageError(bomb_message(path, exc)) from None
    except (UnidentifiedImageError, OSError) as exc:
        raise UsageError(f"cannot read image {str(path)!r}: {exc}") from exc


def bomb_message(path: Path, exc: Exception) -> str:
    from PIL import Image

    found = re.search(r"\((\d+) pixels\)", str(exc))
    size = f"{int(found.group(1)):,} pixels" if found else "too many pixels"
    return (
        f"image {str(path)!r} has {size}, more than the {Image.MAX_IMAGE_PIXELS or 0:,} this tool decodes "
        "(a decompression bomb?); shrink or remove it"
    )


def check_headers(folder: Path, limit: int) -> None:
    """Open (headers only) the first ``limit`` images of ``folder``: a bomb or a broken file is
    refused before a build spends minutes on export."""
    for path in list_images(folder)[:limit]:
        with opened_image(path):
            pass


def transform(img_size: Size2, pre: Preprocessing) -> Preprocess:
    """The runtime's preprocessing (timm's eval transform) for these recorded settings."""
    return Preprocess(tuple(img_size), pre.mean, pre.std, pre.interpolation, pre.crop_pct)  # type: ignore[arg-type]


def read_pixels(path: Path, img_size: Size2, pre: Preprocessing) -> np.ndarray:
    """One image file → uint8 RGB ``[H, W, 3]``, resized and centre-cropped, not yet normalised
    (what a bundle's reference stores)."""
    return transform(img_size, pre).pixels(read_image(path))


def preprocess(path: Path, img_size: Size2, pre: Preprocessing) -> np.ndarray:
    """One image file → float32 ``[3, H, W]``: ``read_pixels``, then normalised."""
    return transform(img_size, pre).normalize(read_pixels(path, img_size, pre)[None])[0]


def load_images(
    folder: Path, img_size: Size2, pre: Preprocessing, limit: int | None = None, skip: int = 0
) -> np.ndarray:
    """Up to ``limit`` images from ``folder`` (in sorted order, after the first ``skip``) as one
    float32 NCHW array; an empty ``[0, 3, H, W]`` array when none are left."""
    files = list_images(folder)[skip:][:limit]
    if not files:
        return np.zeros((0, 3, *img_size), dtype=np.float32)
    return np.stack([preprocess(p, img_size, pre) for p in files])


def load_pixels(
    folder: Path, img_size: Size2, pre: Preprocessing, limit: int | None = None, skip: int = 0
) -> np.ndarray:
    """``load_images`` as uint8 RGB ``[N, H, W, 3]`` (an empty ``[0, H, W, 3]`` array when none are left)."""
    files = list_images(folder)[skip:][:limit]
    if not files:
        return np.zeros((0, *img_size, 3), dtype=np.uint8)
    return np.stack([read_pixels(p, img_size, pre) for p in files])
