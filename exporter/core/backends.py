"""Backend names, spelled once and importable without numpy (``--help`` lists them): the
runtime's, in the order ``backend="auto"`` tries them, and bench's (PyTorch's besides)."""

from __future__ import annotations

RUNTIME_BACKENDS = ("tensorrt", "ort-tensorrt", "ort-cuda", "ort-cpu", "openvino", "openvino-bf16")
BENCH_BACKENDS = (
    "torch",
    "torch-compile",
    "ort-cpu",
    "openvino",
    "openvino-bf16",
    "ort-cuda",
    "ort-tensorrt",
    "torch-cuda",
    "tensorrt",
)
