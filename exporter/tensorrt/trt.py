"""TensorRT engine stage: builder, runner, version switches, sidecar and trtexec commands.

``import tensorrt`` happens only inside the functions that need it. The ``tensorrt-stubs``
package installs a ``tensorrt/`` folder of ``.pyi`` files, so a bare import can succeed as an
empty namespace package: a real TensorRT is recognised by ``tensorrt.Builder``. CUDA (the GPU's
identity, device memory, a stream) comes from cuda-python through ``exporter.tensorrt.gpu``: no torch.

Our own builder and runner, not Polygraphy's (``engine_from_network``/``CreateConfig``/
``TrtRunner``): what we build is a dozen calls, each one read against TensorRT's sources for the
versions we support (10.3 on JetPack 6 to 11.x), and the version switches are the point of this
module (typing mode, hardware-compatibility names, flags that 11 removed); Polygraphy would be one
more package to pin on the device, its runner is meant for prototyping and debugging (per-call
debug listener and output allocator, which ``bench`` would be timing) and it reports failures as
its own exception type through its logger. We keep its habits instead: every TensorRT return
value is checked, a runner is "a batch in, logits out", and a build logs its start and finish.

Version facts used here (TensorRT's ``samples/common/sampleOptions.cpp`` and ``python/src``):

- weak typing (BuilderFlag.FP16/INT8) is deprecated from 10.12 and gone in 11.0, where every
  network is strongly typed: ``--stronglyTyped`` and ``NetworkDefinitionCreationFlag.STRONGLY_TYPED``
  are deprecated no-ops there, so neither is passed from 11 on;
- ``--hardwareCompatibilityLevel`` takes ``none`` and ``ampere+`` from 8.6 and
  ``sameComputeCapability`` from 10.9 (``HardwareCompatibilityLevel.SAME_COMPUTE_CAPABILITY`` too);
- ``--layerPrecisions``, ``--layerOutputTypes``, ``--precisionConstraints`` and ``--fp16``/``--int8``
  exist up to 10.x only (11 dropped them with weak typing); ``--skipInference`` in every version;
- trtexec prints ``[TensorRT v100300]`` (major*10000 + minor*100 + patch) in its first line.
"""

from __future__ import annotations

import functools
import json
import logging
import shlex
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from exporter.bundle.manifest import INPUT_NAME
from exporter.core.errors import EngineLoadError, EnvironmentMissing, UsageError
from exporter.core.files import sha256_file, write_atomic_bytes
from exporter.core.names import printable
from exporter.core.precision import REDUCED_PRECISIONS, Precision
from exporter.tensorrt.gpu import DeviceBuffer, Stream, gpu_identity, gpu_problem
from exporter.tensorrt.profile import HARDWARE_MIN_CC, Profile, parse_version, version_in_range

log = logging.getLogger(__name__)

MIN_TENSORRT = (10, 0)
STRONG_TYPING_FROM = (10, 12)  # weak typing deprecated from here, removed in 11
STRONG_BY_DEFAULT_FROM = (11, 0)  # --stronglyTyped / STRONGLY_TYPED: deprecated no-ops
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
SIDECAR_KEYS = (
    "engine",
    "engine_sha256",
    "onnx",
    "onnx_sha256",
    "profile",
    "precision",
    "typing",
    "tensorrt",
    "gpu",
    "compute_capability",
    "hardware_compatibility",
    "shapes",
    "build_seconds",
    "timing_cache",
)

if TYPE_CHECKING:  # pyright checks the calls below against tensorrt-stubs (CI)
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


@functools.cache
def trt_logger() -> trt.ILogger:
    """The one ``trt.Logger`` of this process (TensorRT wants one logger shared by builder and runtime)."""
    import tensorrt as trt

    return trt.Logger(trt.Logger.WARNING)


def version_pair(trt_version: str) -> tuple[int, int]:
    """``"10.3.0.26"`` → ``(10, 3)``."""
    parts = parse_version(trt_version)
    return parts[0], parts[1] if len(parts) > 1 else 0


def tensorrt_problem() -> str | None:
    """Why engines cannot be built or run here (no TensorRT, TensorRT < 10, no usable GPU), or ``None``."""
    try:
        tensorrt = import_tensorrt()
    except EnvironmentMissing as exc:
        return str(exc)
    if version_pair(tensorrt.__version__) < MIN_TENSORRT:
        return too_old(tensorrt.__version__)

    return gpu_problem()


def too_old(trt_version: str) -> str:
    return f"TensorRT {trt_version} is older than 10.0: flexiexport builds and runs engines with TensorRT 10 or newer"


def engine_problem(profile: Profile) -> str | None:
    """``tensorrt_problem``, then whether this TensorRT and GPU are what ``profile`` is for."""
    problem = tensorrt_problem()
    if problem:
        return problem

    gpu = gpu_identity()
    return profile_mismatch(profile, import_tensorrt().__version__, gpu.compute_capability, gpu.name)


def profile_mismatch(profile: Profile, trt_version: str, cc: str | None, gpu: str = "this GPU") -> str | None:
    """Why ``profile`` must not be built with this TensorRT version and GPU (both values named), or
    ``None``. ``cc`` None means unknown: not checked."""
    if version_pair(trt_version) < MIN_TENSORRT:
        return too_old(trt_version)
    if not version_in_range(trt_version, profile.tensorrt):
        return f"profile {profile.name!r} is for TensorRT {profile.tensorrt}, and this is TensorRT {trt_version}"
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


def typing_mode(trt_version: str) -> str:
    """``"strong"`` for TensorRT >= 10.12 (and 11+), ``"weak"`` (builder precision flags) before."""
    return "strong" if version_pair(trt_version) >= STRONG_TYPING_FROM else "weak"


def needs_precision_onnx(mode: str, precision: str) -> bool:
    """Whether building ``precision`` under ``mode`` typing needs an ONNX of that precision:
    any reduced precision when strongly typed; int8/fp8 (Q/DQ) under weak typing too."""
    return precision in QUANTISED or (mode == "strong" and precision in REDUCED)


def onnx_kinds(available: tuple[str, ...]) -> str:
    """``('fp32', 'int8')`` → ``"fp32 and int8 ONNX"``."""
    return " and ".join(dict.fromkeys(available)) + " ONNX"


def check_precision(
    trt_version: str, precision: str, onnx_precision: str, available: tuple[str, ...] | None = None
) -> None:
    """Refuse combinations this TensorRT cannot build right: a strongly typed network takes its
    precision from the ONNX, so fp16/bf16/int8/fp8 there need an ONNX that carries it; int8 and
    fp8 need their Q/DQ ONNX under weak typing too (no calibration otherwise). ``available`` is
    every ONNX precision the bundle has for the variant (named in the message)."""
    if onnx_precision == precision or not needs_precision_onnx(typing_mode(trt_version), precision):
        return
    has = onnx_kinds(available or (onnx_precision,))
    if precision in QUANTISED:
        raise UsageError(
            f"precision {precision} needs the bundle's {precision} (Q/DQ) ONNX, but it has {has} only: "
            f"build it with --precision {precision} --calib-dir DIR (TensorRT's {precision} flag on a float "
            "ONNX has no calibration)"
        )
    raise UsageError(
        f"TensorRT {trt_version} builds strongly typed networks: precision {precision} needs an "
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
        return EngineShapes(*((n, 3, *img_size) for n in batches), static=bool(static_batch))
    if profile.dla_core >= 0:
        raise UsageError(
            f"profile {profile.name!r} runs on DLA core {profile.dla_core}, which needs fixed input shapes: "
            "build the bundle with a fixed --img-size for it"
        )
    (low, high), (n_min, n_opt, n_max) = img_range, batches
    return EngineShapes((n_min, 3, *low), (n_opt, 3, *img_size), (n_max, 3, *high))


def precision_ready(profile: Profile, variant: dict[str, Any]) -> bool:
    """Whether a strongly typed build of ``variant`` yields the profile's precision."""
    return profile.precision not in REDUCED or variant.get("onnx_precision", "fp32") == profile.precision


def _dims(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape))


def hardware_level_name(level: str, version: tuple[int, int]) -> str | None:
    """trtexec's name for ``hardware_compatibility`` (None for 'none'); ``EnvironmentMissing`` when
    this TensorRT version lacks the level."""
    if level not in HARDWARE_LEVELS:
        return None
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


def trtexec_command(
    onnx: str,
    engine: str,
    profile: Profile,
    shapes: EngineShapes,
    version: tuple[int, int],
    layernorm_names: tuple[str, ...] = (),
    timing_cache: str | None = None,
) -> list[str]:
    """The trtexec command that builds what ``build_engine`` builds with TensorRT ``version``."""
    cmd = ["trtexec", f"--onnx={onnx}", f"--saveEngine={engine}", "--skipInference"]
    if not shapes.static:
        cmd += [
            f"--minShapes={INPUT_NAME}:{_dims(shapes.min)}",
            f"--optShapes={INPUT_NAME}:{_dims(shapes.opt)}",
            f"--maxShapes={INPUT_NAME}:{_dims(shapes.max)}",
        ]
    cmd += [
        f"--memPoolSize=workspace:{profile.workspace_mib}M",
        f"--builderOptimizationLevel={profile.builder_optimization_level}",
    ]
    if version >= STRONG_BY_DEFAULT_FROM:
        pass  # strongly typed by default; --stronglyTyped is a deprecated no-op
    elif version >= STRONG_TYPING_FROM:
        cmd.append("--stronglyTyped")
    elif profile.precision in REDUCED:
        cmd += [f"--{p}" for p in weak_precision_flags(profile.precision)]
        if layernorm_names:  # the classic ViT FP16 overflow: keep LayerNorm in FP32, its output too
            cmd += [
                "--layerPrecisions=" + ",".join(f"{n}:fp32" for n in layernorm_names),
                "--layerOutputTypes=" + ",".join(f"{n}:fp32" for n in layernorm_names),
                "--precisionConstraints=obey",
            ]
    if profile.precision == "fp32":
        cmd.append("--noTF32")
    level = hardware_level_name(profile.hardware_compatibility, version)
    if level:
        cmd.append(f"--hardwareCompatibilityLevel={level}")
    if profile.dla_core >= 0:
        cmd += [f"--useDLACore={profile.dla_core}", "--allowGPUFallback"]
    if profile.timing_cache and timing_cache:
        cmd.append(f"--timingCacheFile={timing_cache}")
    return cmd


def comment(text: str) -> str:
    """A shell comment line that stays one line: control characters go, line breaks become spaces."""
    return "# " + " ".join(printable(text).split())


def _code(version: tuple[int, ...]) -> int:
    """trtexec's version number: major*10000 + minor*100 + patch."""
    padded = (*version, 0, 0, 0)
    return padded[0] * 10000 + padded[1] * 100 + padded[2]


def version_tests(spec: str) -> list[str]:
    """``">=10.3,<11"`` as bash tests on ``$version`` (trtexec's number). A clause compares as many
    parts as it names, like ``version_in_range`` (``<11`` admits every 10.x; a fourth part is not
    in trtexec's number and is ignored)."""
    tests = []
    for clause in (c.strip() for c in spec.split(",") if c.strip()):
        op, text = _split_clause(clause)
        bound = parse_version(text)[:3]
        low, next_up = _code(bound), _code((*bound[:-1], bound[-1] + 1))
        tests += {
            ">=": [f"-ge {low}"],
            ">": [f"-gt {low}"],
            "<": [f"-lt {low}"],
            "<=": [f"-lt {next_up}"],
            "==": [f"-ge {low}", f"-lt {next_up}"],
        }[op]
    return [f'[ "$version" {t} ]' for t in tests]


def _split_clause(clause: str) -> tuple[str, str]:
    op = next(o for o in (">=", "<=", "==", ">", "<") if clause.startswith(o))
    return op, clause[len(op) :].strip()


SCRIPT_HEAD = r"""set -euo pipefail
cd "$(dirname "$0")/.."
fail() { echo "$*" >&2; exit 4; }
TRTEXEC="${TRTEXEC:-$(command -v trtexec || echo /usr/src/tensorrt/bin/trtexec)}"
command -v "$TRTEXEC" >/dev/null 2>&1 || fail "no trtexec at '$TRTEXEC'" \
    "(looked on PATH, then at /usr/src/tensorrt/bin/trtexec): run with TRTEXEC=/path/to/trtexec"
version=$({ "$TRTEXEC" --help 2>&1 || true; } | grep -o 'TensorRT v[0-9][0-9]*' | head -n 1 | tr -dc 0-9 || true)
if [ -z "$version" ] && [[ "${TENSORRT_VERSION:-}" =~ ^([0-9]+)\.([0-9]+)(\.([0-9]+))? ]]; then
    version=$(( 10#${BASH_REMATCH[1]} * 10000 + 10#${BASH_REMATCH[2]} * 100 + 10#${BASH_REMATCH[4]:-0} ))
fi
[ -n "$version" ] || fail "could not read TensorRT's version: '$TRTEXEC --help' printed no" \
    "'TensorRT v<number>' line. Run with TRTEXEC=/path/to/trtexec, or give the version: TENSORRT_VERSION=10.3.0"
[ "$version" -ge 100000 ] || fail "trtexec at '$TRTEXEC' is TensorRT v$version, older than 10.0:" \
    "these engines need TensorRT 10 or newer"
trt="$((version / 10000)).$((version / 100 % 100)).$((version % 100))"
gpu=unknown
cc=unknown
if command -v nvidia-smi >/dev/null 2>&1; then
    line=$(nvidia-smi --query-gpu=name,compute_cap --format=csv,noheader 2>/dev/null | head -n 1 || true)
    cap=$(echo "${line##*,}" | tr -d ' ')
    if [[ "$cap" =~ ^[0-9]+\.[0-9]+$ ]]; then
        cc=$cap
        gpu=$(echo "${line%,*}" | tr -cd 'A-Za-z0-9 ._()+-' | sed 's/^ *//; s/ *$//')
    fi
fi
echo "TensorRT $trt (trtexec at $TRTEXEC), GPU: $gpu, compute capability: $cc"
cache_name() {  # timing_sm87_trt10.3.0.cache, as timing_cache_name() names it
    if [ "$cc" = unknown ]; then echo "timing_trt$trt.cache"; else echo "timing_sm${cc//./}_trt$trt.cache"; fi
}
sidecar() {  # sidecar ONNX ENGINE SECONDS CACHE FIELDS: model_pN.engine.json, the keys of EngineInfo
    local onnx=$1 engine=$2 seconds=$3 cache=$4 fields=$5 tmp="$2.json.tmp-$$"
    printf '{%s, "engine_sha256": "%s", "onnx_sha256": "%s", "tensorrt": "%s", "gpu": "%s", %s}\n' \
        "$fields" "$(sha256sum "$engine" | cut -d ' ' -f 1)" "$(sha256sum "$onnx" | cut -d ' ' -f 1)" \
        "$trt" "$gpu" "\"compute_capability\": \"$cc\", \"build_seconds\": $seconds, \"timing_cache\": $cache" > "$tmp"
    mv -f "$tmp" "$engine.json"
}
build() {  # build ONNX ENGINE CACHE-FOLDER|- FIELDS TRTEXEC-ARGUMENTS...
    local onnx=$1 engine=$2 folder=$3 fields=$4 start=$SECONDS cache=null name
    local extra=()
    shift 4
    if [ "$folder" != - ]; then
        name=$(cache_name)
        extra=("--timingCacheFile=$folder/$name")
        cache="\"$name\""
    fi
    "$TRTEXEC" "$@" ${extra[@]+"${extra[@]}"}
    [ -f "$engine" ] || fail "trtexec exited 0 but wrote no $engine"
    sidecar "$onnx" "$engine" $((SECONDS - start)) "$cache" "$fields"
}"""


def _sidecar_fields(profile: Profile, item: dict[str, Any], mode: str) -> str:
    """The sidecar's keys the script knows before it runs, as JSON (its own values come after)."""
    shapes: EngineShapes = item["shapes"]
    fields = {
        "engine": Path(item["engine"]).name,
        "onnx": Path(item["onnx"]).name,
        "profile": profile.name,
        "precision": profile.precision,
        "typing": mode,
        "hardware_compatibility": profile.hardware_compatibility,
        "shapes": {"min": list(shapes.min), "opt": list(shapes.opt), "max": list(shapes.max)},
    }
    return json.dumps(fields)[1:-1]


def _cc_check(profile: Profile) -> list[str]:
    want = profile.compute_capability
    if not want or profile.hardware_compatibility == "ampere_plus":
        return []
    msg = f"profile {profile.name!r} is for compute capability {want}"
    return [
        f'if [ "$cc" = unknown ]; then echo {shlex.quote(msg + ": nvidia-smi gave none here, not checked")} >&2',
        f'elif [ "$cc" != {shlex.quote(want)} ]; then',
        f'    fail {shlex.quote(msg + ",")} "and $gpu is compute capability $cc"',
        "fi",
    ]


def _era_lines(profile: Profile, variants: list[dict[str, Any]], era: tuple[int, int], folder: str) -> list[str]:
    """The body of one version branch: refusals (exit 4) or one ``build`` per variant."""
    mode = "strong" if era >= STRONG_TYPING_FROM else "weak"
    try:
        hardware_level_name(profile.hardware_compatibility, era)
    except EnvironmentMissing as exc:
        return [f"    fail {shlex.quote(printable(str(exc)))} " + '"(this is TensorRT $trt)"']
    strict = needs_precision_onnx(mode, profile.precision)
    missing = [v for v in variants if strict and not precision_ready(profile, v)]
    if missing:
        why = (
            "TensorRT has no calibration for it here"
            if profile.precision in QUANTISED
            else "TensorRT >= 10.12 builds strongly typed networks"
        )
        has = onnx_kinds(tuple(p for v in missing for p in v.get("available", ("fp32",))))
        labels = ", ".join(v["label"] for v in missing)
        need = f"precision {profile.precision} needs an {profile.precision} ONNX"
        message = f"{why}: {need}, and this bundle has {has} only ({labels})"
        return [f"    fail {shlex.quote(printable(message))}"]
    lines = []
    for v in variants:
        cmd = trtexec_command(v["onnx"], v["engine"], profile, v["shapes"], era, v.get("layernorms", ()))
        cache = folder if profile.timing_cache else "-"
        words = [v["onnx"], v["engine"], cache, _sidecar_fields(profile, v, mode), *cmd[1:]]
        lines.append("    build " + shlex.join(words))
    return lines


def build_script(profile: Profile, variants: list[dict[str, Any]]) -> str:
    """``engines/build_<profile>.sh``: builds every variant with trtexec on a device that has only
    trtexec (a Jetson), with the flags of the TensorRT version it finds; checks the profile's
    TensorRT range and compute capability (exit 4 naming both values) and writes a sidecar
    ``model_pN.engine.json`` beside each engine."""
    folder = f"engines/{profile.name}"
    lines = [
        "#!/usr/bin/env bash",
        comment(f"Build TensorRT engines for profile {profile.name!r} with trtexec, on the target device."),
        *([comment(f"Profile: {profile.description}")] if profile.description else []),
        "# Written by flexiexport; run from anywhere: paths are relative to the bundle.",
        "# TRTEXEC=/path/to/trtexec picks trtexec; TENSORRT_VERSION=10.3.0 says its version if it cannot.",
        SCRIPT_HEAD,
        f"if ! {{ {' && '.join(version_tests(profile.tensorrt))}; }}; then",
        f"    fail {shlex.quote(f'profile {profile.name!r} is for TensorRT {profile.tensorrt},')} "
        '"and this is TensorRT $trt"',
        "fi",
        *_cc_check(profile),
        f"mkdir -p {shlex.quote(folder)}",
    ]
    for i, era in enumerate(SCRIPT_ERAS):
        keyword = "if" if i == 0 else "elif"
        lines.append(f'{keyword} [ "$version" -ge {_code(era)} ]; then')
        lines += _era_lines(profile, variants, era, folder)
    lines += ["fi", f"echo {shlex.quote(f'engines written to {folder}/')}"]
    return "\n".join(lines) + "\n"


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


def read_sidecar(path: Path) -> dict[str, Any] | str:
    """A sidecar's fields, or why it cannot be used (missing, too large, not ours): it is data
    from the bundle folder, read with the same suspicion as a manifest."""
    try:
        if path.is_symlink() or not path.is_file():
            return f"{path.name} is missing"
        if path.stat().st_size > 64 << 10:
            return f"{path.name} is larger than 64 KiB: not a sidecar we wrote"
        data = json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError) as exc:
        return f"{path.name} cannot be read ({printable(str(exc))[:80]})"
    if not isinstance(data, dict) or set(SIDECAR_KEYS) - set(data):
        return f"{path.name} is not a sidecar we wrote (keys of EngineInfo missing)"
    texts = ("engine", "engine_sha256", "tensorrt", "compute_capability", "hardware_compatibility", "gpu")
    if not all(isinstance(data[k], str) for k in texts):
        return f"{path.name} is not a sidecar we wrote (a field that should be text is not)"
    return data


def engine_fit(info: Mapping[str, Any], trt_version: str, cc: str, gpu: str) -> tuple[int, str]:
    """How well an engine described by ``info`` (a sidecar or its manifest record) fits this
    TensorRT and GPU: rank 0 same GPU model, 1 same compute capability, 2 hardware-compatible
    (ampere_plus on an Ampere or newer GPU), 3 compute capability unknown (worth a try); -1 it
    cannot run here, and the text says why."""
    built = str(info.get("tensorrt", "?"))
    try:
        same_version = parse_version(built)[:3] == parse_version(trt_version)[:3]
    except UsageError:
        same_version = False
    if not same_version:
        return -1, f"built with TensorRT {printable(built)}, and this is TensorRT {trt_version}"
    theirs = str(info.get("compute_capability", "unknown"))
    if theirs == cc:
        return (0 if info.get("gpu") == gpu else 1), ""
    if info.get("hardware_compatibility") == "ampere_plus" and _cc(cc) >= (8, 0) and _cc(theirs) >= (8, 0):
        return 2, ""
    if theirs == "unknown":
        return 3, ""
    return -1, f"built for compute capability {printable(theirs)}, and {gpu} is {cc}"


def _cc(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in text.split("."))
    except ValueError:
        return (0,)


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
) -> trt.IBuilderConfig:
    import tensorrt as trt

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
    if version < STRONG_TYPING_FROM and profile.precision in REDUCED:
        for precision in weak_precision_flags(profile.precision):
            config.set_flag(getattr(trt.BuilderFlag, precision.upper()))
        _keep_layernorm_fp32(network, config)
    if hardware_level_name(profile.hardware_compatibility, version):  # raises where this version lacks it
        member = HARDWARE_LEVELS[profile.hardware_compatibility][1]
        config.hardware_compatibility_level = getattr(trt.HardwareCompatibilityLevel, member)
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


def network_flags(version: tuple[int, int]) -> int:
    """``create_network`` flags: STRONGLY_TYPED from 10.12 until 11, where it is the default and
    the flag a deprecated no-op."""
    if not STRONG_TYPING_FROM <= version < STRONG_BY_DEFAULT_FROM:
        return 0
    import tensorrt as trt

    return 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)


def build_engine(
    onnx_path: Path,
    engine_path: Path,
    profile: Profile,
    shapes: EngineShapes,
    cache_in: Path | None = None,
    cache_out: Path | None = None,
) -> EngineInfo:
    """Parse ``onnx_path``, build with ``profile`` and write the engine and its sidecar atomically.
    With ``profile.timing_cache``, the cache is read from ``cache_in`` (when there) and the
    updated one written to ``cache_out``."""
    import_tensorrt()
    import tensorrt as trt

    start = time.perf_counter()
    version = version_pair(trt.__version__)
    builder = trt.Builder(trt_logger())
    network = builder.create_network(network_flags(version))
    parser = trt.OnnxParser(network, trt_logger())
    if not parser.parse_from_file(str(onnx_path)):
        raise UsageError(f"TensorRT cannot parse {onnx_path.name}: {parser_errors(parser)}")
    config = _configure(builder, network, profile, shapes, version)
    if profile.timing_cache:
        data = cache_in.read_bytes() if cache_in is not None and cache_in.is_file() else b""
        _attach_timing_cache(config, data, str(cache_in))
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise UsageError(f"TensorRT could not build an engine from {onnx_path.name} with profile {profile.name!r}")
    write_atomic_bytes(engine_path, bytes(serialized))
    if profile.timing_cache and cache_out is not None:
        write_atomic_bytes(cache_out, bytes(config.get_timing_cache().serialize()))
    gpu = gpu_identity()
    info = EngineInfo(
        engine=engine_path.name,
        engine_sha256=sha256_file(engine_path),
        onnx=onnx_path.name,
        onnx_sha256=sha256_file(onnx_path),
        profile=profile.name,
        precision=profile.precision,
        typing=typing_mode(trt.__version__),
        tensorrt=trt.__version__,
        gpu=gpu.name,
        compute_capability=gpu.compute_capability,
        hardware_compatibility=profile.hardware_compatibility,
        shapes={"min": list(shapes.min), "opt": list(shapes.opt), "max": list(shapes.max)},
        build_seconds=round(time.perf_counter() - start, 2),
        timing_cache=cache_out.name if cache_out is not None and profile.timing_cache else None,
    )
    info.write(engine_path.with_name(engine_path.name + ".json"))
    return info


def timing_cache_name(gpu_cc: str, trt_version: str) -> str:
    """Timing caches are only valid for one GPU and TensorRT version: the name says which (the
    script names its caches the same way, from trtexec's major.minor.patch)."""
    version = ".".join(map(str, parse_version(trt_version)[:3]))
    return f"timing_sm{gpu_cc.replace('.', '')}_trt{version}.cache"


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


class EngineRunner:
    """A runner (float32 NCHW numpy batch → float32 logits) over a serialized engine, on its own
    CUDA stream with cuda-python buffers. ``batch_range`` is the (min, max) batch the engine's
    profile takes; a batch outside it is refused before TensorRT sees it."""

    def __init__(self, engine_path: Path) -> None:
        import_tensorrt()
        import tensorrt as trt

        self.name = engine_path.name
        self._runtime = trt.Runtime(trt_logger())  # must outlive the engine
        engine = self._runtime.deserialize_cuda_engine(engine_path.read_bytes())
        if engine is None:
            raise EngineLoadError(
                f"TensorRT could not load {engine_path.name} (built for another GPU or TensorRT version?)"
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
        self.batch_range = profile_batch_range(input_shape, profile)
        self.stream = Stream()
        self._buffers: dict[str, Any] = {}

    def _buffer(self, name: str, nbytes: int) -> Any:
        """A device buffer of at least ``nbytes`` for ``name``, reused across calls."""

        buffer = self._buffers.get(name)
        if buffer is None or buffer.nbytes < nbytes:
            if buffer is not None:
                buffer.free()
            buffer = self._buffers[name] = DeviceBuffer(nbytes)
        if not self._context.set_tensor_address(name, buffer.ptr):
            raise UsageError(f"TensorRT refused the address of {name!r} for {self.name}")
        return buffer

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        lo, hi = self.batch_range
        if not lo <= len(batch) <= hi:
            raise UsageError(f"batch {len(batch)} is outside {self.name}'s optimisation profile ({lo}..{hi})")
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
        return out.astype(np.float32, copy=False)


def engine_runner(engine_path: Path) -> EngineRunner:
    """A runner over ``engine_path`` (see ``EngineRunner``)."""
    return EngineRunner(engine_path)
