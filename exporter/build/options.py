"""What a build was asked for (``BuildOptions``, checked when made) and what it gives back."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from exporter.build.export import ExportOptions
from exporter.build.resize import ResizeOverride
from exporter.build.variant import ImagePolicy
from exporter.bundle.schema import Manifest
from exporter.core.errors import UsageError, param
from exporter.core.machine import cap_threads
from exporter.core.precision import Precision
from exporter.core.sizes import Size2, SizeRange, format_range
from exporter.parity.tolerance import TOLERANCES, Tolerance
from exporter.source.model import SourceSpec

STAGES = ("resize", "export", "parity")


MAX_SEED = 2**32 - 1  # numpy takes any non-negative seed; this range is portable (torch, legacy numpy)


@dataclass(frozen=True)
class BuildOptions:
    """Everything ``flexiexport build`` was asked to do."""

    patch_sizes: tuple[Size2, ...]
    source: SourceSpec = field(default_factory=SourceSpec)
    img_size: ImagePolicy = "native"
    img_sizes: tuple[Size2, ...] = ()  # --img-size 48 64 96: a grid, one variant per (patch, size)
    img_range: SizeRange | None = None  # --img-size dynamic:MIN-MAX: one dynamic-resolution ONNX per patch
    out: Path | None = None
    export: ExportOptions = field(default_factory=ExportOptions)
    force: bool = False
    resume: bool = False
    calib_dir: Path | None = None
    parity_samples: int = 16
    seed: int = 0
    patch_resize: ResizeOverride = field(default_factory=ResizeOverride)  # parts left None: the family's
    pos_resize: ResizeOverride = field(default_factory=ResizeOverride)
    tolerance: Tolerance = TOLERANCES["fp32"]
    threads: int | None = None
    profile: str | None = None
    engines: str = "auto"
    precision: Precision = Precision.FP32
    shared_weights: bool = False
    labels: Path | None = None  # --labels FILE: class names, one per line
    precision_given: bool = False  # --precision on the command line wins over the profile's
    strict: bool = False  # --strict: any assumed value (exporter.core.assumptions) is an error

    def __post_init__(self) -> None:
        object.__setattr__(self, "precision", Precision.parse(self.precision))
        if self.engines not in ENGINE_MODES:
            raise UsageError(f"{param('engines')} must be one of {', '.join(ENGINE_MODES)}, got {self.engines!r}")
        if self.engines == "required" and not self.profile:
            raise UsageError(f"{param('engines')} required needs {param('profile')} NAME (see 'flexiexport profiles')")
        if not self.patch_sizes:
            raise UsageError(f"give at least one patch size, e.g. {param('patch_sizes')} 8 16 32")
        unique = tuple(dict.fromkeys(self.patch_sizes))
        object.__setattr__(self, "patch_sizes", unique)
        sizes = tuple(dict.fromkeys(self.img_sizes))
        if len(sizes) == 1:  # one size is today's fixed size, with today's labels
            object.__setattr__(self, "img_size", sizes[0])
        object.__setattr__(self, "img_sizes", sizes if len(sizes) > 1 else ())
        if self.img_range is not None:
            what = f"{param('img_range')} dynamic:{format_range(self.img_range)}"
            if self.img_sizes:
                raise UsageError(f"{what} stands alone: give either a range or image sizes")
            if self.precision == Precision.INT8:
                raise UsageError(
                    f"{what} builds fp32 and fp16 ONNX "
                    f"(int8 is calibrated at one size: use a fixed {param('img_size')})"
                )
            if self.export.exporter != "torchscript":
                raise UsageError(f"{what} exports with {param('exporter')} torchscript only")
        if self.parity_samples < 1:
            raise UsageError(f"{param('parity_samples')} must be at least 1, got {self.parity_samples}")
        if not 0 <= self.seed <= MAX_SEED:
            raise UsageError(f"{param('seed')} must be between 0 and {MAX_SEED}, got {self.seed}")
        object.__setattr__(self, "threads", cap_threads(self.threads))


@dataclass(frozen=True)
class BuildResult:
    bundle: Path
    manifest: Manifest
    seconds: float
    stage_seconds: dict[str, float]


ENGINE_MODES = ("auto", "required", "skip")
