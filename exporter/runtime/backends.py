"""One runner interface over every backend a device may have.

A ``Runner`` takes a float32 NCHW batch and returns float32 logits, and knows its backend and
the batch sizes it accepts (Polygraphy's idea: ORT, OpenVINO and TensorRT are compared and
timed by the same code). Backends, in the order ``backend="auto"`` tries them:

    tensorrt        a built engine of the bundle (sidecar checked against this GPU and TensorRT)
    ort-tensorrt    onnxruntime with its TensorRT provider
    ort-cuda        onnxruntime with its CUDA provider
    ort-cpu         onnxruntime on the CPU
    openvino        OpenVINO on the CPU, f32 inference precision (optional extra)
    openvino-bf16   OpenVINO on the CPU, bf16 (AMX/AVX-512 BF16 CPUs; OpenVINO's own default there)

Each import is lazy: a device needs only the backend it runs.
"""

from __future__ import annotations

import functools
import importlib.util
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from exporter.bundle.manifest import static_batch
from exporter.core.backends import RUNTIME_BACKENDS as BACKENDS
from exporter.core.errors import BundleError, EnvironmentMissing, FlexiExportError, UsageError
from exporter.core.machine import available_cores, cap_threads
from exporter.tensorrt.library import TENSORRT_RTX, library_of
from exporter.tensorrt.runner import engine_runner
from exporter.tensorrt.sidecar import read_sidecar
from exporter.tensorrt.versions import tensorrt_problem

ORT_PROVIDERS = {
    "ort-tensorrt": "TensorrtExecutionProvider",
    "ort-cuda": "CUDAExecutionProvider",
    "ort-cpu": "CPUExecutionProvider",
}


@dataclass
class Runner:
    """A loaded model: ``runner(batch)`` → logits. ``static_batch`` is the one batch size a
    static-batch file accepts (None: any up to ``max_batch``)."""

    backend: str
    path: Path
    run: Callable[[np.ndarray], np.ndarray]
    static_batch: int | None = None
    max_batch: int | None = None
    details: dict[str, Any] = field(default_factory=dict)
    borrowed: dict[str, Any] = field(default_factory=dict, repr=False)  # memory the model uses, kept alive

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        n = len(batch)
        if self.static_batch is not None and n != self.static_batch:
            raise UsageError(f"{self.path.name} takes batches of exactly {self.static_batch}, got {n}")
        if self.max_batch is not None and n > self.max_batch:
            raise UsageError(f"{self.path.name} ({self.backend}) takes batches up to {self.max_batch}, got {n}")
        return np.asarray(self.run(np.ascontiguousarray(batch, dtype=np.float32)), dtype=np.float32)


def backend_problem(backend: str) -> str | None:
    """Why ``backend`` cannot run here, or None. Cheap: looks for the packages and providers."""
    if backend not in BACKENDS:
        raise UsageError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)} or auto")
    if backend in ORT_PROVIDERS:
        if importlib.util.find_spec("onnxruntime") is None:
            return "onnxruntime is not installed"
        import onnxruntime as ort

        provider = ORT_PROVIDERS[backend]
        if provider not in ort.get_available_providers():
            return f"onnxruntime {ort.__version__} has no {provider}"
        return None
    if backend.startswith("openvino"):
        if importlib.util.find_spec("openvino") is None:
            return "OpenVINO is not installed (pip install 'flexiexport[openvino]')"
        if backend == "openvino-bf16" and not cpu_has_bf16():
            return "this CPU has no bf16 instructions (AVX-512 BF16 or AMX)"
        return None

    problem = tensorrt_problem()
    return problem if problem and tensorrt_problem(TENSORRT_RTX) else None  # either library runs engines


def cpu_has_bf16() -> bool:
    """AVX-512 BF16 or AMX-BF16, from /proc/cpuinfo (False where it cannot be read)."""
    try:
        with open("/proc/cpuinfo") as handle:
            flags = next((line for line in handle if line.startswith("flags")), "")
    except OSError:
        return False
    return bool({"avx512_bf16", "amx_bf16"} & set(flags.split()))


def ort_runner(
    path: Path, backend: str = "ort-cpu", threads: int | None = None, initializers: dict[str, Any] | None = None
) -> Runner:
    """``initializers``: OrtValues used instead of the model's own (``add_initializer``, not
    copied; the runner keeps them alive). Given any, MatMul prepacking is off: a packed copy per
    session would defeat sharing them."""
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
        session = ort.InferenceSession(str(path), options, providers=[ORT_PROVIDERS[backend]])
    inp = session.get_inputs()[0]
    name = inp.name
    static = static_batch(inp.shape)

    def run(batch: np.ndarray) -> np.ndarray:
        return np.asarray(session.run(None, {name: batch})[0])

    details = {"providers": session.get_providers(), "shared_initializers": len(initializers or {})}
    details["shapes"] = [_dims(inp.shape), _dims(session.get_outputs()[0].shape)]
    return Runner(backend, path, run, static, details=details, borrowed=dict(initializers or {}))


@contextmanager
def refused_file(path: Path, runtime: str) -> Iterator[None]:
    """A file the runtime will not load (external data that points outside the model's folder, a
    graph it cannot parse) is bad input: one ``BundleError`` line naming the file and the
    runtime's first line of why (OpenVINO's own message runs to several lines)."""
    try:
        yield
    except FlexiExportError:
        raise
    except Exception as exc:  # each runtime has its own exception types (pybind11's, RuntimeError)
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        said = [line for line in lines if not _WHERE_IN_SOURCE.match(line)] or lines  # OpenVINO's source lines
        why = "; ".join(said)[:400]
        raise BundleError(f"{runtime} refuses {str(path)!r}: {type(exc).__name__}: {why}") from exc


_WHERE_IN_SOURCE = re.compile(r"(Exception from \S+:\d+:|Check '.*' failed at \S+:\d+:)$")


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


def openvino_runner(path: Path, backend: str = "openvino", threads: int | None = None) -> Runner:
    core = openvino_core()
    config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": "bf16" if backend == "openvino-bf16" else "f32"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    with refused_file(path, "OpenVINO"):
        model = core.read_model(str(path))
        static_dim = model.inputs[0].get_partial_shape()[0]
        compiled = core.compile_model(model, "CPU", config)
    request = compiled.create_infer_request()

    def run(batch: np.ndarray) -> np.ndarray:
        return np.array(request.infer({0: batch})[compiled.outputs[0]])

    static = static_dim.get_length() if static_dim.is_static else None
    precision = str(compiled.get_property("INFERENCE_PRECISION_HINT"))
    ports = (model.inputs[0], model.outputs[0])
    shapes = [[d.get_length() if d.is_static else None for d in port.get_partial_shape()] for port in ports]
    return Runner(backend, path, run, static, details={"inference_precision": precision, "shapes": shapes})


def _dims(shape: list[Any]) -> list[int | None]:
    """A runtime's shape: its fixed sizes, None for each named or unknown one."""
    return [d if isinstance(d, int) and d >= 0 else None for d in shape]


def tensorrt_runner(path: Path, backend: str = "tensorrt", threads: int | None = None) -> Runner:

    info = read_sidecar(path.with_name(path.name + ".json"))  # which library built it (none: TensorRT)
    return wrap_engine(engine_runner(path, library_of(info if isinstance(info, dict) else {})), path)


def wrap_engine(engine: Any, path: Path) -> Runner:
    """An ``EngineRunner`` as a ``Runner``: its profile's batch range becomes the runner's limits."""
    low, high = engine.batch_range
    return Runner("tensorrt", path, engine, static_batch=low if low == high else None, max_batch=high)


FACTORIES: dict[str, Callable[[Path, str, int | None], Runner]] = {
    **dict.fromkeys(ORT_PROVIDERS, ort_runner),
    "openvino": openvino_runner,
    "openvino-bf16": openvino_runner,
    "tensorrt": tensorrt_runner,
}


def load_runner(
    path: Path, backend: str, threads: int | None = None, initializers: dict[str, Any] | None = None
) -> Runner:
    """``backend``'s runner on ``path`` (an ONNX file, or an engine for ``tensorrt``);
    ``initializers`` (shared OrtValues) only for ``ort-cpu``."""
    problem = backend_problem(backend)
    if problem:
        raise EnvironmentMissing(f"backend {backend}: {problem}")
    threads = cap_threads(threads)  # more than the cores only oversubscribes (or crashes the runtime)
    if initializers:
        if backend != "ort-cpu":
            raise UsageError(f"shared initializers are for ort-cpu, not {backend}")
        return ort_runner(path, backend, threads or default_threads(), initializers)
    return FACTORIES[backend](path, backend, threads or default_threads())


def default_threads() -> int:
    return available_cores()
