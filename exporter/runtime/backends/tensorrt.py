"""``tensorrt``: a built engine, run by the library its sidecar names (TensorRT or TensorRT-RTX).
Which of a bundle's engines fits this GPU is ``exporter.tensorrt.select``'s choice."""

from __future__ import annotations

from exporter.parity.runner import Runner
from exporter.runtime.backends.base import Load, register
from exporter.tensorrt.library import TENSORRT_RTX, library_of
from exporter.tensorrt.runner import EngineRunner
from exporter.tensorrt.sidecar import read_sidecar
from exporter.tensorrt.versions import tensorrt_problem


def engines_problem() -> str | None:
    """Why no engine can run here (neither TensorRT nor TensorRT-RTX, no usable GPU), or None."""
    problem = tensorrt_problem()
    return problem if problem and tensorrt_problem(TENSORRT_RTX) else None  # either library runs engines


def load(request: Load) -> Runner:
    info = read_sidecar(request.path.with_name(request.path.name + ".json"))  # which library built it (none: TensorRT)
    return EngineRunner(request.path, library_of(info if isinstance(info, dict) else {}))


register("tensorrt", load, engines_problem)
