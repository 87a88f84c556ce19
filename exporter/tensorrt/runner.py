"""A ``Runner`` over a serialized engine (TensorRT's or TensorRT-RTX's, by the library its sidecar
names): a float32 batch in, float32 logits out, on its own CUDA stream (``exporter.tensorrt.gpu``).
Under TensorRT-RTX this is type-checked only: no GPU has ever run it."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from exporter.bundle.manifest import INPUT_NAME
from exporter.core.errors import EngineLoadError, UsageError
from exporter.parity.runner import Runner
from exporter.tensorrt.gpu import DeviceBuffer, Stream
from exporter.tensorrt.library import TENSORRT, Library
from exporter.tensorrt.versions import import_tensorrt, trt_logger


def profile_batch_range(input_shape: tuple[int, ...], profile_shapes: list[tuple[int, ...]]) -> tuple[int, int]:
    """The batches an engine takes: its input's fixed batch, else profile 0's min and max
    (``get_tensor_profile_shape`` gives min, opt, max)."""
    if input_shape and input_shape[0] >= 0:
        return input_shape[0], input_shape[0]
    if len(profile_shapes) != 3 or not all(profile_shapes):
        raise EngineLoadError(f"the engine has no optimisation profile for {INPUT_NAME!r}")
    return profile_shapes[0][0], profile_shapes[2][0]


def _shape(dims: Any) -> tuple[int, ...]:
    return tuple(int(dims[i]) for i in range(len(dims)))


class EngineRunner(Runner):
    """A ``Runner`` over a serialized engine, on its own CUDA stream with cuda-python buffers. Its
    batch limits are the engine's: the input's fixed batch, else profile 0's min and max
    (``batch_range``); a batch outside them is refused before TensorRT sees it."""

    def __init__(self, engine_path: Path, library: Library = TENSORRT) -> None:
        if TYPE_CHECKING:
            import tensorrt as trt
        else:
            trt = import_tensorrt(library)

        self.name = engine_path.name
        self._runtime = trt.Runtime(trt_logger(library))  # must outlive the engine
        engine = self._runtime.deserialize_cuda_engine(engine_path.read_bytes())
        if engine is None:
            raise EngineLoadError(
                f"{library.name} could not load {engine_path.name} (built for another GPU or TensorRT version?)"
            )
        context = engine.create_execution_context()
        if context is None:
            raise EngineLoadError(f"TensorRT could not create an execution context for {engine_path.name}")
        self._engine, self._context = engine, context
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self.output_name = next(n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT)
        self.input_dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(INPUT_NAME)))
        self.output_dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(self.output_name)))
        input_shape = _shape(engine.get_tensor_shape(INPUT_NAME))
        dynamic = not input_shape or input_shape[0] < 0  # a static input has no profile shapes to ask for
        profile = [_shape(d) for d in engine.get_tensor_profile_shape(INPUT_NAME, 0)] if dynamic else []
        low, high = profile_batch_range(input_shape, profile)
        super().__init__("tensorrt", engine_path, low, high)
        self.stream = Stream()
        self._buffers: dict[str, DeviceBuffer] = {}

    def batch_problem(self, n: int) -> str | None:
        """The limits' own words, and that they are the optimisation profile's."""
        problem = super().batch_problem(n)
        low, high = self.batch_range
        return problem and f"{problem}: batch {n} is outside {self.name}'s optimisation profile ({low}..{high})"

    def _buffer(self, name: str, nbytes: int) -> DeviceBuffer:
        """A device buffer of at least ``nbytes`` for ``name``, reused across calls."""

        buffer = self._buffers.get(name)
        if buffer is None or buffer.nbytes < nbytes:
            if buffer is not None:
                buffer.free()
            buffer = self._buffers[name] = DeviceBuffer(nbytes)
        if not self._context.set_tensor_address(name, buffer.ptr):
            raise UsageError(f"TensorRT refused the address of {name!r} for {self.name}")
        return buffer

    def infer_impl(self, batch: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(batch, dtype=self.input_dtype)
        if not self._context.set_input_shape(INPUT_NAME, x.shape):
            raise UsageError(f"TensorRT refused input shape {list(x.shape)} for {self.name}")
        shape = _shape(self._context.get_tensor_shape(self.output_name))
        if any(d < 0 for d in shape):
            raise UsageError(f"{self.name}: output shape {list(shape)} is not known for input {list(x.shape)}")
        out = np.empty(shape, dtype=self.output_dtype)
        device_in = self._buffer(INPUT_NAME, x.nbytes)
        device_out = self._buffer(self.output_name, out.nbytes)
        self.stream.to_device(device_in, x)
        if not self._context.execute_async_v3(self.stream.handle):
            raise UsageError(f"TensorRT failed to run {self.name}")
        self.stream.to_host(out, device_out)
        self.stream.synchronize()
        return out


def engine_runner(engine_path: Path, library: Library = TENSORRT) -> EngineRunner:
    """A runner over ``engine_path`` built by ``library`` (see ``EngineRunner``)."""
    return EngineRunner(engine_path, library)
