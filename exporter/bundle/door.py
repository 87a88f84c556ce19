"""The one door to a bundle on disk: open it, read and check its files, write and replace it.

A bundle is a trust boundary. Everything read from ``manifest.json`` is data:

- the manifest is parsed into typed records (pydantic v2, strict JSON mode): a wrong type or an
  out-of-range number is one ``BundleError`` naming the field (``variants[0].tokens``);
- every path in it must be a plain relative path (no absolute path, no ``..``) and must resolve,
  after symlinks, inside the bundle's own folder;
- a file's sha256 is checked against the manifest before any command uses it.

Writing: a new bundle (or model repository) is built in a staging folder beside its destination
and renamed into place. ``--force``/``--resume`` replace only a folder that is one of ours and
holds nothing we did not write, never one that holds or lies above a command's own inputs or the
current directory, never a mount point (nor a folder holding one). One writer per destination
(``exporter.core.locks``, held by the caller from its check to the end of the swap); the swap judges
the destination again and exchanges the folders in one step where the system can, and a reader
whose bundle was swapped out under it raises ``BundleReplaced`` rather than judge a mix. The
rename is shielded from SIGINT/SIGTERM/SIGHUP so an interrupt leaves either the old bundle or
the new one, and the message says which.

Why pydantic rather than msgspec: both validate JSON into typed records with located errors;
pydantic's constrained types (patterns, bounds, our own path validator) say the rules next to the
fields, it is the more widely kept of the two, and it ships wheels for every platform we deploy
to (x86-64, aarch64 for Jetson). Speed does not matter here: a manifest is a few kilobytes.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from exporter.bundle.manifest import MANIFEST, REPORT, SCHEMA_VERSION, Manifest, VariantRecord, upgrade_manifest, walk
from exporter.bundle.values import check_values
from exporter.core.errors import BundleError, BundleReplaced, Interrupted
from exporter.core.files import current_umask, sha256_file
from exporter.core.locks import process_alive
from exporter.core.mounts import is_mount_point, mounts_inside
from exporter.core.names import SAFE_NAME, printable
from exporter.core.precision import Precision

log = logging.getLogger(__name__)

# Files a command writes into a bundle after the build: accounted for when deciding whether a
# folder is one of ours (``--force`` may replace it).
ARTEFACTS = ("bench.json", "eval.json", "tradeoff.png", "latency.json")
REPOSITORY_MARKER = "flexiexport-repository.json"
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


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow", frozen=True)


def _dims_after_batch(shape: list[int | str]) -> list[int | str]:
    """Only the batch may be symbolic (``"batch"``), and in a dynamic-resolution input the height
    and width (``[batch, 3, height, width]``): every other dim is a number we use."""
    named = [i for i, d in enumerate(shape) if not isinstance(d, int)]
    if any(i > 0 for i in named) and not (len(shape) == 4 and set(named) - {0} <= {2, 3}):
        raise ValueError(f"only the batch, height and width dimensions may be named, got {shape!r}")
    return shape


Dim = Annotated[int, Field(ge=1, le=1 << 20)] | Annotated[str, Field(max_length=64)]


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


class OnnxEntry(_Strict):
    path: RelPath
    sha256: Sha256
    inputs: list[TensorSpec] = Field(min_length=1, max_length=1)
    outputs: list[TensorSpec] = Field(min_length=1, max_length=1)
    external_data: RelPath | None = None
    tolerance: ToleranceRecord


class ReducedEntry(_Strict):
    precision: Literal["fp16", "int8"]
    path: RelPath
    sha256: Sha256
    bytes: Count
    tolerance: ToleranceRecord
    parity: ParityStats
    status: Literal["passed", "failed"]


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
    script: RelPath


class BuiltEngines(_Strict):
    status: Literal["built", "failed"]
    profile: EngineProfile
    gpu: str
    compute_capability: Annotated[str, Field(pattern=r"^\d{1,2}\.\d{1,2}$")]
    tensorrt: str
    script: RelPath | None = None
    variants: dict[SafeName, EngineVariant]


EngineSet = Annotated[PendingEngines | BuiltEngines, Field(discriminator="status")]


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


def _inside(root: Path, rel: str) -> Path:
    """``root/rel`` when its real path lies inside ``root``'s real path; ``BundleError`` otherwise."""
    _relative_path(rel)  # the schema checked it already; a second look costs nothing
    real = Path(os.path.realpath(root / rel))
    if not real.is_relative_to(Path(os.path.realpath(root))):
        raise BundleError(f"{printable(rel)!r} in the bundle's manifest leads outside the bundle: refused")
    return root / rel


@dataclass(frozen=True)
class Bundle:
    """An opened bundle: its folder and validated manifest. File access goes through ``file``,
    which resolves the path inside the folder and checks the sha256 before handing it out."""

    root: Path
    manifest: Manifest
    _verified: dict[str, Path] = field(default_factory=dict, repr=False, compare=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)
    identity: tuple[int, int] | None = field(default=None, repr=False, compare=False)  # the folder's (dev, inode)

    @classmethod
    def open(cls, path: Path) -> Bundle:
        """The bundle at ``path``, read from one folder: a build that swaps a new bundle in
        meanwhile makes the read start again (at most twice), then ``BundleReplaced``."""
        for _ in range(3):
            before = _identity(path)
            bundle = cls._open(path)
            if before is not None and _identity(path) == before:
                return replace(bundle, identity=before)
        raise BundleReplaced(replaced_text(path))

    @classmethod
    def _open(cls, path: Path) -> Bundle:
        if not path.is_dir():
            raise BundleError(f"bundle {printable(str(path))!r} does not exist or is not a folder" + _replacing(path))
        manifest_path = path / MANIFEST
        if not manifest_path.is_file():
            raise BundleError(f"{printable(str(path))!r} is not a flexiexport bundle: no {MANIFEST}" + _replacing(path))
        _inside(path, MANIFEST)
        if manifest_path.stat().st_size > 64 << 20:
            raise BundleError(f"{manifest_path} is larger than 64 MB: not a manifest we wrote")
        manifest = parse_manifest(manifest_path.read_bytes(), str(manifest_path))
        bundle = cls(path, manifest)
        for rel, _ in bundle.files():
            _inside(path, rel)  # every path, before any command uses one
        for entry in walk(path):
            if entry.is_link:  # a file the manifest does not name can still be read: an ONNX's external data
                _inside(path, entry.rel)
        return bundle

    def files(self) -> list[tuple[str, str]]:
        """(relative path, sha256) of every file the manifest names."""
        m = self.manifest
        found: list[tuple[str, str]] = []
        for record in m.variants:
            found += record.files()
        if m.shared_weights:
            found.append((m.shared_weights["path"], m.shared_weights["sha256"]))
        for entry in m.engines.values():
            for variant in entry.get("variants", {}).values():
                found.append((variant["engine"], variant["engine_sha256"]))
        return list(dict.fromkeys(found))

    def file(self, rel: str, sha256: str) -> Path:
        """The checked path of a file the manifest names: inside the bundle, a regular file, and
        with the recorded sha256 (checked once per opened bundle)."""
        key = f"{rel}\0{sha256}"
        with self._lock:
            if key in self._verified:
                return self._verified[key]
        path = _inside(self.root, rel)
        if not path.is_file():
            self.check_unchanged()  # not missing: a new bundle was swapped in
            raise BundleError(f"{self.root / rel} is missing (named in the bundle's manifest)")
        if sha256_file(path) != sha256:
            self.check_unchanged()  # a new bundle swapped in is not a changed file
            raise BundleError(f"{self.root / rel} has changed since the build (sha256 differs from the manifest)")
        self.check_unchanged()  # the file hashed was this bundle's
        with self._lock:
            self._verified[key] = path
        return path

    def check_unchanged(self) -> None:
        """``BundleReplaced`` when the folder at ``root`` is no longer the one opened (a build
        swapped a new bundle in): what was read so far is not all from one bundle."""
        if self.identity is not None and _identity(self.root) != self.identity:
            raise BundleReplaced(replaced_text(self.root))

    def verify_all(self) -> None:
        """Check every file the manifest names; the first problem raises ``BundleError``."""
        for rel, sha in self.files():
            self.file(rel, sha)

    def problems(self, rel: str, sha256: str) -> str:
        """Why ``file`` would refuse ``rel`` ('' when it would not)."""
        try:
            self.file(rel, sha256)
        except BundleReplaced:
            raise
        except BundleError as exc:
            return str(exc)
        return ""

    def onnx(self, record: VariantRecord, precision: str = Precision.FP32) -> Path:
        """A variant's checked ONNX file (fp32, or its fp16/int8 one), with its shared weights."""
        entry = record.onnx if precision == Precision.FP32 else record.reduced
        if precision != Precision.FP32 and entry.get("precision") != precision:
            raise BundleError(f"the bundle has no {precision} ONNX for {record.label}")
        if entry.get("external_data") or (precision != Precision.FP32 and record.onnx.get("external_data")):
            sw = self.manifest.shared_weights
            if not sw:
                raise BundleError(f"{record.label}'s ONNX uses external data, but the manifest names no shared file")
            self.file(sw["path"], sw["sha256"])
        return self.file(entry["path"], entry["sha256"])

    def variant_problems(self, record: VariantRecord) -> str:
        """Why a variant's files cannot be used, '' when each is inside the bundle, present and as
        built: its fp32 ONNX and fp16/int8 one (with the shared weights they read), its reference."""
        problems = []
        for precision in (Precision.FP32, *([record.reduced["precision"]] if record.reduced else [])):
            try:
                self.onnx(record, precision)
            except BundleReplaced:
                raise
            except BundleError as exc:
                problems.append(str(exc))
        if record.reference:
            problems.append(self.problems(record.reference["path"], record.reference["sha256"]))
        for check in record.dynamic.get("checks", []):
            problems.append(self.problems(check["reference"]["path"], check["reference"]["sha256"]))
        return "; ".join(dict.fromkeys(p for p in problems if p))

    def artefact(self, name: str) -> Path:
        """Where a command writes one of ``ARTEFACTS`` into the bundle."""
        if name not in ARTEFACTS:
            raise BundleError(f"{name!r} is not a bundle artefact ({', '.join(ARTEFACTS)})")
        path = self.root / name
        if path.is_symlink() or (path.exists() and not path.is_file()):
            raise BundleError(f"{path} is not a regular file: refusing to write it")
        return path

    def read_artefact(self, name: str) -> Any | None:
        """A JSON artefact (bench.json, eval.json) when present and parseable, else None."""
        path = self.artefact(name)
        if not path.is_file():
            return None
        if path.stat().st_size > 16 << 20:
            log.warning("ignoring %s: larger than 16 MB, not one we wrote", path)
            return None
        try:
            data = json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError, RecursionError):
            log.warning("ignoring %s: not valid JSON", path)
            return None
        return data if isinstance(data, dict) else None

    def accounted(self) -> set[str]:
        """Every relative path we may have written into this bundle."""
        known = {MANIFEST, REPORT, *ARTEFACTS, *(rel for rel, _ in self.files())}
        for name, entry in self.manifest.engines.items():
            known.add(entry.get("script") or f"engines/build_{name}.sh")
            known.add(f"engines/build_{name}.sh")
            for record in self.manifest.variants:
                engine = f"engines/{name}/model_{record.label}.engine"
                known |= {engine, engine + ".json"}
        return known

    def unexpected_files(self) -> list[str]:
        """Files in the folder that the manifest does not account for (our stale temporaries aside)."""
        known = self.accounted()
        engine_dirs = {f"engines/{name}" for name in self.manifest.engines}
        found = []
        for entry in walk(self.root):
            rel = entry.rel
            if entry.is_dir or _our_temporary(rel):
                continue
            in_engines = rel.rsplit("/", 1)[0] in engine_dirs and rel.endswith((".cache", ".timing.cache"))
            if rel not in known and not in_engines:
                found.append(rel)
        return found


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def replaced_text(path: Path) -> str:
    return (
        f"bundle {printable(str(path))!r} is being replaced (a build put a new one in place while this "
        "command read it); nothing was judged: retry"
    )


def _replacing(path: Path) -> str:
    """What to add when a folder is missing because a build is replacing it right now."""
    from exporter.core.locks import holder

    pid = holder(path)
    return "" if pid is None else f" (flexiexport PID {pid} is writing it: retry when it is done)"


def _our_temporary(rel: str) -> bool:
    """Files and folders our own writers leave while they work (``write_atomic``, engine staging)."""
    name = rel.rsplit("/", 1)[-1]
    return any(part.startswith(".engines-") for part in rel.split("/")) or bool(
        re.fullmatch(r"\..+\.[A-Za-z0-9_]{8}\.tmp", name)
    )


def _real(path: Path) -> Path:
    return Path(os.path.realpath(path))


def _contains(folder: Path, path: Path) -> bool:
    return _real(path).is_relative_to(_real(folder))


def check_destination(out: Path, what: str, protect: Iterable[Path] = (), enclosing: Iterable[Path] = ()) -> None:
    """Refuse a destination that is a file, a mount point, or holds (or lies above) a protected
    path: a command's own input, the source checkpoint, the current directory; or that lies
    inside one of the ``enclosing`` folders (an input bundle, whose files it would change)."""
    shown = printable(str(out))
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise BundleError(f"{what} {shown!r} is a file or a link; give a folder path")
    if out.is_dir() and is_mount_point(out):
        raise BundleError(
            f"{what} {shown!r} is a mount point, which cannot be replaced by a rename; "
            f"give a folder inside it, e.g. {printable(str(out / 'bundle'))!r}"
        )
    inner = mounts_inside(out) if out.is_dir() else []
    if inner:
        raise BundleError(
            f"{what} {shown!r} holds a mount point ({printable(inner[0])}): replacing it would remove "
            "what that file system holds; choose another folder"
        )
    for path in [Path.cwd(), *protect]:
        if _contains(out, path):
            kind = "the current directory" if path == Path.cwd() else printable(str(path))
            raise BundleError(f"{what} {shown!r} holds {kind}: refusing to write there; choose another folder")
    for path in enclosing:
        if path.is_dir() and _contains(path, out):
            raise BundleError(
                f"{what} {shown!r} lies inside {printable(str(path))!r}, an input of this command; "
                "choose a folder outside it"
            )
    parent = out.absolute().parent
    made = absent_folders(parent)
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        remove_empty(made)
        raise BundleError(f"cannot create the folder {printable(str(parent))!r} for {what}: {exc.strerror}") from exc
    writable = os.access(parent, os.W_OK | os.X_OK)
    remove_empty(made)  # made again when the output is written: a refused or failed command leaves none behind
    if not writable:
        raise BundleError(f"cannot write to {printable(str(parent))!r}: permission denied (choose another folder)")


def absent_folders(folder: Path) -> list[Path]:
    """``folder`` and those above it that do not exist, deepest first."""
    return [p for p in (folder, *folder.parents) if not p.exists()]


def remove_empty(folders: list[Path]) -> None:
    """Remove the ``folders`` (deepest first) that are still empty."""
    for folder in folders:
        with suppress(OSError):
            folder.rmdir()


def check_replaceable_bundle(out: Path, force: bool, resume: bool, protect: Iterable[Path] = ()) -> None:
    """``build --out``: an empty or absent folder, or (with --force/--resume) one of our bundles
    that holds nothing the manifest does not account for."""
    check_destination(out, "--out", protect)
    if not (out.is_dir() and any(out.iterdir())):
        return
    shown = printable(str(out))
    try:
        existing = Bundle.open(out)
    except BundleError as exc:
        raise BundleError(
            f"--out {shown!r} is a non-empty folder that is not a flexiexport bundle ({exc}); "
            "refusing to replace it, choose another --out"
        ) from exc
    if not (force or resume):
        raise BundleError(
            f"a bundle already exists at {shown!r}; pass --force to replace it "
            "or --resume to reuse its unchanged variants"
        )
    extra = existing.unexpected_files()
    if extra:
        listed = ", ".join(printable(e) for e in extra[:5]) + (f" and {len(extra) - 5} more" if len(extra) > 5 else "")
        raise BundleError(
            f"--out {shown!r} holds files the bundle's manifest does not account for ({listed}); "
            "refusing to replace it: move them away or choose another --out"
        )


def check_replaceable_repository(repo: Path, force: bool, protect: Iterable[Path] = ()) -> None:
    """``triton --out``: an empty or absent folder, or (with --force) a repository we wrote whose
    files are exactly those its marker lists."""
    protect = list(protect)
    check_destination(repo, "--out", protect, enclosing=protect)
    if not (repo.is_dir() and any(repo.iterdir())):
        return
    shown = printable(str(repo))
    if not force:
        raise BundleError(f"--out {shown!r} is not empty; pass --force to replace a repository flexiexport wrote")
    listed = repository_files(repo)
    if listed is None:
        raise BundleError(
            f"--out {shown!r} is not a model repository flexiexport wrote (no valid {REPOSITORY_MARKER}); "
            "refusing to replace it, choose another --out"
        )
    present = {e.rel for e in walk(repo) if not e.is_dir}
    extra = sorted(rel for rel in present - listed - {REPOSITORY_MARKER} if not _written_while_serving(rel))
    if extra:
        raise BundleError(
            f"--out {shown!r} holds files flexiexport did not write ({', '.join(printable(e) for e in extra[:5])}); "
            "refusing to replace it"
        )


def _written_while_serving(rel: str) -> bool:
    """Files Triton's Python backend leaves in a repository we wrote: the bytecode of ``model.py``
    and a bundle copy's latency probe (``<model>/<version>/bundle/latency.json``)."""
    parts = rel.split("/")
    bytecode = len(parts) == 4 and parts[2] == "__pycache__" and parts[3].endswith(".pyc")
    probe = len(parts) == 4 and parts[1].isdigit() and parts[2] == "bundle" and parts[3] in ARTEFACTS
    return bytecode or probe


def repository_files(repo: Path) -> set[str] | None:
    """The files a repository's marker lists, or None when there is no readable marker."""
    marker = repo / REPOSITORY_MARKER
    if marker.is_symlink() or not marker.is_file():
        return None
    try:
        data = json.loads(marker.read_text())
        files = data["files"]
        if data.get("tool") != "flexiexport" or not isinstance(files, list):
            return None
        return {_relative_path(str(f)) for f in files}
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        return None


def write_repository_marker(repo: Path, bundle: Path) -> None:
    from exporter.core.files import write_atomic

    files = sorted(e.rel for e in walk(repo) if e.is_file)
    text = json.dumps({"tool": "flexiexport", "bundle": str(bundle.absolute()), "files": files}, indent=2)
    write_atomic(repo / REPOSITORY_MARKER, text + "\n")


# --- staging, swapping and interrupts -----------------------------------------------------------

# What our staging (mkdtemp's 8-character suffix) and moved-aside folders are called; each also
# holds TEMP_MARKER naming the folder itself, so a user's folder of a similar name is never ours.
_TEMP = re.compile(r"\.(?P<name>.+)\.(?:tmp-(?P<pid>\d{1,7})-[A-Za-z0-9_]{8}|old-(?P<old_pid>\d{1,7})-\d{13})")
TEMP_MARKER = ".flexiexport-temporary"
_HANDLED = tuple(s for s in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)) if s is not None)


def remove_stale_temporaries(out: Path) -> list[Path]:
    """Remove ``.NAME.tmp-PID-*`` / ``.NAME.old-PID-*`` folders beside ``out`` left by a process
    that no longer runs (killed with SIGKILL, a power cut)."""
    parent = out.absolute().parent
    removed: list[Path] = []
    if not parent.is_dir():
        return removed
    for path in parent.glob(f".{out.name}.*-*"):
        match = _TEMP.fullmatch(path.name)
        if not match or match["name"] != out.name or not is_marked_temporary(path):
            continue
        if not process_alive(int(match["pid"] or match["old_pid"])):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
            log.info("removed %s, left by an interrupted run", path)
    return removed


def mark_temporary(folder: Path) -> None:
    (folder / TEMP_MARKER).write_text(folder.name)


def is_marked_temporary(folder: Path) -> bool:
    """A real folder (no link) holding our marker with its own name: one of our temporaries."""
    marker = folder / TEMP_MARKER
    try:
        return (
            folder.is_dir()
            and not folder.is_symlink()
            and not marker.is_symlink()
            and marker.read_text() == folder.name
        )
    except (OSError, UnicodeDecodeError):
        return False


@contextmanager
def staging_folder(out: Path) -> Iterator[Path]:
    """A temporary folder beside ``out``, named after this process; removed on any failure,
    interrupt or termination signal."""
    remove_stale_temporaries(out)
    parent = out.absolute().parent
    made = absent_folders(parent)  # removed again on failure, when still empty
    with signals_deferred() as received:  # an interrupt here must not leave an unmarked folder behind
        try:
            parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-{os.getpid()}-", dir=parent))
            tmp.chmod(0o777 & ~current_umask())  # mkdtemp makes it private; a bundle is an ordinary folder
            mark_temporary(tmp)
        except OSError as exc:
            raise BundleError(f"cannot write to {printable(str(out.absolute().parent))!r}: {exc.strerror}") from exc
    try:
        if received:
            raise KeyboardInterrupt(signal.Signals(received[0]).name)
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        remove_empty(made)  # one that now holds the output is not empty


@contextmanager
def signals_deferred() -> Iterator[list[int]]:
    """Hold SIGINT/SIGTERM/SIGHUP until the block ends; yields the list of signals that came."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return
    previous = {s: signal.getsignal(s) for s in _HANDLED}
    for s in _HANDLED:
        signal.signal(s, lambda signum, frame: received.append(signum))
    try:
        yield received
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def swap_into_place(
    tmp: Path, out: Path, what: str = "bundle", replaceable: Callable[[Path], object] | None = None
) -> None:
    """Put ``tmp`` in place at ``out``; an existing ``out`` is swapped out and removed after.
    ``replaceable`` (a check that raises ``BundleError``) judges again, at the swap, whatever is at
    ``out`` now, and what was swapped out before it is removed: a folder that appeared or changed
    during the build is never replaced unless the same judgement allows it. Where the system
    has ``renameat2``, the swap is one exchange (readers find the old folder or the new one,
    never none). Signals are held meanwhile: once the swap starts it finishes, and an interrupt
    that came during it is reported afterwards as what it is (the new folder is complete)."""
    with signals_deferred() as received:
        _swap(tmp, out, what, replaceable)
    if received:
        raise Interrupted(
            f"interrupted ({signal.Signals(received[0]).name}) after the new {what} was complete; "
            f"it is in place at {printable(str(out))}"
        )


def _judge_at_swap(out: Path, what: str, replaceable: Callable[[Path], object] | None) -> None:
    if replaceable is None:
        return
    try:
        replaceable(out)
    except BundleError as exc:
        raise BundleError(
            f"{exc} (found when the new {what} was ready: it changed during the run; nothing was replaced)"
        ) from exc


def _swap(tmp: Path, out: Path, what: str, replaceable: Callable[[Path], object] | None) -> None:
    from exporter.core.locks import exchange

    _judge_at_swap(out, what, replaceable)
    (tmp / TEMP_MARKER).unlink(missing_ok=True)
    try:
        if out.exists() and exchange(tmp, out):
            old = tmp  # the exchange left the old folder at the staging path
            try:
                _judge_at_swap(old, what, replaceable)  # nothing arrived between the check and the exchange
            except BundleError:
                exchange(tmp, out)  # put it back as it was, and say so naming --out
                _judge_at_swap(out, what, replaceable)
                raise
            mark_temporary(old)  # killed from here on, the next run knows the folder is ours
            shutil.rmtree(old, ignore_errors=True)
            return
        _replace_by_renames(tmp, out)
    except BaseException:
        if tmp.is_dir():
            mark_temporary(tmp)  # whichever folder is left there is ours to remove
        raise


def _replace_by_renames(tmp: Path, out: Path) -> None:
    """The swap in two renames, where no exchange is possible (or nothing is at ``out``)."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}-{int(time.time() * 1000)}")
        os.replace(out, old)
        mark_temporary(old)
    try:
        os.replace(tmp, out)
    except OSError as exc:
        if old is not None:
            os.replace(old, out)
        if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):  # a folder appeared after the check
            raise BundleError(
                f"{printable(str(out))!r} appeared while this run wrote its output; nothing was replaced"
            ) from exc
        raise
    except BaseException:
        if old is not None:
            os.replace(old, out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def read_manifest(path: Path) -> Manifest:
    """The validated manifest of the bundle at ``path`` (its files are not hashed: use ``Bundle``)."""
    return Bundle.open(path).manifest
