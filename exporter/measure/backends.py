"""What bench runs a variant on: any backend of the one registry (``exporter.runtime.backends``),
PyTorch's (eager, compiled, CUDA; registered by ``exporter.build.runners``) beside the runtime's
on the variant's ONNX. One that cannot run here is ``Unavailable`` with the reason."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import exporter.build.runners  # noqa: F401 - registers PyTorch's backends
from exporter.core.backends import RUNTIME_BACKENDS
from exporter.core.errors import EnvironmentMissing, Unavailable
from exporter.parity.runner import Runner
from exporter.runtime.backends.base import problem_of, runner_for

ONNX_BACKENDS = tuple(name for name in RUNTIME_BACKENDS if name != "tensorrt")  # the runtime's, on an ONNX


def bench_runner(backend: str, path: Path, threads: int, model: Callable[[], object] | None = None) -> Runner:
    """``backend``'s runner on ``path`` (the PyTorch backends build ``model`` and run it instead).
    "tensorrt" runs the bundle's engines, not its ONNX: ``exporter.tensorrt.select.tensorrt_runner``."""
    problem = problem_of(backend)
    if problem:
        raise Unavailable(problem)
    try:
        return runner_for(backend, path, threads, model)
    except EnvironmentMissing as exc:
        raise Unavailable(str(exc)) from exc
