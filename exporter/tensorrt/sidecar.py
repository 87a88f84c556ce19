"""The sidecar ``model_pN.engine.json`` beside every engine, and how well an engine it describes
fits the library and GPU here."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import cast

from typing_extensions import NotRequired, TypedDict

from exporter.core.errors import UsageError
from exporter.core.files import write_atomic_bytes
from exporter.core.names import printable
from exporter.tensorrt.library import TENSORRT
from exporter.tensorrt.profile import parse_version
from exporter.tensorrt.versions import _cc

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
    library: str = TENSORRT.name  # sidecars before it was recorded: TensorRT

    def write(self, path: Path) -> None:
        write_atomic_bytes(path, (json.dumps(asdict(self), indent=2) + "\n").encode())


class Sidecar(TypedDict):
    """A sidecar as ``read_sidecar`` returns it: every key of ``EngineInfo`` is there, and the ones
    that say where an engine runs are text; the rest are as the file has them, unchecked."""

    engine: str
    engine_sha256: str
    tensorrt: str
    compute_capability: str
    hardware_compatibility: str
    gpu: str
    onnx: object
    onnx_sha256: object
    profile: object
    precision: object
    typing: object
    shapes: object
    build_seconds: object
    timing_cache: object
    library: NotRequired[object]  # absent in sidecars written before it was recorded: TensorRT


def read_sidecar(path: Path) -> Sidecar | str:
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
    return cast(Sidecar, data)  # its keys and texts checked above


def engine_fit(
    info: Mapping[str, object], trt_version: str, cc: str, gpu: str, library: str = TENSORRT.name
) -> tuple[int, str]:
    """How well an engine described by ``info`` (a sidecar or its manifest record) fits this
    version of ``library`` and GPU: rank 0 same GPU model, 1 same compute capability, 2 hardware-compatible
    (ampere_plus on an Ampere or newer GPU), 3 compute capability unknown (worth a try); -1 it
    cannot run here, and the text says why."""
    built_by = str(info.get("library", TENSORRT.name))
    if built_by != library:
        return -1, f"built with {printable(built_by)}, and this is {library}"
    built = str(info.get("tensorrt", "?"))
    try:
        same_version = parse_version(built)[:3] == parse_version(trt_version)[:3]
    except UsageError:
        same_version = False
    if not same_version:
        return -1, f"built with {library} {printable(built)}, and this is {library} {trt_version}"
    theirs = str(info.get("compute_capability", "unknown"))
    if theirs == cc:
        return (0 if info.get("gpu") == gpu else 1), ""
    if info.get("hardware_compatibility") == "ampere_plus" and _cc(cc) >= (8, 0) and _cc(theirs) >= (8, 0):
        return 2, ""
    if theirs == "unknown":
        return 3, ""
    return -1, f"built for compute capability {printable(theirs)}, and {gpu} is {cc}"
