"""The manifest's engine sets: TensorRT engines pending (built on the target), built and run,
or built by TensorRT-RTX on a machine without a GPU (never run there)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from exporter.bundle.records import ParityStats, RelPath, SafeName, Sha256, ToleranceRecord, _Strict


class EngineVariant(_Strict):
    engine: RelPath
    engine_sha256: Sha256
    onnx: RelPath
    status: Literal["passed", "failed"]
    build_seconds: float
    tolerance: ToleranceRecord
    parity: ParityStats


class BatchRecord(_Strict):
    min: Annotated[int, Field(ge=1)]
    opt: Annotated[int, Field(ge=1)]
    max: Annotated[int, Field(ge=1, le=4096)]


class EngineProfile(_Strict):
    name: SafeName
    batch: BatchRecord


class TimingCache(_Strict):
    path: RelPath
    sha256: Sha256


class _EngineSet(_Strict):
    script: RelPath | None = None  # the trtexec script (none for TensorRT-RTX profiles)
    timing_cache: TimingCache | None = None  # what the last engine build measured, for the next


class PendingEngines(_EngineSet):
    """Engines to build on the target: why, and how."""

    status: Literal["pending (build on target)"]
    profile: EngineProfile
    reason: str
    command: str

    @property
    def built(self) -> dict[str, EngineVariant | NotRunEngine]:
        """The engines of the set, by variant label: none yet."""
        return {}


class NotRunEngine(_Strict):
    engine: RelPath
    engine_sha256: Sha256
    onnx: RelPath
    status: Literal["not run"]
    build_seconds: float


class NotRunEngines(_EngineSet):
    """TensorRT-RTX engines built on a machine without a GPU: built, never run here."""

    status: Literal["built (not run)"]
    profile: EngineProfile
    reason: str
    library: str
    tensorrt: str
    compute_capability: str
    variants: dict[SafeName, NotRunEngine]

    @property
    def built(self) -> dict[str, EngineVariant | NotRunEngine]:
        """The engines of the set, by variant label."""
        return dict(self.variants)


class BuiltEngines(_EngineSet):
    status: Literal["built", "failed"]
    profile: EngineProfile
    gpu: str
    compute_capability: Annotated[str, Field(pattern=r"^\d{1,2}\.\d{1,2}$")]
    tensorrt: str
    variants: dict[SafeName, EngineVariant]
    library: str = ""

    @property
    def built(self) -> dict[str, EngineVariant | NotRunEngine]:
        """The engines of the set, by variant label."""
        return dict(self.variants)


EngineSet = Annotated[PendingEngines | NotRunEngines | BuiltEngines, Field(discriminator="status")]
