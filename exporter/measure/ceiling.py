"""The achievable ceiling, measured in the same run as the bench: onnxruntime's own MatMul (the
MLAS kernels the exported model runs on), torch's sgemm, OpenVINO's bf16 MatMul and onnxruntime's
int8 MatMulInteger, on 2048x2048; each only where a backend asked for runs on it."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np


class Timed(Protocol):
    """How long to time a case (``BenchOptions``)."""

    @property
    def warmup(self) -> int: ...
    @property
    def min_runs(self) -> int: ...
    @property
    def min_seconds(self) -> float: ...
    @property
    def max_runs(self) -> int: ...


def measure(run: Callable[[], object], options: Timed) -> list[float]:
    """Seconds per call: ``warmup`` untimed calls, then at least ``min_runs`` and ``min_seconds``."""
    for _ in range(options.warmup):
        run()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < options.max_runs and (
        len(times) < options.min_runs or time.perf_counter() - start < options.min_seconds
    ):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return times


@dataclass(frozen=True)
class Ceiling:
    size: int
    # None: not measured, as no backend asked for runs on it (``--backends ort-cpu``: no torch sgemm)
    ort_matmul_gflops: float | None
    torch_sgemm_gflops: float | None
    # Where the CPU has the instructions (AVX-512 BF16/AMX, VNNI): OpenVINO's bf16 MatMul and
    # onnxruntime's int8 MatMulInteger, each row measured against the ceiling of its own precision.
    bf16_matmul_gflops: float | None = None
    int8_matmul_gops: float | None = None

    def for_backend(self, backend: str) -> float | None:
        """The ceiling a row of ``backend`` (``ort-cpu int8``, ``openvino-bf16``...) is measured against."""
        if backend in FP32_CPU:
            return self.ort_matmul_gflops
        if backend == "openvino-bf16":
            return self.bf16_matmul_gflops
        if backend == "ort-cpu int8":
            return self.int8_matmul_gops
        return None  # GPUs, and fp16 on a CPU (no fast path in onnxruntime's CPU provider)


def ort_matmul_gflops(size: int, threads: int, options: Timed) -> float:
    """onnxruntime's MatMul on ``size``² float32: the kernels an exported ViT spends its time in."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    rng = np.random.default_rng(0)
    b = rng.standard_normal((size, size), dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["c"])],
        "matmul",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [size, size])],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, [size, size])],
        [onnx.numpy_helper.from_array(b, "b")],
    )
    # IR 8 (what torch writes for opset 17): older onnxruntime builds refuse newer IR versions.
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    session = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    a = rng.standard_normal((size, size), dtype=np.float32)
    times = measure(lambda: session.run(None, {"a": a}), options)
    return 2 * size**3 / statistics.median(times) / 1e9


def torch_sgemm_gflops(size: int, options: Timed) -> float:
    import torch

    a, b = torch.randn(size, size), torch.randn(size, size)
    times = measure(lambda: torch.mm(a, b), options)
    return 2 * size**3 / statistics.median(times) / 1e9


def openvino_bf16_gflops(size: int, threads: int, options: Timed) -> float | None:
    """OpenVINO's MatMul on ``size``² with bf16 inference precision; None without OpenVINO or bf16."""
    from exporter.runtime.backends.base import backend_problem
    from exporter.runtime.backends.openvino import openvino_core

    if backend_problem("openvino-bf16"):
        return None
    import openvino as ov

    try:
        import openvino.opset13 as ops
    except ImportError:  # OpenVINO before 2024.2 kept the opsets under openvino.runtime
        import openvino.runtime.opset13 as ops  # type: ignore[no-redef]

    rng = np.random.default_rng(0)
    a = ops.parameter([size, size], ov.Type.f32, name="a")
    b = ops.constant(rng.standard_normal((size, size), dtype=np.float32))
    model = ov.Model([ops.matmul(a, b, False, False)], [a], "matmul")
    config = {"INFERENCE_PRECISION_HINT": "bf16", "INFERENCE_NUM_THREADS": threads}
    request = openvino_core().compile_model(model, "CPU", config).create_infer_request()
    x = rng.standard_normal((size, size), dtype=np.float32)
    times = measure(lambda: request.infer({0: x}), options)
    return 2 * size**3 / statistics.median(times) / 1e9


def ort_int8_gops(size: int, threads: int, options: Timed) -> float | None:
    """onnxruntime's MatMulInteger (uint8 x int8 → int32) on ``size``²: its VNNI kernels where
    the CPU has them; None when this build of onnxruntime lacks the op."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    b = rng.integers(-127, 128, (size, size), dtype=np.int8)
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["a", "b"], ["c"])],
        "matmul_int8",
        [helper.make_tensor_value_info("a", TensorProto.UINT8, [size, size])],
        [helper.make_tensor_value_info("c", TensorProto.INT32, [size, size])],
        [numpy_helper.from_array(b, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    try:
        session = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    except Exception:  # an onnxruntime build without the op: no int8 ceiling, nothing else changes
        return None
    a = rng.integers(0, 256, (size, size), dtype=np.uint8)
    times = measure(lambda: session.run(None, {"a": a}), options)
    return 2 * size**3 / statistics.median(times) / 1e9


def measure_ceiling(
    threads: int, options: Timed, backends: Sequence[str], int8: bool = False, size: int = 2048
) -> Ceiling:
    """The ceilings of the ``backends`` asked for, and no others (``int8``: the bundle has int8
    files, which ort-cpu runs): OpenVINO's bf16 MatMul only for ``openvino-bf16``, torch's sgemm
    only for a PyTorch backend on the CPU."""
    fp32 = any(b in FP32_CPU for b in backends)
    return Ceiling(
        size,
        ort_matmul_gflops(size, threads, options) if fp32 else None,
        torch_sgemm_gflops(size, options) if {"torch", "torch-compile"} & set(backends) else None,
        openvino_bf16_gflops(size, threads, options) if "openvino-bf16" in backends else None,
        ort_int8_gops(size, threads, options) if int8 and "ort-cpu" in backends else None,
    )


FP32_CPU = ("torch", "torch-compile", "ort-cpu", "openvino")  # measured against onnxruntime's fp32 MatMul
