"""TensorRT engine stage: builder, runner, version switch, sidecar and trtexec commands.

``import tensorrt`` happens only inside the functions that need it. The ``tensorrt-stubs``
package installs a ``tensorrt/`` folder of ``.pyi`` files, so a bare import can succeed as an
empty namespace package: a real TensorRT is recognised by ``tensorrt.Builder``.

Precision by TensorRT version (DESIGN.md): from 10.12 weak typing (BuilderFlag.FP16/INT8) is
deprecated and TensorRT 11 removes it, so there the network is strongly typed and the ONNX must
already carry the precision; older TensorRT (JetPack 6 ships 10.3) uses the builder flags with
LayerNorm layers constrained to FP32.
"""

from __future__ import annotations

import json
import shlex
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from exporter.errors import EnvironmentMissing, UsageError
from exporter.manifest import sha256_file, write_atomic_bytes
from exporter.names import printable
from exporter.profile import Profile, parse_version

STRONG_TYPING_FROM = (10, 12)  # weak typing deprecated from here, removed in 11
WEAK_TYPING_UNTIL = (11, 0)
INPUT_NAME = "pixel_values"
REDUCED = ("fp16", "bf16", "int8", "fp8")
# Need an explicitly quantised (Q/DQ) ONNX under either typing: the INT8 flag on a float ONNX has
# no calibration (trtexec --int8 then uses placeholder ranges, for timing only).
QUANTISED = ("int8", "fp8")

if TYPE_CHECKING:  # pyright checks the calls below against tensorrt-stubs (CI); mypy skips them
    import tensorrt as trt


def import_tensorrt() -> Any:
    """The real ``tensorrt`` module, or ``EnvironmentMissing`` saying why not."""
    try:
        import tensorrt
    except ImportError as exc:
        raise EnvironmentMissing("TensorRT is not installed (pip install tensorrt, or JetPack on a Jetson)") from exc
    if not hasattr(tensorrt, "Builder"):
        raise EnvironmentMissing("the 'tensorrt' package here holds only type stubs, not TensorRT")
    return tensorrt


def tensorrt_problem() -> str | None:
    """Why engines cannot be built here (no TensorRT, no GPU), or ``None`` when they can."""
    try:
        import_tensorrt()
    except EnvironmentMissing as exc:
        return str(exc)
    try:
        import torch

        if not torch.cuda.is_available():
            return "no CUDA GPU is visible"
    except ImportError:
        return "PyTorch is needed to run engines for validation"
    return None


def typing_mode(trt_version: str) -> str:
    """``"strong"`` for TensorRT >= 10.12 (and 11+), ``"weak"`` (builder precision flags) before."""
    return "strong" if parse_version(trt_version)[:2] >= STRONG_TYPING_FROM else "weak"


def needs_precision_onnx(mode: str, precision: str) -> bool:
    """Whether building ``precision`` under ``mode`` typing needs an ONNX of that precision:
    any reduced precision when strongly typed; int8/fp8 (Q/DQ) under weak typing too."""
    return precision in QUANTISED or (mode == "strong" and precision in REDUCED)


def check_precision(trt_version: str, precision: str, onnx_precision: str) -> None:
    """Refuse combinations this TensorRT cannot build right: a strongly typed network takes its
    precision from the ONNX, so fp16/bf16/int8/fp8 there need an ONNX that carries it; int8 and
    fp8 need their Q/DQ ONNX under weak typing too (no calibration otherwise)."""
    if onnx_precision == precision or not needs_precision_onnx(typing_mode(trt_version), precision):
        return
    if precision in QUANTISED:
        raise UsageError(
            f"precision {precision} needs the bundle's {precision} (Q/DQ) ONNX, but it has {onnx_precision} ONNX "
            f"only: build it with --precision {precision} --calib-dir DIR (TensorRT's {precision} flag on a float "
            "ONNX has no calibration)"
        )
    raise UsageError(
        f"TensorRT {trt_version} builds strongly typed networks: precision {precision} needs an "
        f"{precision} ONNX in the bundle, but it has {onnx_precision} ONNX only"
    )


@dataclass(frozen=True)
class EngineShapes:
    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]


def engine_shapes(profile: Profile, img_size: tuple[int, int], static_batch: int | None = None) -> EngineShapes:
    """The optimisation profile's shapes; a static-batch ONNX pins all three to its batch."""
    b = profile.batch
    batches = (static_batch,) * 3 if static_batch else (b.min, b.opt, b.max)
    return EngineShapes(*((n, 3, *img_size) for n in batches))


def precision_ready(profile: Profile, variant: dict[str, Any]) -> bool:
    """Whether a strongly typed build of ``variant`` yields the profile's precision."""
    return profile.precision not in REDUCED or variant.get("onnx_precision", "fp32") == profile.precision


def _dims(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape))


def trtexec_command(
    onnx: str,
    engine: str,
    profile: Profile,
    shapes: EngineShapes,
    mode: str,
    layernorm_names: tuple[str, ...] = (),
    timing_cache: str | None = None,
) -> list[str]:
    """The trtexec command that builds what ``build_engine`` builds, for ``mode`` strong or weak."""
    cmd = [
        "trtexec",
        f"--onnx={onnx}",
        f"--saveEngine={engine}",
        f"--minShapes={INPUT_NAME}:{_dims(shapes.min)}",
        f"--optShapes={INPUT_NAME}:{_dims(shapes.opt)}",
        f"--maxShapes={INPUT_NAME}:{_dims(shapes.max)}",
        f"--memPoolSize=workspace:{profile.workspace_mib}M",
        f"--builderOptimizationLevel={profile.builder_optimization_level}",
    ]
    if mode == "strong":
        cmd.append("--stronglyTyped")
    elif profile.precision in REDUCED:
        cmd.append(f"--{profile.precision}")
        if layernorm_names:  # the classic ViT FP16 overflow: keep LayerNorm in FP32
            cmd += [
                "--layerPrecisions=" + ",".join(f"{n}:fp32" for n in layernorm_names),
                "--precisionConstraints=obey",
            ]
    if profile.precision == "fp32":
        cmd.append("--noTF32")
    if profile.hardware_compatibility != "none":
        cmd.append(
            "--hardwareCompatibilityLevel="
            + {"ampere_plus": "ampere+"}.get(profile.hardware_compatibility, profile.hardware_compatibility)
        )
    if profile.dla_core >= 0:
        cmd += [f"--useDLACore={profile.dla_core}", "--allowGPUFallback"]
    if profile.timing_cache and timing_cache:
        cmd.append(f"--timingCacheFile={timing_cache}")
    return cmd


def build_script(profile: Profile, variants: list[dict[str, Any]]) -> str:
    """``engines/build_<profile>.sh``: builds every variant with trtexec on a device that has only
    trtexec (a Jetson), picking strong or weak typing from the TensorRT version it finds."""
    folder = f"engines/{profile.name}"
    lines = [
        "#!/usr/bin/env bash",
        comment(f"Build TensorRT engines for profile {profile.name!r} with trtexec, on the target device."),
        *([comment(f"Profile: {profile.description}")] if profile.description else []),
        "# Written by flexiexport; run from anywhere: paths are relative to the bundle.",
        "set -euo pipefail",
        'cd "$(dirname "$0")/.."',
        'TRTEXEC="${TRTEXEC:-$(command -v trtexec || echo /usr/src/tensorrt/bin/trtexec)}"',
        'version=$("$TRTEXEC" --help 2>&1 | grep -o "TensorRT v[0-9]*" | head -n 1 | tr -dc 0-9)',
        'echo "TensorRT ${version:-unknown} (trtexec at $TRTEXEC)"',
        f"mkdir -p {shlex.quote(folder)}",
        f'if [ "${{version:-0}}" -ge {STRONG_TYPING_FROM[0] * 10000 + STRONG_TYPING_FROM[1] * 100} ]; then',
    ]
    for mode in ("strong", "weak"):
        strict = needs_precision_onnx(mode, profile.precision)
        missing = [v["label"] for v in variants if strict and not precision_ready(profile, v)]
        if missing:
            why = (
                "TensorRT >= 10.12 builds strongly typed networks"
                if profile.precision not in QUANTISED
                else "TensorRT has no calibration for it here"
            )
            message = (
                f"{why}: precision {profile.precision} needs an {profile.precision} ONNX, and this bundle has "
                f"fp32 ONNX only ({', '.join(missing)})"
            )
            lines += [f"  echo {shlex.quote(printable(message))} >&2", "  exit 4"]
        else:
            for v in variants:
                cmd = trtexec_command(
                    v["onnx"],
                    v["engine"],
                    profile,
                    v["shapes"],
                    mode,
                    v.get("layernorms", ()),
                    f"{folder}/timing.cache",
                )
                lines.append('  "$TRTEXEC" ' + shlex.join(cmd[1:]))
        lines.append("else" if mode == "strong" else "fi")
    lines.append(f"echo {shlex.quote(f'engines written to {folder}/')}")
    return "\n".join(lines) + "\n"


def comment(text: str) -> str:
    """A shell comment line that stays one line: control characters go, line breaks become spaces."""
    return "# " + " ".join(printable(text).split())


@dataclass(frozen=True)
class EngineInfo:
    """The sidecar ``model_pN.engine.json``: never metadata inside the engine itself."""

    engine: str
    engine_sha256: str
    onnx: str
    onnx_sha256: str
    profile: str
    precision: str
    typing: str
    tensorrt: str
    gpu: str
    compute_capability: str
    hardware_compatibility: str
    shapes: dict[str, list[int]]
    build_seconds: float
    timing_cache: str | None

    def write(self, path: Path) -> None:
        write_atomic_bytes(path, (json.dumps(asdict(self), indent=2) + "\n").encode())


def parser_errors(parser: trt.OnnxParser) -> str:
    """The ONNX parser's errors, one per failing node."""
    errors = []
    for i in range(parser.num_errors):
        error = parser.get_error(i)
        errors.append(f"node {error.node()} ({error.node_name()} {error.node_operator()}): {error.desc()}")
    return "; ".join(errors) or "unknown parser error"


def _configure(
    builder: trt.Builder, network: trt.INetworkDefinition, profile: Profile, shapes: EngineShapes, mode: str
) -> trt.IBuilderConfig:
    import tensorrt as trt

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, profile.workspace_bytes)
    config.builder_optimization_level = profile.builder_optimization_level
    opt_profile = builder.create_optimization_profile()
    opt_profile.set_shape(
        INPUT_NAME, trt.Dims(list(shapes.min)), trt.Dims(list(shapes.opt)), trt.Dims(list(shapes.max))
    )
    config.add_optimization_profile(opt_profile)
    if profile.precision == "fp32":
        config.clear_flag(trt.BuilderFlag.TF32)
    if mode == "weak" and profile.precision in REDUCED:
        config.set_flag(getattr(trt.BuilderFlag, profile.precision.upper()))
        _keep_layernorm_fp32(network, config)
    if profile.hardware_compatibility == "ampere_plus":
        config.hardware_compatibility_level = trt.HardwareCompatibilityLevel.AMPERE_PLUS
    elif profile.hardware_compatibility == "same_compute_capability":
        config.hardware_compatibility_level = trt.HardwareCompatibilityLevel.SAME_COMPUTE_CAPABILITY
    if profile.dla_core >= 0:
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = profile.dla_core
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    return config


def _keep_layernorm_fp32(network: trt.INetworkDefinition, config: trt.IBuilderConfig) -> None:
    """Weak typing only: pin normalisation layers to FP32 (ViT FP16 overflow in LayerNorm)."""
    import tensorrt as trt

    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if layer.type == trt.LayerType.NORMALIZATION:
            layer.precision = trt.float32
            layer.set_output_type(0, trt.float32)
    config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)


def _load_timing_cache(config: trt.IBuilderConfig, cache_path: Path | None) -> trt.ITimingCache:
    data = cache_path.read_bytes() if cache_path is not None and cache_path.is_file() else b""
    cache = config.create_timing_cache(data)
    config.set_timing_cache(cache, ignore_mismatch=False)
    return cache


def build_engine(
    onnx_path: Path, engine_path: Path, profile: Profile, shapes: EngineShapes, cache_path: Path | None = None
) -> EngineInfo:
    """Parse ``onnx_path``, build with ``profile`` and write the engine and its sidecar atomically."""
    import_tensorrt()
    import tensorrt as trt

    start = time.perf_counter()
    mode = typing_mode(trt.__version__)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if mode == "strong" else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        raise UsageError(f"TensorRT cannot parse {onnx_path.name}: {parser_errors(parser)}")
    config = _configure(builder, network, profile, shapes, mode)
    if profile.timing_cache:
        _load_timing_cache(config, cache_path)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise UsageError(f"TensorRT could not build an engine from {onnx_path.name} with profile {profile.name!r}")
    write_atomic_bytes(engine_path, bytes(serialized))
    if profile.timing_cache and cache_path is not None:
        write_atomic_bytes(cache_path, bytes(config.get_timing_cache().serialize()))
    gpu, cc = gpu_identity()
    info = EngineInfo(
        engine=engine_path.name,
        engine_sha256=sha256_file(engine_path),
        onnx=onnx_path.name,
        onnx_sha256=sha256_file(onnx_path),
        profile=profile.name,
        precision=profile.precision,
        typing=mode,
        tensorrt=trt.__version__,
        gpu=gpu,
        compute_capability=cc,
        hardware_compatibility=profile.hardware_compatibility,
        shapes={"min": list(shapes.min), "opt": list(shapes.opt), "max": list(shapes.max)},
        build_seconds=round(time.perf_counter() - start, 2),
        timing_cache=cache_path.name if cache_path is not None and profile.timing_cache else None,
    )
    info.write(engine_path.with_name(engine_path.name + ".json"))
    return info


def gpu_identity() -> tuple[str, str]:
    """The GPU's name and compute capability (``"8.7"``), via PyTorch."""
    import torch

    major, minor = torch.cuda.get_device_capability(0)
    return torch.cuda.get_device_name(0), f"{major}.{minor}"


def timing_cache_name(gpu_cc: str, trt_version: str) -> str:
    """Timing caches are only valid for one GPU and TensorRT version: the name says which."""
    return f"timing_sm{gpu_cc.replace('.', '')}_trt{trt_version}.cache"


def engine_runner(engine_path: Path) -> Any:
    """A runner (float32 NCHW numpy batch → logits) over a serialized engine, with torch CUDA buffers."""
    import numpy as np
    import torch

    import_tensorrt()
    import tensorrt as trt

    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    engine = runtime.deserialize_cuda_engine(engine_path.read_bytes())
    if engine is None:
        raise UsageError(f"TensorRT could not load {engine_path.name} (built for another GPU or TensorRT version?)")
    context = engine.create_execution_context()
    output_name = next(
        engine.get_tensor_name(i)
        for i in range(engine.num_io_tensors)
        if engine.get_tensor_mode(engine.get_tensor_name(i)) == trt.TensorIOMode.OUTPUT
    )

    def run(batch: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(batch)).cuda()
        context.set_input_shape(INPUT_NAME, trt.Dims(list(x.shape)))
        shape = context.get_tensor_shape(output_name)
        out = torch.empty([shape[i] for i in range(len(shape))], dtype=torch.float32, device="cuda")
        context.set_tensor_address(INPUT_NAME, x.data_ptr())
        context.set_tensor_address(output_name, out.data_ptr())
        stream = torch.cuda.current_stream()
        if not context.execute_async_v3(stream.cuda_stream):
            raise UsageError(f"TensorRT failed to run {engine_path.name}")
        stream.synchronize()
        return out.cpu().numpy()

    return run
