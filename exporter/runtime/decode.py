"""Image files as data: regular files only, decoded whole, bombs refused, any mode to 8-bit RGB."""

from __future__ import annotations

import os
import re
import stat
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from exporter.core.errors import FlexiExportError, UsageError


@contextmanager
def opened_image(path: Path) -> Iterator[Any]:
    """``PIL.Image.open`` (lazy: header only) of a regular file, refusing anything else and
    decompression bombs. A FIFO, a device or a folder is refused before it is opened for reading
    (a FIFO would block the read forever); PIL only warns between ``MAX_IMAGE_PIXELS`` and twice
    that, and would then decode gigabytes. Every failure of the decoders, while the header is read
    or while the block decodes the pixels (Pillow raises ``OSError``, ``ValueError``,
    ``SyntaxError``, ``EOFError``, ``struct.error`` ...), is a ``UsageError`` naming the file."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with regular_file(path) as handle, Image.open(handle) as image:
                yield image
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise UsageError(bomb_message(path, exc)) from None
    except FlexiExportError:
        raise
    except Image.UnidentifiedImageError as exc:  # Pillow names the handle (<_io.BufferedReader name=6>), not the file
        raise UsageError(f"cannot read image {str(path)!r}: not in a format Pillow can identify") from exc
    except Exception as exc:  # a decoder's failure on this file's bytes, whatever its type
        raise UsageError(f"cannot read image {str(path)!r}: {type(exc).__name__}: {exc}") from exc


@contextmanager
def regular_file(path: Path) -> Iterator[BinaryIO]:
    """``path`` opened for reading when it is a regular file (after links); ``UsageError`` for a
    FIFO, socket, device or folder. Checked before the open and again on the open descriptor, and
    opened non-blocking, so a file swapped for a FIFO in between cannot hang the read either."""
    kind = _file_kind(os.stat(path).st_mode)
    if kind is None:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
        kind = _file_kind(os.fstat(fd).st_mode)
        if kind is None:
            with os.fdopen(fd, "rb") as handle:
                yield handle
            return
        os.close(fd)
    raise UsageError(f"{str(path)!r} is {kind}, not an image file: refused (give a regular file)")


def _file_kind(mode: int) -> str | None:
    """What a non-regular file is, in words; None for a regular file."""
    kinds = [
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ]
    if stat.S_ISREG(mode):
        return None
    return next((word for test, word in kinds if test(mode)), "not a regular file")


def bomb_message(path: Path, exc: Exception) -> str:
    from PIL import Image

    found = re.search(r"\((\d+) pixels\)", str(exc))
    size = f"{int(found.group(1)):,} pixels" if found else "too many pixels"
    return (
        f"image {str(path)!r} has {size}, more than the {Image.MAX_IMAGE_PIXELS or 0:,} this tool decodes "
        "(a decompression bomb?); shrink or remove it"
    )


def read_image(item: Any) -> Image:
    """A path (a regular file, decoded whole: every decoder failure and bomb is a ``UsageError``
    naming it) as 8-bit RGB, or a PIL image as it is."""
    if hasattr(item, "convert"):
        return item
    if not isinstance(item, (str, os.PathLike)):
        raise UsageError(f"an image must be a path, a PIL image or an array, got {type(item).__name__}")
    with opened_image(Path(item)) as image:
        image.load()
        return to_rgb(image).copy()


def to_rgb(image: Image) -> Image:
    """8-bit RGB as timm's ``convert("RGB")`` gives it; a 16-bit or 32-bit image (``I;16``, ``I``,
    ``F``) is first scaled to 8 bits by its bit depth (16-bit: ``/257``, so an 8-bit image saved as
    16 bits comes back exactly; floats in [0, 1] ``x255``, in [0, 255] as they are), where
    ``convert`` would clip it."""
    from PIL import Image as PILImage

    if image.mode == "RGB":
        return image
    if image.mode in WIDE_MODES:
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0
        if image.mode == "F":  # no bit depth: floats in [0, 1] or [0, 255] are taken as such
            largest = float(np.nanmax(values, initial=0.0))
            top = 1.0 if largest <= 1.0 else 255.0 if largest <= 255.0 else top
        scaled = np.clip(np.nan_to_num(values, nan=0.0) * (255.0 / top), 0, 255)
        image = PILImage.fromarray(np.round(scaled).astype(np.uint8), "L")
    return image.convert("RGB")


Image = Any  # a PIL image; Pillow is imported only when images are read


# 16-bit and 32-bit modes, scaled to 8 bits by their range (convert("RGB") would clip them to 0/255).
WIDE_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")
