"""The precisions of a bundle's files: the vocabulary the build, the manifest and TensorRT share."""

from __future__ import annotations

from enum import Enum

from exporter.core.errors import UsageError, param


class Precision(str, Enum):
    """The precision of an ONNX file in a bundle: every variant has its fp32 file, and with
    ``--precision fp16|int8`` one reduced-precision file beside it. (A TensorRT profile's
    precision is wider: tf32, bf16 and fp8 are engine settings, not ONNX files.)"""

    FP32 = "fp32"
    FP16 = "fp16"
    INT8 = "int8"

    def __str__(self) -> str:  # "fp16" in file names, messages and JSON, on every Python
        return self.value

    @classmethod
    def parse(cls, value: object) -> Precision:
        try:
            return cls(str(value))
        except ValueError:
            raise UsageError(f"{param('precision')} must be one of {', '.join(PRECISIONS)}, got {value!r}") from None

    @property
    def reduced(self) -> bool:
        """A file converted from the fp32 one (and judged with its own tolerance)."""
        return self is not Precision.FP32


PRECISIONS = tuple(p.value for p in Precision)


REDUCED_PRECISIONS = tuple(p.value for p in Precision if p.reduced)
