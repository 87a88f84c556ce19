"""Turn image files into ``pixel_values`` with a bundle's recorded preprocessing.

timm's eval transform: resize the short side to ``img / crop_pct`` with the recorded
interpolation, centre-crop to ``img``, scale to [0, 1], normalise with mean/std.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from exporter.bundle.manifest import walk
from exporter.core.errors import ImageErrors, UsageError, param
from exporter.core.sizes import Size2
from exporter.runtime.decode import read_image, regular_file
from exporter.runtime.preprocess import Preprocess

if TYPE_CHECKING:
    from exporter.bundle.manifest import Preprocessing

# An image within Pillow's pixel limit is under 1 GiB even uncompressed at 8 bytes a pixel; a larger
# file (a valid header, then 40 GB of anything) would be hashed whole for --resume.
MAX_IMAGE_FILE_BYTES = 2 << 30
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff", ".ppm", ".pgm", ".pbm", ".pnm")


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
        one = hashlib.sha256()
        with regular_file(path) as handle:  # streamed: memory stays bounded whatever the file's size
            while block := handle.read(1 << 20):
                one.update(block)
        digest.update(one.digest())
    return digest.hexdigest()


def check_images(folder: Path, limit: int) -> None:
    """Decode the first ``limit`` images of ``folder`` whole: a bomb, a FIFO or a file any decoder
    refuses stops a build before it spends minutes on export, with one ``error:`` line per such
    file (all of them, not only the first)."""
    problems = []
    for path in list_images(folder)[:limit]:
        try:
            if path.stat().st_size > MAX_IMAGE_FILE_BYTES:  # its bytes are hashed: decodable is not enough
                raise UsageError(
                    f"image {str(path)!r} is a file of {path.stat().st_size / 2**30:.1f} GiB, more than any image "
                    f"this tool decodes ({MAX_IMAGE_FILE_BYTES >> 30} GiB); shrink or remove it"
                )
            read_image(path)
        except UsageError as exc:
            problems.append(f"{param('calib_dir')}: {exc}")
    if problems:
        raise ImageErrors(problems)


def readable_images(files: list[Path]) -> tuple[list[Path], list[str]]:
    """``files`` split into those that decode and why each of the others does not."""
    good, problems = [], []
    for path in files:
        try:
            read_image(path)
        except UsageError as exc:
            problems.append(str(exc))
            continue
        good.append(path)
    return good, problems


def transform(img_size: Size2, pre: Preprocessing) -> Preprocess:
    """The runtime's preprocessing (timm's eval transform) for these recorded settings."""
    return Preprocess(tuple(img_size), pre.mean, pre.std, pre.interpolation, pre.crop_pct, pre.crop_mode)  # type: ignore[arg-type]


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
