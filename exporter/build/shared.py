"""One copy of the weights every variant shares (``build --shared-weights``).

Variants differ only in their patch embedding and position embedding; every other initializer
is byte-identical. Each ONNX file keeps its own tensors inline and points at one external-data
file, ``onnx/shared_weights.bin``, for the shared ones, so each still loads on its own (ONNX
resolves external data relative to the model file) and a 3-variant bundle is about one model's
size instead of three.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from exporter.core.files import sha256_file

SHARED_FILE = "shared_weights.bin"
ALIGN = 4096  # page-aligned tensors, so runtimes may memory-map them


@dataclass(frozen=True)
class SharedFile:
    """The file ``share_weights`` wrote (the manifest records it as ``records.SharedWeights``)."""

    path: Path
    tensors: int
    bytes: int
    sha256: str


def _raw(tensor: object) -> bytes:
    from onnx import numpy_helper

    return numpy_helper.to_array(tensor).tobytes()  # type: ignore[arg-type]


def share_weights(onnx_paths: Sequence[Path], min_bytes: int = 1024) -> SharedFile:
    """Move the initializers that every model holds byte-for-byte into one external file.

    Tensors smaller than ``min_bytes`` stay inline (not worth a seek). Rewrites the models in
    place; returns what was shared.
    """
    import onnx
    from onnx.external_data_helper import set_external_data

    models = [onnx.load(str(p)) for p in onnx_paths]
    digests = [{i.name: hashlib.sha256(_raw(i)).hexdigest() for i in m.graph.initializer} for m in models]
    common = set.intersection(*(set(d.values()) for d in digests)) if digests else set()
    folder = onnx_paths[0].parent
    offsets: dict[str, tuple[int, int]] = {}
    with open(folder / SHARED_FILE, "wb") as blob:
        for model, digest in zip(models, digests):
            for tensor in model.graph.initializer:
                key = digest[tensor.name]
                data = _raw(tensor)
                if key not in common or len(data) < min_bytes:
                    continue
                if key not in offsets:
                    blob.seek((blob.tell() + ALIGN - 1) // ALIGN * ALIGN)
                    offsets[key] = (blob.tell(), len(data))
                    blob.write(data)
                offset, length = offsets[key]
                for field in ("float_data", "int32_data", "int64_data", "double_data"):
                    tensor.ClearField(field)
                tensor.raw_data = data  # set_external_data wants raw bytes to describe, then we drop them
                set_external_data(tensor, SHARED_FILE, offset=offset, length=length)
                tensor.ClearField("raw_data")
                tensor.data_location = onnx.TensorProto.EXTERNAL
    for model, path in zip(models, onnx_paths):
        onnx.save(model, str(path))
    shared = folder / SHARED_FILE
    return SharedFile(shared, len(offsets), shared.stat().st_size, sha256_file(shared))
