"""Version switches of the engine stage: which library builds a profile, its typing mode, the
precision checks, hardware-compatibility names, the optimisation-profile shapes and the problems
that keep engines from being built or run here.

Version facts (TensorRT's ``samples/common/sampleOptions.cpp`` and ``python/src``):

- weak typing (BuilderFlag.FP16/INT8) is deprecated from 10.12 and gone in 11.0, where every
  network is strongly typed: ``--stronglyTyped`` and ``NetworkDefinitionCreationFlag.STRONGLY_TYPED``
  are deprecated no-ops there, so neither is passed from 11 on;
- ``--hardwareCompatibilityLevel`` takes ``none`` and ``ampere+`` from 8.6 and
  ``sameComputeCapability`` from 10.9 (``HardwareCompatibilityLevel.SAME_COMPUTE_CAPABILITY`` too).

TensorRT-RTX's versions (1.x) are its own: every comparison here is made within one library
(``exporter.tensorrt.library``), never across them.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from exporter.core.errors import EnvironmentMissing, UsageError, param
from exporter.core.precision import REDUCED_PRECISIONS, Precision
from exporter.tensorrt.library import TENSORRT, TENSORRT_RTX, Library, import_library
from exporter.tensorrt.profile import HARDWARE_MIN_CC, Profile, parse_version, version_in_range

MIN_TENSORRT = TENSORRT.min_version
STRONG_TYPING_FROM = TENSORRT.strong_from or (10, 12)  # weak typing deprecated from here, removed in 11
STRONG_BY_DEFAULT_FROM = TENSORRT.strong_by_default_from or (11, 0)  # STRONGLY_TYPED: a deprecated no-op
# profile value -> (trtexec name, HardwareCompatibilityLevel member, first TensorRT with it)
HARDWARE_LEVELS = {
    "ampere_plus": ("ampere+", "AMPERE_PLUS", (8, 6)),
    "same_compute_capability": ("sameComputeCapability", "SAME_COMPUTE_CAPABILITY", (10, 9)),
}
# The script branches on these (newest first): each one changes a flag (see the docstring).
SCRIPT_ERAS = (STRONG_BY_DEFAULT_FROM, STRONG_TYPING_FROM, (10, 9), MIN_TENSORRT)
# Below fp32/tf32: a strongly typed network needs an ONNX in that precision.
REDUCED = (*REDUCED_PRECISIONS, "bf16", "fp8")
# Need an explicitly quantised (Q/DQ) ONNX under either typing: the INT8 flag on a float ONNX has
# no calibration (trtexec --int8 then uses placeholder ranges, for timing only).
QUANTISED = (Precision.INT8.value, "fp8")

if TYPE_CHECKING:  # pyright checks the calls below against tensorrt-stubs (CI)
    import tensorrt as trt


def import_tensorrt(library: Library = TENSORRT) -> Any:
    """The real module of ``library`` (TensorRT's ``tensorrt`` by default), or ``EnvironmentMissing``."""
    return import_library(library)


# Logged by TensorRT-RTX on some builds from Python, harmless: not an error of ours.
NOISE = ("Thread context has not been set! Using global log stream.",)


@functools.cache
def trt_logger(library: Library = TENSORRT) -> trt.ILogger:
    """The one logger of this process per library (each wants one logger shared by builder and
    runtime). TensorRT's prints WARNING and worse; TensorRT-RTX's records them in ``messages``
    (its builder errors reach only the logger), as (severity name, text)."""
    module = import_library(library)
    if library is TENSORRT:
        return module.Logger(module.Logger.WARNING)

    class Recorder(module.ILogger):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            module.ILogger.__init__(self)
            self.messages: list[tuple[str, str]] = []

        def log(self, severity: Any, msg: str) -> None:
            if severity <= module.ILogger.Severity.WARNING and msg not in NOISE:
                self.messages.append((severity.name, msg))
                del self.messages[:-200]  # bounded: only the last build's errors are read

    return Recorder()


def version_pair(trt_version: str) -> tuple[int, int]:
    """``"10.3.0.26"`` → ``(10, 3)``."""
    parts = parse_version(trt_version)
    return parts[0], parts[1] if len(parts) > 1 else 0


def profile_library(profile: Profile) -> Library:
    """The library that builds ``profile``'s engines (its ``library`` key)."""
    return TENSORRT_RTX if profile.library == TENSORRT_RTX.key else TENSORRT


def tensorrt_problem(library: Library = TENSORRT, to_build: bool = False) -> str | None:
    """Why engines of ``library`` cannot be built (``to_build``) or run here (not installed, too
    old, no usable GPU), or ``None``. TensorRT-RTX builds without a GPU; running needs one."""
    try:
        module = import_tensorrt(library)
    except EnvironmentMissing as exc:
        return str(exc)
    if version_pair(module.__version__) < library.min_version:
        return too_old(module.__version__, library)
    if to_build and not library.needs_gpu_to_build:
        return None
    from exporter.tensorrt.gpu import gpu_problem

    return gpu_problem()


def too_old(trt_version: str, library: Library = TENSORRT) -> str:
    low = ".".join(map(str, library.min_version))
    return (
        f"{library.name} {trt_version} is older than {low}: flexiexport builds and runs engines with "
        f"{library.name} {library.min_version[0]} or newer"
    )


def engine_problem(profile: Profile) -> str | None:
    """``tensorrt_problem`` for the profile's library, then whether that library (and, where it
    builds on the GPU, this GPU) is what ``profile`` is for."""
    library = profile_library(profile)
    problem = tensorrt_problem(library, to_build=True)
    if problem:
        return problem
    version = import_tensorrt(library).__version__
    if not library.needs_gpu_to_build:  # builds for the profile's target, not for a GPU here
        return profile_mismatch(profile, version, None)
    from exporter.tensorrt.gpu import gpu_identity

    gpu = gpu_identity()
    return profile_mismatch(profile, version, gpu.compute_capability, gpu.name)


def profile_mismatch(profile: Profile, trt_version: str, cc: str | None, gpu: str = "this GPU") -> str | None:
    """Why ``profile`` must not be built with this version of its library and GPU (both values
    named), or ``None``. ``cc`` None means unknown: not checked."""
    library = profile_library(profile)
    if version_pair(trt_version) < library.min_version:
        return too_old(trt_version, library)
    if not version_in_range(trt_version, profile.tensorrt):
        name = library.name
        return f"profile {profile.name!r} is for {name} {profile.tensorrt}, and this is {name} {trt_version}"
    if not library.hardware_compatibility:
        return None  # the profile's checks refuse levels, DLA and a GPU's compute capability for it
    level = profile.hardware_compatibility
    if level in HARDWARE_LEVELS and version_pair(trt_version) < HARDWARE_LEVELS[level][2]:
        first = ".".join(map(str, HARDWARE_LEVELS[level][2]))
        return (
            f"profile {profile.name!r} asks for hardware_compatibility = {level!r}, which needs TensorRT >= {first}, "
            f"and this is TensorRT {trt_version}"
        )
    if cc is None:
        return None
    min_cc = HARDWARE_MIN_CC.get(level)
    if min_cc and _cc(cc) < min_cc:
        return (
            f"hardware_compatibility = {level!r} needs a GPU of compute capability >= {min_cc[0]}.{min_cc[1]} "
            f"to build on, and {gpu} is compute capability {cc}"
        )
    if profile.compute_capability and profile.compute_capability != cc and level != "ampere_plus":
        return (
            f"profile {profile.name!r} is for compute capability {profile.compute_capability}, "
            f"and {gpu} is compute capability {cc}"
        )
    return None


def typing_mode(trt_version: str, library: Library = TENSORRT) -> str:
    """``"strong"`` for TensorRT >= 10.12 (and 11+) and every TensorRT-RTX, ``"weak"`` (builder
    precision flags) before."""
    return "strong" if library.strongly_typed(version_pair(trt_version)) else "weak"


def needs_precision_onnx(mode: str, precision: str) -> bool:
    """Whether building ``precision`` under ``mode`` typing needs an ONNX of that precision:
    any reduced precision when strongly typed; int8/fp8 (Q/DQ) under weak typing too."""
    return precision in QUANTISED or (mode == "strong" and precision in REDUCED)


def onnx_kinds(available: tuple[str, ...]) -> str:
    """``('fp32', 'int8')`` → ``"fp32 and int8 ONNX"``."""
    return " and ".join(dict.fromkeys(available)) + " ONNX"


def check_precision(
    trt_version: str,
    precision: str,
    onnx_precision: str,
    available: tuple[str, ...] | None = None,
    library: Library = TENSORRT,
) -> None:
    """Refuse combinations this TensorRT cannot build right: a strongly typed network takes its
    precision from the ONNX, so fp16/bf16/int8/fp8 there need an ONNX that carries it; int8 and
    fp8 need their Q/DQ ONNX under weak typing too (no calibration otherwise). ``available`` is
    every ONNX precision the bundle has for the variant (named in the message)."""
    if onnx_precision == precision or not needs_precision_onnx(typing_mode(trt_version, library), precision):
        return
    has = onnx_kinds(available or (onnx_precision,))
    if precision in QUANTISED:
        raise UsageError(
            f"precision {precision} needs the bundle's {precision} (Q/DQ) ONNX, but it has {has} only: "
            f"build it with {param('precision')} {precision} {param('calib_dir')} DIR "
            f"(TensorRT's {precision} flag on a float ONNX has no calibration)"
        )
    raise UsageError(
        f"{library.name} {trt_version} builds strongly typed networks: precision {precision} needs an "
        f"{precision} ONNX in the bundle, but it has {has} only"
    )


@dataclass(frozen=True)
class EngineShapes:
    """The optimisation profile's input shapes; ``static``: the ONNX's input is fixed, so the
    engine takes no profile (trtexec refuses shapes for a static model)."""

    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]
    static: bool = False


@dataclass(frozen=True)
class EngineTask:
    """One engine to build: the ONNX it is built from (in the profile's precision when the bundle
    has one), the precisions the bundle has, the engine's path, its shapes and LayerNorm nodes."""

    label: str
    onnx: str
    onnx_precision: str
    available: tuple[str, ...]
    engine: str
    shapes: EngineShapes
    layernorms: tuple[str, ...] = ()


def engine_shapes(
    profile: Profile,
    img_size: tuple[int, int],
    static_batch: int | None = None,
    img_range: tuple[tuple[int, int], tuple[int, int]] | None = None,
) -> EngineShapes:
    """The optimisation profile's shapes; a static-batch ONNX pins all three to its batch. A
    dynamic-resolution ONNX (``img_range``) takes its smallest size at min, ``img_size`` at opt and
    its largest at max, so its input is never static (DLA, which needs min = opt = max, is refused)."""
    b = profile.batch
    batches = (static_batch,) * 3 if static_batch else (b.min, b.opt, b.max)
    if img_range is None:
        lo, mid, hi = ((n, 3, *img_size) for n in batches)
        return EngineShapes(lo, mid, hi, static=bool(static_batch))
    if profile.dla_core >= 0:
        raise UsageError(
            f"profile {profile.name!r} runs on DLA core {profile.dla_core}, which needs fixed input shapes: "
            f"build the bundle with a fixed {param('img_size')} for it"
        )
    (low, high), (n_min, n_opt, n_max) = img_range, batches
    return EngineShapes((n_min, 3, *low), (n_opt, 3, *img_size), (n_max, 3, *high))


def precision_ready(profile: Profile, task: EngineTask) -> bool:
    """Whether a strongly typed build of ``task`` yields the profile's precision."""
    return profile.precision not in REDUCED or task.onnx_precision == profile.precision


def hardware_level_name(level: str, version: tuple[int, int], library: Library = TENSORRT) -> str | None:
    """trtexec's name for ``hardware_compatibility`` (None for 'none'); ``EnvironmentMissing`` when
    this version of ``library`` lacks the level (TensorRT-RTX ignores every level)."""
    if level not in HARDWARE_LEVELS:
        return None
    if not library.hardware_compatibility:
        raise EnvironmentMissing(f"hardware_compatibility = {level!r}: {library.name} ignores it (none only)")
    name, _, first = HARDWARE_LEVELS[level]
    if version < first:
        raise EnvironmentMissing(
            f"hardware_compatibility = {level!r} needs TensorRT >= {'.'.join(map(str, first))} "
            f"(trtexec --hardwareCompatibilityLevel={name})"
        )
    return name


def weak_precision_flags(precision: str) -> tuple[str, ...]:
    """Builder precisions to enable under weak typing: int8/fp8 layers that are not quantised
    fall back to FP16 rather than FP32."""
    if precision in QUANTISED:
        return (precision, "fp16")
    return (precision,) if precision in REDUCED else ()


def _cc(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in text.split("."))
    except ValueError:
        return (0,)


def timing_cache_name(gpu_cc: str, trt_version: str) -> str:
    """Timing caches are only valid for one GPU and TensorRT version: the name says which (the
    script names its caches the same way, from trtexec's major.minor.patch)."""
    version = ".".join(map(str, parse_version(trt_version)[:3]))
    return f"timing_sm{gpu_cc.replace('.', '')}_trt{version}.cache"
