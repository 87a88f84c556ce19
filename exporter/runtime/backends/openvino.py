"""OpenVINO on the CPU on an ONNX file: ``openvino`` (f32 inference precision) and
``openvino-bf16`` (AMX/AVX-512 BF16 CPUs; OpenVINO's own default there). An optional extra."""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path
from typing import Any

import numpy as np

from exporter.parity.runner import Runner
from exporter.runtime.backends.base import Load, refused_file, register


@functools.cache
def openvino_core() -> Any:
    """The process's one ``openvino.Core``, kept until exit. With a Core per model (two alive at
    once, each dropped with its model, as bench's resample cost does) the next signal to the
    process (Ctrl-C, SIGTERM) killed it with SIGSEGV instead of being handled: OpenVINO 2026.4's
    CPU plugin registers an alternate signal stack for the thread (gdb: sigaltstack from
    create_plugin_engine and ~CompiledModel) and left it pointing at memory it had freed. With one
    Core that never happens (tests/test_runtime.py reproduces both)."""
    import openvino as ov

    return ov.Core()


class OpenVinoRunner(Runner):
    """OpenVINO's CPU plugin on ``path``, in bf16 for ``openvino-bf16``, else f32."""

    def __init__(self, path: Path, backend: str = "openvino", threads: int | None = None) -> None:
        core = openvino_core()
        config: dict[str, str | int] = {"INFERENCE_PRECISION_HINT": "bf16" if backend == "openvino-bf16" else "f32"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        with refused_file(path, "OpenVINO"):
            model = core.read_model(str(path))
            static_dim = model.inputs[0].get_partial_shape()[0]
            self.compiled = core.compile_model(model, "CPU", config)
        self.request = self.compiled.create_infer_request()
        static = static_dim.get_length() if static_dim.is_static else None
        precision = str(self.compiled.get_property("INFERENCE_PRECISION_HINT"))
        ports = (model.inputs[0], model.outputs[0])
        shapes = [[d.get_length() if d.is_static else None for d in port.get_partial_shape()] for port in ports]
        super().__init__(backend, path, static or 1, static, {"inference_precision": precision, "shapes": shapes})

    def infer_impl(self, batch: np.ndarray) -> np.ndarray:
        return np.array(self.request.infer({0: batch})[self.compiled.outputs[0]])


def cpu_has_bf16() -> bool:
    """AVX-512 BF16 or AMX-BF16, from /proc/cpuinfo (False where it cannot be read)."""
    try:
        with open("/proc/cpuinfo") as handle:
            flags = next((line for line in handle if line.startswith("flags")), "")
    except OSError:
        return False
    return bool({"avx512_bf16", "amx_bf16"} & set(flags.split()))


def openvino_problem(backend: str) -> str | None:
    if importlib.util.find_spec("openvino") is None:
        return "OpenVINO is not installed (pip install 'flexiexport[openvino]')"
    if backend == "openvino-bf16" and not cpu_has_bf16():
        return "this CPU has no bf16 instructions (AVX-512 BF16 or AMX)"
    return None


def load(request: Load) -> Runner:
    return OpenVinoRunner(request.path, request.backend, request.threads)


for _backend in ("openvino", "openvino-bf16"):
    register(_backend, load, functools.partial(openvino_problem, _backend))
