"""Issue 22, the third hostile pass: what the second round left.

- the runtime API's images argument: nothing (``[]``, a ``[0, ...]`` array), ``None``, a number,
  bytes or an image with no pixels is a ``UsageError`` naming the problem, never a ``ValueError``,
  ``TypeError``, ``ZeroDivisionError`` or onnxruntime's failure;
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from exporter.errors import UsageError

from conftest import built


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return built(tmp_path_factory, "build", "--patch-sizes", "16", "32", "--quiet").path


# --- the runtime API: images that are no images ----------------------------------------------------


@pytest.mark.parametrize(
    "images",
    [
        [],
        None,
        42,
        b"\x89PNG",
        np.zeros((0, 64, 64, 3), np.uint8),
        "empty-pixel-values",
        Image.new("RGB", (0, 0)),
        np.zeros((0, 5, 3), np.uint8),
        [3.5],
    ],
    ids=["empty-list", "none", "int", "bytes", "empty-uint8", "empty-float32", "pil-0x0", "array-0x5", "float-item"],
)
def test_the_runtime_api_refuses_images_that_are_no_images(shared: Path, images: object) -> None:
    from exporter.runtime import Bundle

    bundle = Bundle.open(shared)
    model = bundle.model(variant="p32", threads=1)
    if isinstance(images, str):  # at the variant's own size: before, onnxruntime's Fail
        images = np.zeros((0, 3, *bundle.record("p32").img_size), np.float32)
    with pytest.raises(UsageError):  # before: ValueError, TypeError, ZeroDivisionError, onnxruntime's Fail
        model(images)
    assert model(np.zeros((1, 40, 40, 3), np.uint8)).shape[0] == 1  # still serving
