"""Pass criteria (``Tolerance``) and DESIGN.md's defaults per precision and runtime. No numpy:
the CLI's ``--help`` and the manifest's types read these."""

from __future__ import annotations

import math
from dataclasses import dataclass

from exporter.core.errors import UsageError, param
from exporter.core.precision import Precision


@dataclass(frozen=True)
class Tolerance:
    """Pass criteria; ``allclose``-style: ``|a - b| <= atol + rtol * |ref|`` everywhere."""

    name: str = "fp32"
    atol: float | None = 1e-4  # None: no elementwise check (reduced precision uses p99_of_range)
    rtol: float = 1e-3
    min_cosine: float = 0.99999
    min_top1: float = 1.0
    p99_of_range: float | None = None  # reduced precision: p99 |Δ| <= this x (max - min of the reference)
    max_accuracy_drop: float | None = None  # int8: top-1 accuracy may fall this much (judged by ``evaluate``)

    def __post_init__(self) -> None:
        numbers = [self.atol, self.rtol, self.min_cosine, self.min_top1, self.p99_of_range, self.max_accuracy_drop]
        if not all(math.isfinite(x) for x in numbers if x is not None):  # NaN or inf would judge nothing
            raise UsageError(
                f"tolerances ({param('atol')}, {param('rtol')}) must be finite numbers, "
                f"got atol {self.atol}, rtol {self.rtol}"
            )
        if (self.atol is not None and self.atol < 0) or self.rtol < 0:
            raise UsageError(f"tolerances must be >= 0, got atol={self.atol}, rtol={self.rtol}")
        if not (0.0 <= self.min_cosine <= 1.0 and 0.0 <= self.min_top1 <= 1.0):
            raise UsageError(f"min cosine and min top-1 must be in [0, 1], got {self.min_cosine}, {self.min_top1}")


TOLERANCES = {
    "fp32": Tolerance("fp32"),
    "trt-fp32": Tolerance("trt-fp32", atol=1e-3, rtol=1e-3, min_cosine=0.9999, min_top1=0.999),
    "fp16": Tolerance("fp16", atol=None, rtol=0.0, min_cosine=0.999, min_top1=0.99, p99_of_range=5e-3),
    "int8": Tolerance("int8", atol=None, rtol=0.0, min_cosine=0.99, min_top1=0.97, max_accuracy_drop=0.01),
}


def tolerance_for(precision: str, runtime: str) -> Tolerance:
    """DESIGN.md's defaults: fp32 in onnxruntime, fp32/tf32 in TensorRT, fp16/bf16."""
    if precision in (Precision.FP16, "bf16"):
        return TOLERANCES["fp16"]
    if precision in (Precision.FP32, "tf32"):
        return TOLERANCES["trt-fp32" if runtime == "tensorrt" else "fp32"]
    if precision == Precision.INT8:
        return TOLERANCES["int8"]
    raise UsageError(f"no default tolerance for precision {precision!r}")
