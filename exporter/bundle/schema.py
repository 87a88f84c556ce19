"""THE manifest, as its schema: every field typed and bounded (pydantic, unknown keys refused),
the first error named by its place; ``parse_manifest`` is the one way a manifest is read."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from exporter.bundle.manifest import (
    MANIFEST,
    SCHEMA_VERSION,
    Manifest,
    upgrade_manifest,
)
from exporter.bundle.values import check_values
from exporter.core.errors import BundleError
from exporter.core.names import SAFE_NAME, printable

MAX_SIDE = 16384  # pixels; the memory estimate refuses far smaller sizes on real machines


MAX_PATCH = 4096


def _relative_path(text: str) -> str:
    """A plain relative POSIX path: no absolute path, no ``..``/``.``/empty part, no backslash or NUL."""
    parts = text.split("/")
    if not text or text.startswith("/") or "\\" in text or "\x00" in text or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"must be a plain path inside the bundle, got {text!r}")
    return text


RelPath = Annotated[str, AfterValidator(_relative_path)]
Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
SafeName = Annotated[str, Field(pattern=f"^{SAFE_NAME.pattern}$")]
Side = Annotated[int, Field(ge=1, le=MAX_SIDE)]
PatchSide = Annotated[int, Field(ge=1, le=MAX_PATCH)]
Count = Annotated[int, Field(ge=0)]
TensorName = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_.:/-]{0,127}$")]
Dim = Annotated[int, Field(ge=1, le=1 << 20)] | Annotated[str, Field(max_length=64)]


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow", frozen=True)


def _dims_after_batch(shape: list[int | str]) -> list[int | str]:
    """Only the batch may be symbolic (``"batch"``), and in a dynamic-resolution input the height
    and width (``[batch, 3, height, width]``): every other dim is a number we use."""
    named = [i for i, d in enumerate(shape) if not isinstance(d, int)]
    if any(i > 0 for i in named) and not (len(shape) == 4 and set(named) - {0} <= {2, 3}):
        raise ValueError(f"only the batch, height and width dimensions may be named, got {shape!r}")
    return shape


class TensorSpec(_Strict):
    name: TensorName
    dtype: str
    shape: Annotated[list[Dim], Field(min_length=1, max_length=8), AfterValidator(_dims_after_batch)]


class Empty(BaseModel):
    """``{}``: what an absent optional entry is written as, and nothing else."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class ParityStats(_Strict):
    """The numbers every command prints of a comparison (the rest may follow)."""

    samples: Count
    max_abs: float
    p99_abs: float
    min_cosine: float
    top1_agreement: float | None = None  # None (or absent): a feature model, judged by cosine and |Δ| only
    top5_agreement: float | None = None
    failures: list[str] = []


class VariantParity(ParityStats):
    passed: bool


class TrtLint(_Strict):
    passed: bool
    issues: list[str]


class ToleranceRecord(_Strict):
    """Exactly ``validate.Tolerance``'s fields: the record is passed to it as keywords (finite:
    an infinite atol would pass any output)."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True, allow_inf_nan=False)
    name: str
    atol: Annotated[float, Field(ge=0)] | None
    rtol: Annotated[float, Field(ge=0)]
    min_cosine: Annotated[float, Field(ge=0, le=1)]
    min_top1: Annotated[float, Field(ge=0, le=1)]
    p99_of_range: Annotated[float, Field(ge=0)] | None = None
    max_accuracy_drop: Annotated[float, Field(ge=0, le=1)] | None = None


class PreflightError(_Strict):
    node: Annotated[str, Field(max_length=500)]
    op: Annotated[str, Field(max_length=500)]
    code: Annotated[str, Field(max_length=500)] = ""
    message: Annotated[str, Field(max_length=500)]


class Preflight(_Strict):
    """What TensorRT's own ONNX parser and builder (TensorRT-RTX, on the CPU) made of one file."""

    library: Annotated[str, Field(max_length=64)]
    version: Annotated[str, Field(max_length=64)]
    ok: bool
    stage: Literal["parse", "build", "built"]
    layers: Count
    parse_seconds: Annotated[float, Field(ge=0)]
    build_seconds: Annotated[float, Field(ge=0)]
    engine_bytes: Count
    engine_sha256: Sha256 | None = None
    errors: list[PreflightError] = Field(default=[], max_length=20)


class PreflightSkipped(_Strict):
    skipped: Annotated[str, Field(max_length=1000)]


class OnnxEntry(_Strict):
    path: RelPath
    sha256: Sha256
    inputs: list[TensorSpec] = Field(min_length=1, max_length=1)
    outputs: list[TensorSpec] = Field(min_length=1, max_length=1)
    external_data: RelPath | None = None
    tolerance: ToleranceRecord
    tensorrt_preflight: Preflight | PreflightSkipped | None = None  # absent in bundles built before it


class ReducedEntry(_Strict):
    precision: Literal["fp16", "int8"]
    path: RelPath
    sha256: Sha256
    bytes: Count
    tolerance: ToleranceRecord
    parity: ParityStats
    status: Literal["passed", "failed"]
    tensorrt_preflight: Preflight | PreflightSkipped | None = None


class RandomInputs(_Strict):
    count: Annotated[int, Field(ge=0, le=100_000)]
    seed: Annotated[int, Field(ge=0, le=2**63 - 1)]


class RealInputs(_Strict):
    count: Annotated[int, Field(ge=0, le=100_000)]
    from_: str = Field(alias="from")


class ReferenceEntry(_Strict):
    path: RelPath
    sha256: Sha256
    random: RandomInputs
    real: RealInputs


class DynamicCheck(_Strict):
    size: Literal["min", "max"]
    img_size: tuple[Side, Side]
    parity: VariantParity
    reference: ReferenceEntry


class DynamicEntry(_Strict):
    """``--img-size dynamic:MIN-MAX``: the sizes the ONNX takes and its checks beyond opt."""

    min: tuple[Side, Side]
    opt: tuple[Side, Side]
    max: tuple[Side, Side]
    multiple_of: tuple[PatchSide, PatchSide]
    pos_resample: str
    checks: list[DynamicCheck] = Field(min_length=2, max_length=2)
    status: Literal["passed", "failed"]


class NativeAgreement(_Strict):
    """The variant against the source at its own patch and image size, on the build's real images."""

    against: str
    patch_size: tuple[PatchSide, PatchSide]
    img_size: tuple[Side, Side]
    images: Annotated[int, Field(ge=1, le=100_000)]
    native: bool
    min_cosine: Annotated[float, Field(ge=-1, le=1)]
    mean_cosine: Annotated[float, Field(ge=-1, le=1)]
    top1_agreement: Annotated[float, Field(ge=0, le=1)] | None = None  # None: a feature model


class NativeSkipped(_Strict):
    skipped: str


class VariantSchema(_Strict):
    label: SafeName
    patch_size: tuple[PatchSide, PatchSide]
    img_size: tuple[Side, Side]
    grid: tuple[Side, Side]
    tokens: Annotated[int, Field(ge=1, le=(MAX_SIDE**2) + 64)]
    gflops: Annotated[float, Field(ge=0)]
    patch_resize: Annotated[str, Field(pattern=r"^(bilinear|bicubic|nearest|area)(\+antialias)?$")]
    pos_resize: Annotated[str, Field(pattern=r"^(bilinear|bicubic|nearest|area)(\+antialias)?$")]
    onnx: OnnxEntry
    parity: VariantParity
    status: Literal["passed", "failed", "error"]
    export_seconds: float
    parity_seconds: float
    input_key: str
    resumed: bool = False
    trt_lint: TrtLint | Empty = Empty()
    reduced: ReducedEntry | Empty = Empty()
    reference: ReferenceEntry | Empty = Empty()
    dynamic: DynamicEntry | Empty = Empty()
    native_agreement: NativeAgreement | NativeSkipped | Empty = Empty()  # absent before it was measured


class ExportRecord(_Strict):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)  # passed to ExportOptions as keywords
    opset: Annotated[int, Field(ge=7, le=30)]
    batch: Literal["dynamic"] | Annotated[int, Field(ge=1, le=4096)]
    exporter: Literal["torchscript", "dynamo"]


class OptionsRecord(_Strict):
    export: ExportRecord
    parity_samples: Annotated[int, Field(ge=1, le=100_000)]
    seed: Annotated[int, Field(ge=0, le=2**63 - 1)]
    calib_dir: str | None = None


class AssumptionRecord(_Strict):
    """``exporter.core.assumptions.Assumption``: a value the build took without the checkpoint saying it."""

    what: Annotated[str, Field(max_length=200)]
    value: Annotated[str, Field(max_length=2000)]
    settle: Annotated[str, Field(max_length=2000)]


class Architecture(_Strict):
    model_name: str | None
    num_heads: Annotated[int, Field(ge=1, le=4096)]
    summary: str
    assumed: list[Annotated[str, Field(max_length=4000)]] = Field(default=[], max_length=256)  # as text, always written
    assumptions: list[AssumptionRecord] = Field(default=[], max_length=256)  # the same, structured (newer builds)


class SourceRecord(_Strict):
    name: str
    kind: str
    path: str | None
    sha256: Sha256 | None
    architecture: Architecture


class PreprocessingRecord(_Strict):
    mean: tuple[float, float, float]
    std: tuple[Annotated[float, Field(gt=0)], Annotated[float, Field(gt=0)], Annotated[float, Field(gt=0)]]
    interpolation: str
    crop_pct: Annotated[float, Field(ge=0.01, le=1)]  # runtime.preprocess.MIN_CROP_PCT


class SharedWeights(_Strict):
    path: RelPath
    sha256: Sha256


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


class PendingEngines(_Strict):
    """Engines to build on the target: why, and how."""

    status: Literal["pending (build on target)"]
    profile: EngineProfile
    reason: str
    command: str
    script: RelPath | None = None  # TensorRT-RTX profiles have no trtexec script


class NotRunEngine(_Strict):
    engine: RelPath
    engine_sha256: Sha256
    onnx: RelPath
    status: Literal["not run"]
    build_seconds: float


class NotRunEngines(_Strict):
    """TensorRT-RTX engines built on a machine without a GPU: built, never run here."""

    status: Literal["built (not run)"]
    profile: EngineProfile
    reason: str
    library: str
    tensorrt: str
    compute_capability: str
    variants: dict[SafeName, NotRunEngine]


class BuiltEngines(_Strict):
    status: Literal["built", "failed"]
    profile: EngineProfile
    gpu: str
    compute_capability: Annotated[str, Field(pattern=r"^\d{1,2}\.\d{1,2}$")]
    tensorrt: str
    script: RelPath | None = None
    variants: dict[SafeName, EngineVariant]


EngineSet = Annotated[PendingEngines | NotRunEngines | BuiltEngines, Field(discriminator="status")]


class SourceParity(_Strict):
    """The native variant against the source framework's own model (``exporter.build.source_parity``)."""

    status: Literal["passed", "failed", "inferred", "skipped"]
    reference: str
    patch_size: tuple[PatchSide, PatchSide]
    img_size: tuple[Side, Side]
    tolerance: ToleranceRecord
    reason: str = ""
    variant: SafeName | None = None
    candidate: str = ""
    parity: VariantParity | Empty = Empty()


class ManifestSchema(_Strict):
    schema_version: Literal[1]
    name: SafeName
    created: str
    versions: dict[str, str]
    source: SourceRecord
    preprocessing: PreprocessingRecord
    options: OptionsRecord
    variants: list[VariantSchema] = Field(min_length=1, max_length=256)
    engines: dict[SafeName, EngineSet] = {}
    shared_weights: SharedWeights | Empty = Empty()
    labels: list[Annotated[str, Field(max_length=512)]] = Field(default=[], max_length=1_000_000)
    source_parity: SourceParity | Empty = Empty()  # absent in bundles built before the check


def _where(loc: Sequence[int | str]) -> str:
    """``('variants', 0, 'tokens')`` → ``variants[0].tokens``; a union's branch tags are dropped."""
    text = ""
    for part in loc:
        if isinstance(part, str) and (part in _BRANCHES or "[" in part):
            continue
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


_BRANCHES = {"int", "str", "float", "bool", "dict", "list", "tuple", "none", "constrained-int", "constrained-str"}


def _first_error(exc: ValidationError) -> str:
    """The first failing field, with what every alternative of a union would have accepted."""
    errors = exc.errors()
    where = _where(errors[0]["loc"])
    same = [e for e in errors if _where(e["loc"]) == where]
    wants = list(dict.fromkeys(e["msg"].removeprefix("Input should be ") for e in same))
    value = same[0].get("input")
    shown = printable(repr(value))[:80] if not isinstance(value, (dict, list)) else type(value).__name__
    others = len({_where(e["loc"]) for e in errors}) - 1
    more = f" (and {others} more)" if others else ""
    text = same[0]["msg"] if len(wants) == 1 else "Input should be " + " or ".join(wants)
    return f"{where}: {text}, got {shown}{more}"


def parse_manifest(text: str | bytes, where: str = MANIFEST) -> Manifest:
    """Validate manifest JSON against the schema, then build the ``Manifest`` records."""
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise BundleError(f"{where} is not valid JSON ({printable(str(exc))[:120]})") from exc
    if isinstance(data, dict) and data.get("schema_version") not in (None, SCHEMA_VERSION):
        raise BundleError(
            f"{where}: schema_version {printable(repr(data.get('schema_version')))[:40]} is not supported "
            f"(this flexiexport reads {SCHEMA_VERSION})"
        )
    data, older = upgrade_manifest(data, where)
    try:
        ManifestSchema.model_validate_json(json.dumps(data) if older else text)
    except ValidationError as exc:
        raise BundleError(f"{where} is malformed: {_first_error(exc)}") from exc
    labels = [v["label"] for v in data["variants"]]
    if len(set(labels)) != len(labels):
        raise BundleError(f"{where} is malformed: variant labels repeat ({', '.join(labels)})")
    check_values(data, where)  # what the fields say together: finite numbers, sizes that agree
    return Manifest.from_dict(data)
