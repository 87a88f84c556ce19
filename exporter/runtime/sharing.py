"""A ``--shared-weights`` bundle's shared tensors, read once and handed to every onnxruntime
session (``SessionOptions.add_initializer``), so all variants loaded together hold one copy.

onnxruntime uses an added initializer instead of the model's own and does not copy it; the
caller owns the memory, which must outlive the sessions (a freed one crashes the process), so a
``Runner`` keeps the values it was given. Which tensors, and where, is read from each ONNX's
external-data entries (``exporter.bundle.onnxwire``: no ``onnx`` import); every one must point into the
manifest's shared file, within its bytes, or the variant is refused.

The catch, measured (README, "Run a bundle"): onnxruntime's CPU MatMul prepacks its weights into
a per-session buffer, and the container that shares those across sessions is not in its Python
API. With prepacking on, shared initializers stay resident beside three private packed copies
(more memory, not less), so sharing turns prepacking off: one copy, but slower runs.
"""

from __future__ import annotations

import hashlib
import math
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from exporter.bundle.onnxwire import ExternalTensor, external_tensors
from exporter.core.errors import BundleError

if TYPE_CHECKING:
    from onnxruntime import OrtValue

# onnx.proto TensorProto.DataType → numpy (bfloat16 and the 4-bit/8-bit floats have no numpy type)
DTYPES: dict[int, type[np.generic]] = {1: np.float32, 2: np.uint8, 3: np.int8, 4: np.uint16, 5: np.int16}
DTYPES |= {6: np.int32, 7: np.int64, 9: np.bool_, 10: np.float16, 11: np.float64, 12: np.uint32, 13: np.uint64}


class SharedTensors:
    """The shared file's bytes (one read, its sha256 checked on the bytes held) and one
    ``OrtValue`` per tensor in it, shared by every session that asks."""

    def __init__(self, path: Path, sha256: str) -> None:
        self.path = path
        with open(path, "rb") as handle:
            self.data = np.fromfile(handle, dtype=np.uint8)
        if hashlib.sha256(self.data.data).hexdigest() != sha256:
            raise BundleError(f"{path} has changed since the build (sha256 differs from the manifest)")
        self.data.flags.writeable = False
        self._values: dict[tuple[int, int, int, tuple[int, ...]], OrtValue] = {}
        self._lock = threading.Lock()

    @property
    def nbytes(self) -> int:
        return int(self.data.nbytes)

    def initializers(self, onnx_path: Path) -> dict[str, OrtValue]:
        """``{initializer name: OrtValue}`` for every external initializer of ``onnx_path``; the
        same ``OrtValue`` objects for every file that names the same bytes."""
        import onnxruntime as ort

        found = {}
        with self._lock:
            for tensor in external_tensors(onnx_path):
                key = (tensor.offset, tensor.length, tensor.data_type, tensor.dims)
                if key not in self._values:
                    self._values[key] = ort.OrtValue.ortvalue_from_numpy(self._array(onnx_path, tensor))
                found[tensor.name] = self._values[key]
        return found

    def _array(self, onnx_path: Path, tensor: ExternalTensor) -> np.ndarray:
        where = f"{onnx_path.name}'s initializer {tensor.name!r}"
        if (onnx_path.parent / tensor.location).resolve() != self.path.resolve():
            raise BundleError(f"{where} points at {tensor.location!r}, not the bundle's {self.path.name}")
        dtype = DTYPES.get(tensor.data_type)
        if dtype is None:
            raise BundleError(f"{where} has ONNX data type {tensor.data_type}, which we do not share")
        itemsize = np.dtype(dtype).itemsize
        length = itemsize * math.prod(tensor.dims)  # Python ints: a forged dim cannot wrap around
        end = tensor.offset + length
        if (
            not 0 <= tensor.offset <= end <= self.nbytes
            or tensor.length not in (-1, length)
            or tensor.offset % itemsize
        ):
            raise BundleError(
                f"{where} claims {tensor.length} bytes at offset {tensor.offset} for dims {list(tensor.dims)}; "
                f"{self.path.name} has {self.nbytes} bytes"
            )
        return self.data[tensor.offset : end].view(dtype).reshape(tensor.dims)
