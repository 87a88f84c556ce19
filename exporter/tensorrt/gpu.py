"""CUDA without PyTorch: which GPU this is, device memory, a stream and the copies an engine
needs, through cuda-python's runtime bindings (``pip install cuda-python``).

The engine stage runs on devices where PyTorch has no CUDA (PyPI's aarch64 torch is CPU-only, so
a Jetson would need NVIDIA's own wheel): TensorRT, numpy and these bindings are all it needs.
``cuda.bindings.runtime`` is the module's name from cuda-python 12.6.1 on (the ``cuda-bindings``
package); older releases call it ``cuda.cudart``. Both return ``(cudaError_t, value...)``
tuples; every call goes through ``call``, which raises on anything but ``cudaSuccess``.

Why not Polygraphy's ``polygraphy.cuda`` (or its ``TrtRunner``): its wrapper is ctypes over
``libcudart.so`` found by searching library paths, and has no device properties (we need the GPU's
name and compute capability for the sidecar and to pick an engine); its runner says of itself
that it is for prototyping and debugging, and does per-call work we would be timing in ``bench``
(a debug listener, an output allocator, formatted arrays). See ``exporter.tensorrt.builder`` for the builder.
"""

from __future__ import annotations

import contextlib
import importlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from exporter.core.errors import EnvironmentMissing

INSTALL_HINT = "pip install 'cuda-python>=12' (JetPack 6: 'cuda-python>=12,<13')"


def import_cudart() -> Any:
    """cuda-python's runtime module, or ``EnvironmentMissing`` saying how to install it."""
    for name in ("cuda.bindings.runtime", "cuda.cudart"):  # cuda-python >= 12.6.1, then older releases
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    raise EnvironmentMissing(f"cuda-python is not installed ({INSTALL_HINT})")


def error_text(rt: Any, err: Any) -> str:
    """``cudaErrorNoDevice (no CUDA-capable device is detected)`` for a ``cudaError_t``."""
    name = rt.cudaGetErrorName(err)[1]
    text = rt.cudaGetErrorString(err)[1]
    decode = lambda b: b.decode(errors="replace") if isinstance(b, bytes) else str(b)  # noqa: E731
    return f"{decode(name)} ({decode(text)})"


def call(rt: Any, what: str, result: tuple[Any, ...]) -> Any:
    """The value(s) of a runtime call's ``(err, ...)`` result; ``EnvironmentMissing`` naming the
    call and CUDA's error when ``err`` is not ``cudaSuccess``."""
    err, *values = result
    if err != rt.cudaError_t.cudaSuccess:
        raise EnvironmentMissing(f"CUDA {what} failed: {error_text(rt, err)}")
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


def gpu_problem() -> str | None:
    """Why no CUDA GPU can be used here (bindings missing, no driver, no device), or ``None``."""
    try:
        rt = import_cudart()
        count = call(rt, "cudaGetDeviceCount", rt.cudaGetDeviceCount())
    except EnvironmentMissing as exc:
        return f"no CUDA GPU is usable: {exc}"
    return None if count else "no CUDA GPU is visible (cudaGetDeviceCount found 0 devices)"


@dataclass(frozen=True)
class GpuIdentity:
    name: str
    compute_capability: str  # "8.7"


def gpu_identity(device: int = 0) -> GpuIdentity:
    """The GPU's name and compute capability, from ``cudaGetDeviceProperties``."""
    rt = import_cudart()
    prop = call(rt, "cudaGetDeviceProperties", rt.cudaGetDeviceProperties(device))
    name = prop.name.split(b"\0", 1)[0].decode(errors="replace") if isinstance(prop.name, bytes) else str(prop.name)
    return GpuIdentity(name.strip(), f"{prop.major}.{prop.minor}")


class DeviceBuffer:
    """``nbytes`` of device memory (``cudaMalloc``), freed by ``free`` (or when collected)."""

    def __init__(self, nbytes: int) -> None:
        self._rt = import_cudart()
        self.nbytes = max(int(nbytes), 1)
        self.ptr: int = int(call(self._rt, f"cudaMalloc({self.nbytes} bytes)", self._rt.cudaMalloc(self.nbytes)))

    def free(self) -> None:
        if self.ptr:
            ptr, self.ptr = self.ptr, 0
            call(self._rt, "cudaFree", self._rt.cudaFree(ptr))

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # never raise from a finaliser (interpreter shutdown)
            self.free()


class Stream:
    """A dedicated CUDA stream (``cudaStreamCreate``, never the default stream) with the
    host↔device copies the runner needs; every call is checked."""

    def __init__(self) -> None:
        self._rt = import_cudart()
        self._stream = call(self._rt, "cudaStreamCreate", self._rt.cudaStreamCreate())
        self.handle = int(self._stream)

    def to_device(self, dst: DeviceBuffer, host: np.ndarray) -> None:
        """Queue a copy of the C-contiguous ``host`` array into ``dst``."""
        if host.nbytes > dst.nbytes or not host.flags.c_contiguous:
            raise ValueError(
                f"cannot copy {host.nbytes} bytes (contiguous: {host.flags.c_contiguous}) into {dst.nbytes}"
            )
        kind = self._rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        call(
            self._rt,
            "cudaMemcpyAsync (to device)",
            self._rt.cudaMemcpyAsync(dst.ptr, host.ctypes.data, host.nbytes, kind, self._stream),
        )

    def to_host(self, host: np.ndarray, src: DeviceBuffer) -> None:
        """Queue a copy of ``src`` into the C-contiguous ``host`` array (``synchronize`` before reading it)."""
        if host.nbytes > src.nbytes or not host.flags.c_contiguous:
            raise ValueError(
                f"cannot copy {src.nbytes} bytes into {host.nbytes} (contiguous: {host.flags.c_contiguous})"
            )
        kind = self._rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        call(
            self._rt,
            "cudaMemcpyAsync (to host)",
            self._rt.cudaMemcpyAsync(host.ctypes.data, src.ptr, host.nbytes, kind, self._stream),
        )

    def synchronize(self) -> None:
        call(self._rt, "cudaStreamSynchronize", self._rt.cudaStreamSynchronize(self._stream))

    def destroy(self) -> None:
        if self.handle:
            self.handle = 0
            call(self._rt, "cudaStreamDestroy", self._rt.cudaStreamDestroy(self._stream))

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # never raise from a finaliser
            self.destroy()
