"""Stand-ins for ``tensorrt`` and cuda-python's ``cuda.bindings.runtime``, like the stand-in
trtexec of test_trt.py: no GPU here, so the engine stage's decisions are tested against fakes
that behave the way TensorRT's sources say the real calls do (a ``set_input_shape`` outside the
profile returns False, ``HardwareCompatibilityLevel.SAME_COMPUTE_CAPABILITY`` exists from 10.9,
``create_timing_cache`` of foreign bytes is refused, ...) and record what they were asked.

"Device memory" is host memory from ctypes, so copies and the engine's arithmetic are real.
The fake engine's logits are the input's per-channel means, repeated to ``classes``: not the model's.
"""

from __future__ import annotations

import ctypes
import enum
import importlib.machinery
import json
import sys
import types
from typing import Any

import numpy as np

CALLS: list[tuple[Any, ...]] = []


class _Stream:
    def __init__(self, handle: int) -> None:
        self.handle = handle

    def __int__(self) -> int:
        return self.handle


def make_cudart(devices: int = 1, name: bytes = b"Fake Orin", cc: tuple[int, int] = (8, 7)) -> types.ModuleType:
    rt = types.ModuleType("cuda.bindings.runtime")
    rt.__spec__ = importlib.machinery.ModuleSpec(rt.__name__, None)  # importlib.util.find_spec asks for it

    class cudaError_t(enum.IntEnum):
        cudaSuccess = 0
        cudaErrorInvalidValue = 1
        cudaErrorNoDevice = 100

    class cudaMemcpyKind(enum.IntEnum):
        cudaMemcpyHostToDevice = 1
        cudaMemcpyDeviceToHost = 2

    memory: dict[int, Any] = {}
    ok = cudaError_t.cudaSuccess

    def count() -> tuple[Any, ...]:
        return (ok, devices) if devices >= 0 else (cudaError_t.cudaErrorNoDevice, None)

    def props(device: int) -> tuple[Any, ...]:
        padded = name + b"\0" * (256 - len(name))
        return ok, types.SimpleNamespace(name=padded, major=cc[0], minor=cc[1])

    def malloc(nbytes: int) -> tuple[Any, ...]:
        buffer = ctypes.create_string_buffer(nbytes)
        memory[ctypes.addressof(buffer)] = buffer
        CALLS.append(("cudaMalloc", nbytes))
        return ok, ctypes.addressof(buffer)

    def free(ptr: int) -> tuple[Any, ...]:
        CALLS.append(("cudaFree", ptr))
        return (ok,) if memory.pop(ptr, None) is not None else (cudaError_t.cudaErrorInvalidValue,)

    def memcpy(dst: int, src: int, nbytes: int, kind: Any, stream: Any) -> tuple[Any, ...]:
        CALLS.append(("cudaMemcpyAsync", kind, int(stream)))
        ctypes.memmove(dst, src, nbytes)
        return (ok,)

    rt.cudaError_t = cudaError_t  # type: ignore[attr-defined]
    rt.cudaMemcpyKind = cudaMemcpyKind  # type: ignore[attr-defined]
    rt.cudaGetDeviceCount = count  # type: ignore[attr-defined]
    rt.cudaGetDeviceProperties = props  # type: ignore[attr-defined]
    rt.cudaMalloc = malloc  # type: ignore[attr-defined]
    rt.cudaFree = free  # type: ignore[attr-defined]
    rt.cudaMemcpyAsync = memcpy  # type: ignore[attr-defined]
    rt.cudaStreamCreate = lambda: (CALLS.append(("cudaStreamCreate",)), (ok, _Stream(0x5EED)))[1]  # type: ignore[attr-defined]
    rt.cudaStreamSynchronize = lambda s: (CALLS.append(("cudaStreamSynchronize", int(s))), (ok,))[1]  # type: ignore[attr-defined]
    rt.cudaStreamDestroy = lambda s: (ok,)  # type: ignore[attr-defined]
    rt.cudaGetErrorName = lambda e: (ok, e.name.encode())  # type: ignore[attr-defined]
    rt.cudaGetErrorString = lambda e: (ok, b"a fake CUDA error")  # type: ignore[attr-defined]
    rt.memory = memory  # type: ignore[attr-defined]
    return rt


def make_tensorrt(version: str = "10.3.0.30", output_dtype: str = "float32", classes: int = 10) -> types.ModuleType:
    trt = types.ModuleType("tensorrt")
    # torch._dynamo asks importlib.util.find_spec("tensorrt") when timm is first imported
    trt.__spec__ = importlib.machinery.ModuleSpec(trt.__name__, None)
    trt.__version__ = version
    pair = tuple(int(p) for p in version.split(".")[:2])
    ns = types.SimpleNamespace
    trt.float32, trt.float16 = "float32", "float16"  # type: ignore[attr-defined]
    trt.nptype = lambda dt: {"float32": np.float32, "float16": np.float16}[dt]  # type: ignore[attr-defined]
    trt.MemoryPoolType = ns(WORKSPACE="WORKSPACE")  # type: ignore[attr-defined]
    flags = ["TF32", "OBEY_PRECISION_CONSTRAINTS", "GPU_FALLBACK"]
    flags += ["FP16", "INT8", "BF16", "FP8"] if pair < (11, 0) else []  # 11 removed weak typing
    trt.BuilderFlag = ns(**{f: f for f in flags})  # type: ignore[attr-defined]
    levels = {"NONE": 0, "AMPERE_PLUS": 1, **({"SAME_COMPUTE_CAPABILITY": 2} if pair >= (10, 9) else {})}
    trt.HardwareCompatibilityLevel = ns(**levels)  # type: ignore[attr-defined]
    trt.NetworkDefinitionCreationFlag = ns(STRONGLY_TYPED=5)  # type: ignore[attr-defined]
    trt.LayerType = ns(NORMALIZATION="NORMALIZATION", MATRIX_MULTIPLY="MATRIX_MULTIPLY")  # type: ignore[attr-defined]
    trt.DeviceType = ns(GPU="GPU", DLA="DLA")  # type: ignore[attr-defined]
    trt.TensorIOMode = ns(INPUT="INPUT", OUTPUT="OUTPUT")  # type: ignore[attr-defined]
    trt.Dims = list  # type: ignore[attr-defined]

    class Logger:
        WARNING = 2

        def __init__(self, level: int) -> None:
            CALLS.append(("Logger", level))

    class Layer:
        def __init__(self, kind: str) -> None:
            self.type, self.precision, self.outputs = kind, None, {}

        def set_output_type(self, index: int, dtype: str) -> None:
            self.outputs[index] = dtype

    class Network:
        def __init__(self, flags: int) -> None:
            self.flags = flags
            self.layers = [Layer("MATRIX_MULTIPLY"), Layer("NORMALIZATION")]
            self.num_layers = len(self.layers)

        def get_layer(self, i: int) -> Layer:
            return self.layers[i]

    class Parser:
        num_errors = 0

        def __init__(self, network: Network, logger: Logger) -> None:
            pass

        def parse_from_file(self, path: str) -> bool:
            return True

    class Cache:
        def __init__(self, data: bytes) -> None:
            self.data = data

        def serialize(self) -> bytes:
            return b"timing-cache:" + version.encode()

    class OptProfile:
        def set_shape(self, name: str, lo: list[int], opt: list[int], hi: list[int]) -> None:
            self.shapes = (name, lo, opt, hi)

    class Config:
        def __init__(self) -> None:
            self.flags: set[str] = set()
            self.profiles: list[OptProfile] = []
            self.cache: Cache | None = None
            self.hardware_compatibility_level = 0

        def set_memory_pool_limit(self, pool: str, size: int) -> None:
            self.pool = size

        def add_optimization_profile(self, profile: OptProfile) -> int:
            self.profiles.append(profile)
            return len(self.profiles) - 1

        def set_flag(self, flag: str) -> None:
            self.flags.add(flag)

        def clear_flag(self, flag: str) -> None:
            self.flags.discard(flag)

        def create_timing_cache(self, data: bytes) -> Cache | None:
            return None if data == b"damaged" else Cache(bytes(data))

        def set_timing_cache(self, cache: Cache, ignore_mismatch: bool) -> bool:
            # TensorRT refuses a cache made on another device unless ignore_mismatch
            if cache.data and cache.data != b"timing-cache:" + version.encode() and not ignore_mismatch:
                return False
            self.cache = cache
            return True

        def get_timing_cache(self) -> Cache:
            assert self.cache is not None
            return self.cache

    class Builder:
        def __init__(self, logger: Logger) -> None:
            self.logger = logger

        def create_network(self, flags: int) -> Network:
            return Network(flags)

        def create_builder_config(self) -> Config:
            return Config()

        def create_optimization_profile(self) -> OptProfile:
            return OptProfile()

        def build_serialized_network(self, network: Network, config: Config) -> bytes:
            CALLS.append(("build", network.flags, sorted(config.flags), config.hardware_compatibility_level))
            CALLS.append(("layers", [(la.type, la.precision, la.outputs) for la in network.layers]))
            shapes = config.profiles[0].shapes[1:] if config.profiles else None
            plan = {"fake": version, "shapes": shapes, "static": [2, 3, 64, 64], "dtype": output_dtype}
            return json.dumps(plan).encode()

    class Context:
        def __init__(self, engine: Engine) -> None:
            self.engine, self.shape, self.addresses = engine, None, {}

        def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
            lo, hi = self.engine.batches
            if not lo <= shape[0] <= hi:
                return False  # what TensorRT does outside the profile
            self.shape = tuple(shape)
            return True

        def get_tensor_shape(self, name: str) -> list[int]:
            return [self.shape[0] if self.shape else -1, classes]

        def set_tensor_address(self, name: str, ptr: int) -> bool:
            self.addresses[name] = ptr
            return True

        def execute_async_v3(self, stream: int) -> bool:
            CALLS.append(("execute_async_v3", stream))
            assert self.shape is not None
            n = int(np.prod(self.shape))
            x = np.ctypeslib.as_array((ctypes.c_float * n).from_address(self.addresses["pixel_values"]))
            means = x.reshape(self.shape).mean(axis=(2, 3))
            logits = np.ascontiguousarray(np.resize(means, (self.shape[0], classes)).astype(self.engine.dtype))
            ctypes.memmove(self.addresses["logits"], logits.ctypes.data, logits.nbytes)
            return True

    class Engine:
        def __init__(self, plan: dict[str, Any]) -> None:
            self.plan, self.num_io_tensors = plan, 2
            self.dtype = np.dtype(plan["dtype"])
            shapes = plan["shapes"]
            self.batches = (shapes[0][0], shapes[2][0]) if shapes else (plan["static"][0],) * 2

        def get_tensor_name(self, i: int) -> str:
            return ("pixel_values", "logits")[i]

        def get_tensor_mode(self, name: str) -> str:
            return "INPUT" if name == "pixel_values" else "OUTPUT"

        def get_tensor_dtype(self, name: str) -> str:
            return "float32" if name == "pixel_values" else self.plan["dtype"]

        def get_tensor_shape(self, name: str) -> list[int]:
            return [-1, 3, 64, 64] if self.plan["shapes"] else list(self.plan["static"])

        def get_tensor_profile_shape(self, name: str, index: int) -> list[list[int]]:
            return [list(s) for s in self.plan["shapes"]] if self.plan["shapes"] else [list(self.plan["static"])] * 3

        def create_execution_context(self) -> Context:
            return Context(self)

    class Runtime:
        def __init__(self, logger: Logger) -> None:
            pass

        def deserialize_cuda_engine(self, data: bytes) -> Engine | None:
            try:
                plan = json.loads(data)
            except ValueError:
                return None
            return Engine(plan) if plan.get("fake") == version else None  # another version: refused

    for cls in (Logger, Builder, Runtime):
        setattr(trt, cls.__name__, cls)
    trt.OnnxParser = Parser  # type: ignore[attr-defined]
    trt.ILogger = Logger  # type: ignore[attr-defined]
    return trt


def install(trt_version: str = "10.3.0.30", output_dtype: str = "float32", **gpu: Any) -> None:
    """Put both stand-ins in ``sys.modules`` (a subprocess test calls this before the CLI)."""
    sys.modules["tensorrt"] = make_tensorrt(trt_version, output_dtype)
    sys.modules["cuda.bindings.runtime"] = make_cudart(**gpu)
