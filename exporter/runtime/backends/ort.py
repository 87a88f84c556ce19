"""onnxruntime on an ONNX file, by execution provider: ``ort-tensorrt``, ``ort-cuda``, ``ort-cpu``."""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from exporter.bundle.manifest import static_batch
from exporter.parity.runner import Runner, RunnerDetails
from exporter.runtime.backends.base import Load, file_dims, refused_file, register

if TYPE_CHECKING:
    from onnxruntime import OrtValue

PROVIDERS = {
    "ort-tensorrt": "TensorrtExecutionProvider",
    "ort-cuda": "CUDAExecutionProvider",
    "ort-cpu": "CPUExecutionProvider",
}


class OrtRunner(Runner):
    """An onnxruntime session on ``path``, all graph optimisations on. ``initializers``: OrtValues
    used instead of the model's own (``add_initializer``, not copied; the runner keeps them
    alive). Given any, MatMul prepacking is off: a packed copy per session would defeat sharing
    them."""

    def __init__(
        self,
        path: Path,
        backend: str = "ort-cpu",
        threads: int | None = None,
        initializers: Mapping[str, OrtValue] | None = None,
    ) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = threads
        for name, value in (initializers or {}).items():
            options.add_initializer(name, value)
        if initializers:
            options.add_session_config_entry("session.disable_prepacking", "1")
        with refused_file(path, "onnxruntime"):
            self.session = ort.InferenceSession(str(path), options, providers=[PROVIDERS[backend]])
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        static = static_batch(inp.shape)
        details: RunnerDetails = {
            "providers": self.session.get_providers(),
            "shared_initializers": len(initializers or {}),
            "shapes": [file_dims(inp.shape), file_dims(self.session.get_outputs()[0].shape)],
        }
        super().__init__(backend, path, static or 1, static, details)
        self.borrowed = dict(initializers or {})  # memory the session uses, kept alive with it

    def infer_impl(self, batch: np.ndarray) -> np.ndarray:
        return np.asarray(self.session.run(None, {self.input_name: batch})[0])


def provider_problem(backend: str) -> str | None:
    if importlib.util.find_spec("onnxruntime") is None:
        return "onnxruntime is not installed"
    import onnxruntime as ort

    provider = PROVIDERS[backend]
    if provider not in ort.get_available_providers():
        return f"onnxruntime {ort.__version__} has no {provider}"
    return None


def load(request: Load) -> Runner:
    return OrtRunner(request.path, request.backend, request.threads, request.initializers)


for _backend in PROVIDERS:
    register(_backend, load, functools.partial(provider_problem, _backend))
