"""The trtexec side of the engine stage: ``trtexec_command`` and ``engines/build_<profile>.sh``,
for devices that have trtexec but not TensorRT's Python module (a Jetson).

trtexec facts (TensorRT's ``samples/common/sampleOptions.cpp``): ``--layerPrecisions``,
``--layerOutputTypes``, ``--precisionConstraints`` and ``--fp16``/``--int8`` exist up to 10.x only
(11 dropped them with weak typing); ``--skipInference`` in every version; trtexec prints
``[TensorRT v100300]`` (major*10000 + minor*100 + patch) in its first line. TensorRT-RTX has no
trtexec (its CLI, ``tensorrt_rtx``, takes other flags): its profiles get no script.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from exporter.bundle.manifest import INPUT_NAME
from exporter.core.errors import EnvironmentMissing
from exporter.core.names import printable
from exporter.tensorrt.profile import Profile, parse_version
from exporter.tensorrt.versions import (
    QUANTISED,
    REDUCED,
    SCRIPT_ERAS,
    STRONG_BY_DEFAULT_FROM,
    STRONG_TYPING_FROM,
    EngineShapes,
    EngineTask,
    hardware_level_name,
    needs_precision_onnx,
    onnx_kinds,
    precision_ready,
    weak_precision_flags,
)


def _dims(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape))


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


def _sidecar_fields(profile: Profile, task: EngineTask, mode: str) -> str:
    """The sidecar's keys the script knows before it runs, as JSON (its own values come after)."""
    shapes = task.shapes
    fields = {
        "engine": Path(task.engine).name,
        "onnx": Path(task.onnx).name,
        "profile": profile.name,
        "precision": profile.precision,
        "typing": mode,
        "library": "TensorRT",
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


def _era_lines(profile: Profile, variants: list[EngineTask], era: tuple[int, int], folder: str) -> list[str]:
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
        has = onnx_kinds(tuple(p for v in missing for p in v.available))
        labels = ", ".join(v.label for v in missing)
        need = f"precision {profile.precision} needs an {profile.precision} ONNX"
        message = f"{why}: {need}, and this bundle has {has} only ({labels})"
        return [f"    fail {shlex.quote(printable(message))}"]
    lines = []
    for v in variants:
        cmd = trtexec_command(v.onnx, v.engine, profile, v.shapes, era, v.layernorms)
        cache = folder if profile.timing_cache else "-"
        words = [v.onnx, v.engine, cache, _sidecar_fields(profile, v, mode), *cmd[1:]]
        lines.append("    build " + shlex.join(words))
    return lines


def build_script(profile: Profile, variants: list[EngineTask]) -> str:
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
