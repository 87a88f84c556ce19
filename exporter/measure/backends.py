"""What bench runs a variant on: PyTorch (eager, compiled, CUDA) beside the runtime's backends on
the variant's ONNX; each factory raises ``Unavailable`` where it cannot run here."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from exporter.build.runners import torch_runner
from exporter.core.errors import EnvironmentMissing, Unavailable
from exporter.parity.compare import Runner
from exporter.runtime.backends import backend_problem, load_runner

ModelFactory = Callable[[], object]  # builds the PyTorch variant only for backends that run it


def torch_backend(model: ModelFactory, onnx_path: Path, threads: int) -> Runner:

    return torch_runner(model())


def torch_compile_backend(model: ModelFactory, onnx_path: Path, threads: int) -> Runner:
    import torch

    try:
        compiled = torch.compile(model(), dynamic=False)  # type: ignore[call-overload]
    except Exception as exc:  # any compile failure means "not available here"
        raise Unavailable(f"torch.compile failed: {exc}") from exc
    return torch_runner(compiled)


def runtime_backend(name: str) -> Callable[[ModelFactory, Path, int], Runner]:
    """The runtime's runner for ``name`` (onnxruntime, OpenVINO, TensorRT): what ``predict`` runs."""

    def make(model: ModelFactory, path: Path, threads: int) -> Runner:

        problem = backend_problem(name)
        if problem:
            raise Unavailable(problem)
        try:
            return load_runner(path, name, threads)
        except EnvironmentMissing as exc:
            raise Unavailable(str(exc)) from exc

    return make


def torch_cuda_backend(model: ModelFactory, onnx_path: Path, threads: int) -> Runner:
    import torch

    if not torch.cuda.is_available():
        raise Unavailable("no CUDA GPU visible to PyTorch")
    gpu_model = model().to("cuda")  # type: ignore[attr-defined]

    def run(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            out = gpu_model(torch.from_numpy(batch).to("cuda", non_blocking=True))
            torch.cuda.synchronize()
            return out.float().cpu().numpy()

    return run


ONNX_BACKENDS = ("ort-cpu", "openvino", "openvino-bf16", "ort-cuda", "ort-tensorrt")  # the runtime's, on an ONNX


FACTORIES: dict[str, Callable[[ModelFactory, Path, int], Runner]] = {
    "torch": torch_backend,
    "torch-compile": torch_compile_backend,
    **{name: runtime_backend(name) for name in ONNX_BACKENDS},
    "torch-cuda": torch_cuda_backend,
}  # "tensorrt" runs the bundle's engines, not its ONNX: tensorrt_runner
