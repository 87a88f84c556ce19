"""Deployment profiles: ``profiles/*.toml`` (shipped in the wheel) loaded into frozen dataclasses.

A profile says how to build TensorRT engines for one target: precision, batch range
(min/opt/max, one optimisation profile), workspace, builder optimisation level, timing cache,
hardware compatibility, DLA core, the GPU's compute capability and the TensorRT versions it
supports, and the library that builds it (``library``: ``tensorrt``, the default, or
``tensorrt-rtx``, which builds on the CPU for a compute capability). Unknown keys and impossible
combinations are errors that name the key.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from exporter.core.errors import UsageError
from exporter.core.names import SAFE_NAME_TEXT, is_safe_name, printable
from exporter.core.precision import PRECISIONS as ONNX_PRECISIONS
from exporter.core.precision import Precision
from exporter.tensorrt.library import LIBRARIES, TENSORRT

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

# A checkout keeps them in the top-level profiles/ folder; the wheel ships them as exporter/profiles.
PROFILE_DIR = next(
    (
        d
        for d in (Path(__file__).resolve().parents[2] / "profiles", Path(__file__).resolve().parents[1] / "profiles")
        if d.is_dir()
    ),
    Path(__file__).resolve().parents[1] / "profiles",
)
# An engine's precision: one of the bundle's ONNX precisions, or an engine-only setting.
ENGINE_ONLY_PRECISIONS = ("tf32", "bf16", "fp8")
PRECISIONS = (*ONNX_PRECISIONS, *ENGINE_ONLY_PRECISIONS)
DLA_PRECISIONS = (Precision.FP16.value, Precision.INT8.value)  # what a DLA core runs
HARDWARE_COMPATIBILITY = ("none", "ampere_plus", "same_compute_capability")
JETSON_CC = ("7.2", "8.7")  # Xavier, Orin: the GPUs with DLA cores
# Lowest compute capability with native support, per precision.
# TensorRT's NvInfer.h (10.9+): kAMPERE_PLUS "only supported for engines built on NVIDIA Ampere and
# later GPUs", kSAME_COMPUTE_CAPABILITY "on NVIDIA Turing and later GPUs".
HARDWARE_MIN_CC = {"ampere_plus": (8, 0), "same_compute_capability": (7, 5)}
MIN_CC = {"tf32": (8, 0), "bf16": (8, 0), "fp8": (8, 9), "fp16": (6, 0), "int8": (6, 1), "fp32": (0, 0)}


MAX_BATCH = 4096  # what a bundle's manifest admits (exporter.bundle.door.BatchRecord)


class ProfileError(UsageError):
    """A profile file that is missing, malformed or asks for something impossible."""


@dataclass(frozen=True)
class BatchRange:
    min: int = 1
    opt: int = 1
    max: int = 1

    def __post_init__(self) -> None:
        for name in ("min", "opt", "max"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ProfileError(f"batch.{name} must be a positive integer, got {value!r}")
        if not self.min <= self.opt <= self.max:
            raise ProfileError(
                f"batch must satisfy min <= opt <= max, got min={self.min} opt={self.opt} max={self.max}"
            )


def parse_version(text: str) -> tuple[int, ...]:
    """``"10.3.0.26"`` → ``(10, 3, 0, 26)``; raises for anything else."""
    if not re.fullmatch(r"\d+(\.\d+)*", text.strip()):
        raise ProfileError(f"not a version number: {text!r}")
    return tuple(int(p) for p in text.strip().split("."))


def version_in_range(version: str, spec: str) -> bool:
    """``"10.3.0"`` in ``">=10.3,<11"`` (comma-separated ``>= > <= < ==`` clauses)."""
    v = parse_version(version)
    for clause in (c.strip() for c in spec.split(",") if c.strip()):
        match = re.fullmatch(r"(>=|<=|==|>|<)\s*([\d.]+)", clause)
        if not match:
            raise ProfileError(f"tensorrt: cannot read version clause {clause!r} (use e.g. '>=10.3,<11')")
        op, bound = match.group(1), parse_version(match.group(2))
        width = max(len(v), len(bound))
        left, right = v[: len(bound)] if op in ("<", "<=", "==") else v, bound
        left = left + (0,) * (width - len(left))
        right = right + (0,) * (width - len(right))
        ok = {">=": left >= right, ">": left > right, "<=": left <= right, "<": left < right, "==": left == right}[op]
        if not ok:
            return False
    return True


@dataclass(frozen=True)
class Profile:
    name: str
    precision: str = "fp16"
    batch: BatchRange = BatchRange()
    workspace_mib: int = 2048
    builder_optimization_level: int = 3
    timing_cache: bool = True
    hardware_compatibility: str = "none"
    dla_core: int = -1
    compute_capability: str | None = None
    tensorrt: str = ">=10.0,<12"
    description: str = ""
    calibration: str | None = None
    library: str = TENSORRT.key
    path: Path | None = None

    def __post_init__(self) -> None:
        check_profile_name(self.name)
        self._check_types()
        self._check_choices()
        self._check_hardware()
        self._check_library()
        version_in_range("10.0", self.tensorrt)  # parses the range; raises on a bad clause

    def _check_types(self) -> None:
        """Every value of the type its field names, before any comparison or format uses it."""
        kinds: dict[str, tuple[type, ...]] = {
            "precision": (str,),
            "workspace_mib": (int,),
            "builder_optimization_level": (int,),
            "timing_cache": (bool,),
            "hardware_compatibility": (str,),
            "dla_core": (int,),
            "compute_capability": (str, type(None)),
            "tensorrt": (str,),
            "description": (str,),
            "calibration": (str, type(None)),
            "library": (str,),
        }
        for name, allowed in kinds.items():
            value = getattr(self, name)
            is_bool = isinstance(value, bool)
            if not isinstance(value, allowed) or (is_bool and bool not in allowed):
                wanted = " or ".join("none" if t is type(None) else t.__name__ for t in allowed)
                raise ProfileError(f"{name} must be {wanted}, got {value!r}")
        if not 1 <= self.workspace_mib <= 1 << 20:
            raise ProfileError(f"workspace_mib must be 1..{1 << 20} (1 TiB), got {self.workspace_mib}")
        if self.batch.max > MAX_BATCH:
            raise ProfileError(f"batch.max must be at most {MAX_BATCH}, got {self.batch.max}")

    def _check_choices(self) -> None:
        if self.precision not in PRECISIONS:
            raise ProfileError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.hardware_compatibility not in HARDWARE_COMPATIBILITY:
            raise ProfileError(
                f"hardware_compatibility must be one of {', '.join(HARDWARE_COMPATIBILITY)}, "
                f"got {self.hardware_compatibility!r}"
            )
        if not 0 <= self.builder_optimization_level <= 5:
            raise ProfileError(f"builder_optimization_level must be 0..5, got {self.builder_optimization_level}")
        if self.workspace_mib < 1:
            raise ProfileError(f"workspace_mib must be at least 1, got {self.workspace_mib}")
        if self.precision == Precision.INT8 and not self.calibration:
            raise ProfileError("precision = 'int8' needs calibration data: set calibration = 'DIR' (or 'demo')")

    def _check_hardware(self) -> None:
        cc = self.cc
        if cc is not None and cc < MIN_CC[self.precision]:
            need = ".".join(map(str, MIN_CC[self.precision]))
            raise ProfileError(
                f"precision = {self.precision!r} needs compute capability >= {need}, "
                f"but compute_capability = {self.compute_capability!r}"
            )
        if self.dla_core not in (-1, 0, 1):
            raise ProfileError(f"dla_core must be -1 (none), 0 or 1, got {self.dla_core}")
        if self.dla_core >= 0 and self.compute_capability not in JETSON_CC:
            raise ProfileError(f"dla_core = {self.dla_core} needs a Jetson GPU (compute_capability 7.2 or 8.7)")
        if self.dla_core >= 0 and self.precision not in DLA_PRECISIONS:
            raise ProfileError(f"dla_core = {self.dla_core} needs precision fp16 or int8, got {self.precision!r}")
        if self.dla_core >= 0 and not self.batch.min == self.batch.opt == self.batch.max:
            raise ProfileError(
                f"dla_core = {self.dla_core} needs a static batch (batch.min = batch.opt = batch.max): DLA runs "
                f"fixed shapes only, so with min={self.batch.min} opt={self.batch.opt} max={self.batch.max} "
                "every layer would fall back to the GPU"
            )
        min_cc = HARDWARE_MIN_CC.get(self.hardware_compatibility)
        if min_cc and cc is not None and cc < min_cc:
            raise ProfileError(
                f"hardware_compatibility = {self.hardware_compatibility!r} needs compute capability >= "
                f"{min_cc[0]}.{min_cc[1]}, got {self.compute_capability!r}"
            )

    def _check_library(self) -> None:
        """What the library cannot do: TensorRT-RTX ignores hardware-compatibility levels, DLA
        and timing caches, and builds only for the compute capabilities it names."""
        if self.library not in LIBRARIES:
            raise ProfileError(f"library must be one of {', '.join(LIBRARIES)}, got {self.library!r}")
        lib = LIBRARIES[self.library]
        if lib.hardware_compatibility and lib.dla and lib.timing_cache:
            return
        if self.hardware_compatibility != "none":
            raise ProfileError(f"library = {self.library!r} has no hardware compatibility levels: set 'none'")
        if self.dla_core >= 0:
            raise ProfileError(f"library = {self.library!r} has no DLA: set dla_core = -1")
        if self.timing_cache:
            raise ProfileError(f"library = {self.library!r}: timing caches are no-ops there, set timing_cache = false")
        if self.compute_capability is not None and self.compute_capability not in lib.compute_targets:
            raise ProfileError(
                f"library = {self.library!r} builds for compute capability {', '.join(lib.compute_targets)}, "
                f"got {self.compute_capability!r}"
            )
        if self.precision not in lib.builder_flags and self.precision not in ONNX_PRECISIONS:
            raise ProfileError(
                f"library = {self.library!r} builds strongly typed networks from the ONNX: precision must be "
                f"one of {', '.join(ONNX_PRECISIONS)}, got {self.precision!r}"
            )

    @property
    def cc(self) -> tuple[int, int] | None:
        if self.compute_capability is None:
            return None
        match = re.fullmatch(r"(\d+)\.(\d+)", str(self.compute_capability))
        if not match:
            raise ProfileError(f"compute_capability must look like '8.7', got {self.compute_capability!r}")
        return int(match.group(1)), int(match.group(2))

    @property
    def workspace_bytes(self) -> int:
        return self.workspace_mib * 1024 * 1024


def check_profile_name(name: str, hint: str = "") -> None:
    """A profile's name becomes ``engines/<name>/`` and a word in ``build_<name>.sh``: safe names only."""
    if not is_safe_name(name):
        raise ProfileError(f"profile name {printable(str(name))!r} is not a safe name: use {SAFE_NAME_TEXT}{hint}")


def profile_from_dict(name: str, data: Mapping[str, Any], path: Path | None = None) -> Profile:
    """Build a ``Profile`` from a profile file's TOML data (any values: ``Profile`` checks each
    one's type), rejecting an unsafe name and unknown keys by name."""
    check_profile_name(name)
    known = {f.name for f in fields(Profile)} - {"name", "path"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ProfileError(f"profile {name!r}: unknown key {unknown[0]!r}; valid keys: {', '.join(sorted(known))}")
    values = dict(data)
    library = LIBRARIES.get(str(values.get("library", TENSORRT.key)))
    if library is not None and "tensorrt" not in values:  # the library's own version numbers
        values["tensorrt"] = library.versions
    batch = values.pop("batch", {})
    if not isinstance(batch, dict):
        raise ProfileError(f"profile {name!r}: batch must be a table with min, opt and max")
    extra = sorted(set(batch) - {"min", "opt", "max"})
    if extra:
        raise ProfileError(
            f"profile {name!r}: unknown key 'batch.{extra[0]}'; valid keys: batch.min, batch.opt, batch.max"
        )
    try:
        return Profile(name=name, batch=BatchRange(**batch), path=path, **values)
    except ProfileError as exc:
        raise ProfileError(f"profile {name!r}: {exc}") from None
    except TypeError as exc:
        raise ProfileError(f"profile {name!r}: {exc}") from None


def available_profiles(folder: Path = PROFILE_DIR) -> list[Path]:
    return sorted(folder.glob("*.toml")) if folder.is_dir() else []


def load_profile(name_or_path: str | Path, folder: Path = PROFILE_DIR) -> Profile:
    """A shipped profile by name (``jetson-orin-nano``) or a user's ``.toml`` file."""
    text = str(name_or_path)
    if text.endswith(".toml"):  # a file's stem names its profile
        check_profile_name(Path(text).stem, " (a profile file's stem is its name: rename the file)")
    else:  # a shipped profile's name, never a path out of the folder
        check_profile_name(text, " (or pass a path to a .toml file)")
    path = Path(text) if text.endswith(".toml") else folder / f"{text}.toml"
    if not path.is_file():
        names = ", ".join(p.stem for p in available_profiles(folder))
        raise ProfileError(f"no profile {text!r}; shipped profiles: {names} (or pass a path to a .toml file)")
    try:
        if path.stat().st_size > 1 << 20:
            raise ProfileError(f"profile {path} is larger than 1 MB: not a profile")
        data = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ProfileError(f"cannot read profile {path}: {exc}") from exc
    except RecursionError as exc:
        raise ProfileError(f"cannot read profile {path}: nested too deeply") from exc
    return profile_from_dict(path.stem, data, path)
