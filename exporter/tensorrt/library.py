"""Every difference between TensorRT and TensorRT-RTX, in one frozen record per library.

TensorRT-RTX (PyPI: ``tensorrt-rtx-cu12-libs`` + ``tensorrt-rtx-cu12-bindings``, module
``tensorrt_rtx_bindings``) mirrors TensorRT's Python API, but (checked on 1.7.1.116):

- every network is strongly typed (``create_network(0).flags == 1``): there is no
  ``BuilderFlag.FP16/INT8/BF16/FP8`` nor ``OBEY_PRECISION_CONSTRAINTS``, and ``ILayer`` has neither
  ``precision`` nor ``set_output_type``: precision comes from the ONNX;
- it builds serialized engines on a CPU with no GPU and no driver, for compute-capability targets
  (``set_compute_capability``): 7.5, 8.0, 8.6, 8.9, 12.0, 12.1 (7.5 refuses FP32 GEMMs);
- hardware-compatibility levels are accepted and ignored (a warning); DLA settings are accepted
  and ignored silently; timing-cache calls are deprecated no-ops (a ``DeprecationWarning``);
- its version numbers (1.x) are its own: never compared with TensorRT's.

A library is recognised by the module that imports, never by its version number.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from exporter.core.errors import EnvironmentMissing, UsageError


@dataclass(frozen=True, eq=False)  # one instance per library: compared and hashed by identity
class Library:
    """What one library can do. ``strong_from``: the first version that builds strongly typed
    networks (None: every version); ``strong_flag``: whether ``STRONGLY_TYPED`` must be passed
    from ``strong_from`` until ``strong_by_default_from``; ``builder_flags``: the precision flags
    of ``BuilderFlag`` it has (weak typing); ``compute_targets``: compute capability → member of
    ``ComputeCapability`` (empty: it builds for the GPU it runs on)."""

    key: str  # a profile's ``library`` value
    name: str  # for people: "TensorRT" | "TensorRT-RTX"
    module: str  # what ``import`` takes
    install: str  # how to get it
    min_version: tuple[int, int]
    versions: str  # the default range of a profile for this library
    strong_from: tuple[int, int] | None
    strong_by_default_from: tuple[int, int] | None
    builder_flags: frozenset[str]
    hardware_compatibility: bool
    dla: bool
    timing_cache: bool
    needs_gpu_to_build: bool
    trtexec: bool  # the trtexec script is for this library
    compute_targets: dict[str, str] = field(default_factory=dict)

    def strongly_typed(self, version: tuple[int, int]) -> bool:
        return self.strong_from is None or version >= self.strong_from

    def passes_strong_flag(self, version: tuple[int, int]) -> bool:
        """``NetworkDefinitionCreationFlag.STRONGLY_TYPED`` is passed (10.12 <= TensorRT < 11 only)."""
        if self.strong_from is None or self.strong_by_default_from is None:
            return False
        return self.strong_from <= version < self.strong_by_default_from

    def weak_flags(self, version: tuple[int, int]) -> bool:
        """Builder precision flags and layer-precision pinning are used (weak typing)."""
        return not self.strongly_typed(version) and bool(self.builder_flags)


TENSORRT = Library(
    key="tensorrt",
    name="TensorRT",
    module="tensorrt",
    install="pip install tensorrt, or JetPack on a Jetson",
    min_version=(10, 0),
    versions=">=10.0,<12",
    strong_from=(10, 12),  # weak typing deprecated from here, removed in 11
    strong_by_default_from=(11, 0),  # STRONGLY_TYPED: a deprecated no-op
    builder_flags=frozenset({"fp16", "int8", "bf16", "fp8", "tf32"}),
    hardware_compatibility=True,
    dla=True,
    timing_cache=True,
    needs_gpu_to_build=True,
    trtexec=True,
)

# Pinned in pyproject's ``rtx`` extra; engines record the version that built them.
RTX_PACKAGES = ("tensorrt-rtx-cu12-libs==1.7.1.116", "tensorrt-rtx-cu12-bindings==1.7.1.116")

TENSORRT_RTX = Library(
    key="tensorrt-rtx",
    name="TensorRT-RTX",
    module="tensorrt_rtx_bindings",  # every install has it (the tensorrt-rtx-cu12 sdist's module wraps it)
    install="pip install 'flexiexport[rtx]' (Linux x86_64: " + " ".join(RTX_PACKAGES) + ")",
    min_version=(1, 0),
    versions=">=1.7,<2",
    strong_from=None,
    strong_by_default_from=None,
    builder_flags=frozenset({"tf32"}),
    hardware_compatibility=False,
    dla=False,
    timing_cache=False,  # deprecated no-ops since 1.2
    needs_gpu_to_build=False,
    trtexec=False,  # its CLI is tensorrt_rtx, with other flags
    compute_targets={"8.0": "SM80", "8.6": "SM86", "8.9": "SM89", "12.0": "SM120", "12.1": "SM121"},
)

LIBRARIES = {lib.key: lib for lib in (TENSORRT, TENSORRT_RTX)}


def library_named(key: str) -> Library:
    """The library a profile's ``library`` value names."""
    try:
        return LIBRARIES[key]
    except KeyError:
        raise UsageError(f"library must be one of {', '.join(LIBRARIES)}, got {key!r}") from None


def library_of(info: Mapping[str, object]) -> Library:
    """The library a sidecar or manifest record says built an engine (records before the key: TensorRT)."""
    name = info.get("library", TENSORRT.name)
    return TENSORRT_RTX if name == TENSORRT_RTX.name else TENSORRT


def import_library(library: Library = TENSORRT) -> Any:
    """The library's real module, or ``EnvironmentMissing`` saying why not. ``tensorrt-stubs``
    installs a ``tensorrt/`` folder of ``.pyi`` files, which imports as an empty namespace
    package: a real library is recognised by its ``Builder``."""
    try:
        module = importlib.import_module(library.module)
    except ImportError as exc:
        raise EnvironmentMissing(f"{library.name} is not installed ({library.install})") from exc
    if not hasattr(module, "Builder"):
        raise EnvironmentMissing(f"the {library.module!r} package here holds only type stubs, not {library.name}")
    return module


def library_problem(library: Library) -> str | None:
    """Why ``library`` cannot be imported here, or None."""
    try:
        import_library(library)
    except EnvironmentMissing as exc:
        return str(exc)
    return None


def compute_target(library: Library, cc: str) -> str:
    """The ``ComputeCapability`` member for ``cc``; ``UsageError`` naming the ones it has."""
    if cc not in library.compute_targets:
        raise UsageError(f"{library.name} builds for compute capability {', '.join(library.compute_targets)}; not {cc}")
    return library.compute_targets[cc]
