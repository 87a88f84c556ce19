"""Our engine builder (network flags, ONNX parser, optimisation profile, builder config, memory
pool, timing cache, serialization, the ``.json`` sidecar), for TensorRT and TensorRT-RTX alike:
what differs between them is read from their ``Library`` record, never from a version number.

Our own builder, not Polygraphy's (``engine_from_network``/``CreateConfig``): what we build is a
dozen calls, each one read against TensorRT's sources for the versions we support (10.3 on
JetPack 6 to 11.x, and TensorRT-RTX 1.7); every return value is checked.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from exporter.bundle.manifest import INPUT_NAME
from exporter.core.errors import EnvironmentMissing, UsageError
from exporter.core.files import sha256_file, write_atomic_bytes
from exporter.tensorrt.library import TENSORRT, Library, compute_target
from exporter.tensorrt.profile import Profile
from exporter.tensorrt.sidecar import EngineInfo
from exporter.tensorrt.versions import (
    HARDWARE_LEVELS,
    REDUCED,
    EngineShapes,
    hardware_level_name,
    import_tensorrt,
    profile_library,
    trt_logger,
    typing_mode,
    version_pair,
    weak_precision_flags,
)

if TYPE_CHECKING:  # pyright checks the calls below against tensorrt-stubs (CI)
    import tensorrt as trt

log = logging.getLogger(__name__)
RTX_GPU = "none (built on the CPU)"  # a TensorRT-RTX sidecar's gpu: it targets a compute capability


def parser_errors(parser: trt.OnnxParser) -> str:
    """The ONNX parser's errors, one per failing node."""
    errors = []
    for i in range(parser.num_errors):
        error = parser.get_error(i)
        errors.append(f"node {error.node()} ({error.node_name()} {error.node_operator()}): {error.desc()}")
    return "; ".join(errors) or "unknown parser error"


def _configure(
    builder: trt.Builder,
    network: trt.INetworkDefinition,
    profile: Profile,
    shapes: EngineShapes,
    version: tuple[int, int],
    library: Library = TENSORRT,
) -> trt.IBuilderConfig:
    if TYPE_CHECKING:
        import tensorrt as trt
    else:
        trt = import_tensorrt(library)

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, profile.workspace_bytes)
    config.builder_optimization_level = profile.builder_optimization_level
    if not shapes.static:  # a static input takes no optimisation profile (trtexec gets no shapes either)
        opt_profile = builder.create_optimization_profile()
        opt_profile.set_shape(
            INPUT_NAME, trt.Dims(list(shapes.min)), trt.Dims(list(shapes.opt)), trt.Dims(list(shapes.max))
        )
        config.add_optimization_profile(opt_profile)
    if profile.precision == "fp32":
        config.clear_flag(trt.BuilderFlag.TF32)
    if library.weak_flags(version) and profile.precision in REDUCED:
        for precision in weak_precision_flags(profile.precision):
            config.set_flag(getattr(trt.BuilderFlag, precision.upper()))
        _keep_layernorm_fp32(network, config, library)
    if hardware_level_name(profile.hardware_compatibility, version, library):  # raises where it lacks it
        member = HARDWARE_LEVELS[profile.hardware_compatibility][1]
        config.hardware_compatibility_level = getattr(trt.HardwareCompatibilityLevel, member)
    if profile.dla_core >= 0:
        if not library.dla:  # TensorRT-RTX takes the settings and ignores them: refuse here
            raise EnvironmentMissing(f"{library.name} has no DLA: profile {profile.name!r} needs TensorRT")
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = profile.dla_core
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    if library.compute_targets and profile.compute_capability:
        _target(config, library, profile.compute_capability)
    return config


def _target(config: Any, library: Library, cc: str) -> None:
    """TensorRT-RTX: build for compute capability ``cc`` (none set: its portable default)."""
    module = import_tensorrt(library)
    config.num_compute_capabilities = 1
    if not config.set_compute_capability(getattr(module.ComputeCapability, compute_target(library, cc)), 0):
        raise EnvironmentMissing(f"{library.name} refused compute capability {cc}")


def _keep_layernorm_fp32(network: trt.INetworkDefinition, config: trt.IBuilderConfig, library: Library) -> None:
    """Weak typing only: pin normalisation layers to FP32 (ViT FP16 overflow in LayerNorm)."""
    if TYPE_CHECKING:
        import tensorrt as trt
    else:
        trt = import_tensorrt(library)

    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if layer.type == trt.LayerType.NORMALIZATION:
            layer.precision = trt.float32
            layer.set_output_type(0, trt.float32)
    config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)


def _attach_timing_cache(config: trt.IBuilderConfig, data: bytes, source: str) -> trt.ITimingCache:
    """A timing cache from ``data`` (empty: a fresh one) set on ``config``; a saved cache TensorRT
    refuses (another GPU or TensorRT, or damaged) is replaced by a fresh one, with a warning."""
    cache = config.create_timing_cache(data)
    if cache is not None and config.set_timing_cache(cache, ignore_mismatch=False):
        return cache
    if not data:
        raise EnvironmentMissing("TensorRT refused a fresh timing cache")
    log.warning("TensorRT refused the timing cache %s (another GPU or TensorRT version?): starting a fresh one", source)
    return _attach_timing_cache(config, b"", source)


def network_flags(version: tuple[int, int], library: Library = TENSORRT) -> int:
    """``create_network`` flags: STRONGLY_TYPED from TensorRT 10.12 until 11, where it is the
    default and the flag a deprecated no-op (TensorRT-RTX: always strongly typed, never passed)."""
    if not library.passes_strong_flag(version):
        return 0
    if TYPE_CHECKING:
        import tensorrt as trt
    else:
        trt = import_tensorrt(library)

    return 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)


def build_errors(library: Library) -> str:
    """What the library's logger recorded at ERROR of the last build (TensorRT-RTX's builder
    reports its errors only there); '' where nothing was recorded."""
    messages = getattr(trt_logger(library), "messages", [])
    return "; ".join(m for severity, m in messages if severity in ("ERROR", "INTERNAL_ERROR"))[:2000]


def build_engine(
    onnx_path: Path,
    engine_path: Path,
    profile: Profile,
    shapes: EngineShapes,
    cache_in: Path | None = None,
    cache_out: Path | None = None,
) -> EngineInfo:
    """Parse ``onnx_path``, build with ``profile`` (with the library it names) and write the engine
    and its sidecar atomically. With ``profile.timing_cache`` (TensorRT only), the cache is read
    from ``cache_in`` (when there) and the updated one written to ``cache_out``."""
    library = profile_library(profile)
    if TYPE_CHECKING:
        import tensorrt as trt
    else:
        trt = import_tensorrt(library)

    start = time.perf_counter()
    version = version_pair(trt.__version__)
    logger = trt_logger(library)
    getattr(logger, "messages", []).clear()
    builder = trt.Builder(logger)
    network = builder.create_network(network_flags(version, library))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        raise UsageError(f"{library.name} cannot parse {onnx_path.name}: {parser_errors(parser)}")
    config = _configure(builder, network, profile, shapes, version, library)
    timing = profile.timing_cache and library.timing_cache
    if timing:
        data = cache_in.read_bytes() if cache_in is not None and cache_in.is_file() else b""
        _attach_timing_cache(config, data, str(cache_in))
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        why = build_errors(library)
        raise UsageError(
            f"{library.name} could not build an engine from {onnx_path.name} with profile {profile.name!r}"
            + (f": {why}" if why else "")
        )
    write_atomic_bytes(engine_path, bytes(serialized))
    if timing and cache_out is not None:
        write_atomic_bytes(cache_out, bytes(config.get_timing_cache().serialize()))
    if library.needs_gpu_to_build:
        from exporter.tensorrt.gpu import gpu_identity

        gpu = gpu_identity()
        gpu_name, cc = gpu.name, gpu.compute_capability
    else:  # built for the profile's target (none named: the library's portable default)
        gpu_name, cc = RTX_GPU, profile.compute_capability or "portable"
    info = EngineInfo(
        engine=engine_path.name,
        engine_sha256=sha256_file(engine_path),
        onnx=onnx_path.name,
        onnx_sha256=sha256_file(onnx_path),
        profile=profile.name,
        precision=profile.precision,
        typing=typing_mode(trt.__version__, library),
        tensorrt=trt.__version__,
        gpu=gpu_name,
        compute_capability=cc,
        hardware_compatibility=profile.hardware_compatibility,
        shapes={"min": list(shapes.min), "opt": list(shapes.opt), "max": list(shapes.max)},
        build_seconds=round(time.perf_counter() - start, 2),
        timing_cache=cache_out.name if cache_out is not None and timing else None,
        library=library.name,
    )
    info.write(engine_path.with_name(engine_path.name + ".json"))
    return info
