"""The manifest's parts, typed and bounded (pydantic, strict): ``VariantRecord`` and what each
file and check records (engine sets in ``exporter.bundle.engines``). ``exporter.bundle.schema``
puts them together into ``Manifest``; the same classes are what a reader gets and what a writer
builds.

An optional entry is written ``{}`` when absent (as every bundle has written it) and is ``None`` in
Python (``Entry[X]``), so ``if record.reduced:`` reads as it did and narrows the type."""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar, Union

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    JsonValue,
    SerializerFunctionWrapHandler,
    ValidationInfo,
    WrapSerializer,
)
from pydantic_core import PydanticCustomError
from typing_extensions import Self

from exporter.bundle.manifest import static_batch
from exporter.core.names import SAFE_NAME
from exporter.parity.tolerance import Tolerance

if TYPE_CHECKING:
    from exporter.parity.compare import Comparison

MAX_SIDE = 16384  # pixels; the memory estimate refuses far smaller sizes on real machines


MAX_PATCH = 4096


def relative_path(text: str) -> str:
    """A plain relative POSIX path: no absolute path, no ``..``/``.``/empty part, no backslash or NUL."""
    parts = text.split("/")
    if not text or text.startswith("/") or "\\" in text or "\x00" in text or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"must be a plain path inside the bundle, got {text!r}")
    return text


RelPath = Annotated[str, AfterValidator(relative_path)]
Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
SafeName = Annotated[str, Field(pattern=f"^{SAFE_NAME.pattern}$")]
Side = Annotated[int, Field(ge=1, le=MAX_SIDE)]
PatchSide = Annotated[int, Field(ge=1, le=MAX_PATCH)]
Count = Annotated[int, Field(ge=0)]
TensorName = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_.:/-]{0,127}$")]
Dim = Annotated[int, Field(ge=1, le=1 << 20)] | Annotated[str, Field(max_length=64)]


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow", frozen=True)

    def but(self, **changes: Any) -> Self:
        """A copy with ``changes``, validated as a reader would validate it (pydantic's
        ``model_copy`` validates nothing); the keys it was built with stay the keys it writes."""
        data = self.model_copy(update=changes).model_dump(by_alias=True, exclude_unset=True)
        return self.model_validate(data)

    def to_dict(self) -> dict[str, JsonValue]:
        """The record as JSON data: the keys it was built or read with (a default it never set is
        not written), ``{}`` for an absent entry."""
        return self.model_dump(mode="json", by_alias=True, exclude_unset=True)


def _absent_is_none(value: Any, info: ValidationInfo) -> None:
    """``{}`` (an absent entry as written) is None, and so is None in Python; a JSON ``null`` is
    not an entry (the entry's own branch says what it lacks)."""
    if (isinstance(value, dict) and not value) or (value is None and info.mode == "python"):
        return None
    raise PydanticCustomError("entry", "Input should be an object")


def _none_is_empty(value: Any, handler: SerializerFunctionWrapHandler) -> Any:
    return {} if value is None else handler(value)


T = TypeVar("T")
# The validator sits on the None branch only: the entry's own branch keeps JSON mode's strictness.
Entry = Annotated[Union[T, Annotated[None, BeforeValidator(_absent_is_none)]], WrapSerializer(_none_is_empty)]


def _dims_after_batch(shape: tuple[int | str, ...]) -> tuple[int | str, ...]:
    """Only the batch may be symbolic (``"batch"``), and in a dynamic-resolution input the height
    and width (``[batch, 3, height, width]``): every other dim is a number we use."""
    named = [i for i, d in enumerate(shape) if not isinstance(d, int)]
    if any(i > 0 for i in named) and not (len(shape) == 4 and set(named) - {0} <= {2, 3}):
        raise ValueError(f"only the batch, height and width dimensions may be named, got {list(shape)!r}")
    return shape


class TensorSpec(_Strict):
    name: TensorName
    dtype: str
    shape: Annotated[tuple[Dim, ...], Field(min_length=1, max_length=8), AfterValidator(_dims_after_batch)]


class ParityStats(_Strict):
    """The numbers every command prints of a comparison (the rest may follow)."""

    samples: Count
    max_abs: float
    p99_abs: float
    min_cosine: float
    top1_agreement: float | None = None  # None (or absent): a feature model, judged by cosine and |Δ| only
    top5_agreement: float | None = None
    failures: list[str] = []
    mean_abs: float | None = None
    max_rel: float | None = None
    mean_rel: float | None = None
    p99_rel: float | None = None
    allclose: bool | None = None
    top2_gap: float | None = None
    flipped_top2_gap: float | None = None

    @classmethod
    def of(cls, comparison: Comparison, **more: Any) -> Self:
        """A comparison's numbers and verdict as the manifest records them."""
        return cls.model_validate({**comparison.to_dict(), **more})


class VariantParity(ParityStats):
    passed: bool
    inputs: str = ""  # what the inputs were (the variant's own check)
    error: str = ""  # why no comparison was made (an export or runtime failure)


class TrtLint(_Strict):
    passed: bool
    issues: list[str]
    opset: int | None = None
    source: str = ""


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

    @classmethod
    def of(cls, tolerance: Tolerance) -> ToleranceRecord:
        return cls(**asdict(tolerance))

    def judge(self) -> Tolerance:
        """The tolerance this file was judged with: every checked file's record carries its own."""
        return Tolerance(**self.model_dump())


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
    shapes: dict[str, list[int]] = {}  # min/opt/max input shapes the profile was built for
    compute_capability: str = ""


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
    opset: int | None = None
    exporter: str | None = None
    num_nodes: Count | None = None
    op_counts: dict[str, int] = {}
    size_bytes: Count | None = None


class ReducedEntry(_Strict):
    precision: Literal["fp16", "int8"]
    path: RelPath
    sha256: Sha256
    external_data: RelPath | None = None
    bytes: Count
    tolerance: ToleranceRecord
    parity: ParityStats
    status: Literal["passed", "failed"]
    tensorrt_preflight: Preflight | PreflightSkipped | None = None
    calibration: str = ""  # int8: what calibrated it
    shared_weights: bool | None = None
    fp32_nodes: list[str] = []  # int8: the nodes kept in float (their inputs too far off in int8)
    seconds: float | None = None


class RandomInputs(_Strict):
    count: Annotated[int, Field(ge=0, le=100_000)]
    seed: Annotated[int, Field(ge=0, le=2**63 - 1)]
    generator: str = ""


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
    from_: str = Field(default="", alias="from")


class NativeSkipped(_Strict):
    skipped: str


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
    img_size_policy: str | list[int] | list[list[int]] = ""  # native, auto, dynamic:MIN-MAX, [h, w] or a grid
    impossible_variants: list[str] = []
    parity_inputs: str = ""
    calib_sha256: str | None = None
    threads: int | None = None
    patch_sizes: list[str] = []


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
    family: str = ""
    embed_dim: Annotated[int, Field(ge=1, le=1 << 16)]
    depth: Annotated[int, Field(ge=1, le=4096)]
    num_classes: Annotated[int, Field(ge=0, le=10_000_000)]  # 0: a feature model
    in_chans: Annotated[int, Field(ge=1, le=4096)] = 3
    kernel_size: tuple[PatchSide, PatchSide]
    pos_grid: tuple[Side, Side]
    img_size: tuple[Side, Side] | None = None
    num_pos_prefix_tokens: Count = 0
    model_args: dict[str, Any] = {}  # timm's VisionTransformer arguments: free-form by design


class SourceRecord(_Strict):
    name: str
    kind: str
    path: str | None
    sha256: Sha256 | None
    architecture: Architecture
    format: str | None = None
    container: str | None = None
    dtype: str | None = None


class PreprocessingRecord(_Strict):
    mean: tuple[float, float, float]
    std: tuple[Annotated[float, Field(gt=0)], Annotated[float, Field(gt=0)], Annotated[float, Field(gt=0)]]
    interpolation: str
    crop_pct: Annotated[float, Field(ge=0.01, le=1)]  # runtime.preprocess.MIN_CROP_PCT
    crop_mode: str = "center"
    source: str = ""
    input: dict[str, Any] = {}  # what the ONNX input is: name, layout, dtype, channels, range (free text)


class SharedWeights(_Strict):
    path: RelPath
    sha256: Sha256
    bytes: Count | None = None
    tensors: Count | None = None
    bundle_onnx_bytes_before: Count | None = None
    bundle_onnx_bytes_after: Count | None = None


class VariantRecord(_Strict):
    """One variant in the manifest. ``status`` is ``passed``, ``failed`` or ``error``."""

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
    trt_lint: Entry[TrtLint] = None
    reduced: Entry[ReducedEntry] = None
    reference: Entry[ReferenceEntry] = None
    dynamic: Entry[DynamicEntry] = None
    native_agreement: Entry[NativeAgreement | NativeSkipped] = None  # absent before it was measured

    @property
    def img_range(self) -> tuple[tuple[int, int], tuple[int, int]] | None:
        """A dynamic-resolution variant's smallest and largest image size; None for a fixed one."""
        return (self.dynamic.min, self.dynamic.max) if self.dynamic else None

    @property
    def static_batch(self) -> int | None:
        """The ONNX's fixed batch (``--batch N``), or None for a dynamic batch."""
        return static_batch(self.onnx.inputs[0].shape)

    def preflights(self) -> list[tuple[str, Preflight | PreflightSkipped]]:
        """(file path, TensorRT preflight record) of the variant's ONNX files that have one, fp32 first."""
        entries = (self.onnx, self.reduced)
        return [(e.path, e.tensorrt_preflight) for e in entries if e and e.tensorrt_preflight is not None]

    @property
    def preflight_failed(self) -> bool:
        """A file TensorRT's parser or builder refused (skipped or absent is not a failure)."""
        return any(isinstance(p, Preflight) and not p.ok for _, p in self.preflights())

    def files(self) -> list[tuple[str, str]]:
        """(relative path, sha256) of the variant's own files: ONNX, fp16/int8 ONNX, reference."""
        found = [(self.onnx.path, self.onnx.sha256)]
        found += [(e.path, e.sha256) for e in (self.reduced, self.reference) if e]
        found += [(c.reference.path, c.reference.sha256) for c in (self.dynamic.checks if self.dynamic else ())]
        return found


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
    parity: Entry[VariantParity] = None
    output: str = ""
    inputs: str = ""
