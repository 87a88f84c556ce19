"""The bundle manifest: what was built, from what, and how well it matched.

Plain frozen dataclasses serialised to ``manifest.json`` (and read back for ``inspect``,
``validate`` and ``--resume``), a Markdown report with the same table, and atomic writes.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from exporter.core.errors import BundleError, DiskFullError, full_disk_cause
from exporter.core.sizes import format_range, format_size

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
REPORT = "report.md"
INPUT_NAME = "pixel_values"  # every ONNX file and engine: float32 NCHW in, logits (or embeddings) out
OUTPUT_NAME = "logits"
EMBEDDINGS_NAME = "embeddings"  # a feature model's output (no classifier: num_classes 0)
CHECK_BATCH = 8  # parity runs a dynamic-batch model 8 images at a time


def output_name(num_classes: int) -> str:
    """The ONNX output of a model with ``num_classes`` classes: ``logits``, or ``embeddings`` for a
    feature model (no classifier), whose outputs are not class scores."""
    return OUTPUT_NAME if num_classes else EMBEDDINGS_NAME


def static_batch(shape: Sequence[int | str]) -> int | None:
    """A tensor's fixed batch (``[8, 3, 64, 64]`` → 8), or None when the batch is named (dynamic)."""
    return shape[0] if isinstance(shape[0], int) else None


def check_batch(export_batch: int | str) -> int:
    """The batch parity checks run at: the model's static batch, else ``CHECK_BATCH``."""
    return CHECK_BATCH if export_batch == "dynamic" else int(export_batch)


@dataclass(frozen=True)
class VariantRecord:
    """One variant in the manifest. ``status`` is ``passed``, ``failed`` or ``error``."""

    label: str
    patch_size: tuple[int, int]
    img_size: tuple[int, int]
    grid: tuple[int, int]
    tokens: int
    gflops: float
    patch_resize: str
    pos_resize: str
    onnx: dict[str, Any]
    parity: dict[str, Any]
    status: str
    export_seconds: float
    parity_seconds: float
    input_key: str
    resumed: bool = False
    trt_lint: dict[str, Any] = field(default_factory=dict)
    reduced: dict[str, Any] = field(default_factory=dict)  # the fp16/int8 ONNX and its parity, if asked for
    reference: dict[str, Any] = field(default_factory=dict)  # PyTorch's logits on the parity inputs (npz)
    dynamic: dict[str, Any] = field(default_factory=dict)  # --img-size dynamic: its range and extra checks
    native_agreement: dict[str, Any] = field(default_factory=dict)  # vs the source's own patch and size

    @property
    def img_range(self) -> tuple[tuple[int, int], tuple[int, int]] | None:
        """A dynamic-resolution variant's smallest and largest image size; None for a fixed one."""
        if not self.dynamic:
            return None
        low, high = self.dynamic["min"], self.dynamic["max"]
        return (int(low[0]), int(low[1])), (int(high[0]), int(high[1]))

    @property
    def static_batch(self) -> int | None:
        """The ONNX's fixed batch (``--batch N``), or None for a dynamic batch."""
        return static_batch(self.onnx["inputs"][0]["shape"])

    def files(self) -> list[tuple[str, str]]:
        """(relative path, sha256) of the variant's own files: ONNX, fp16/int8 ONNX, reference."""
        found = [(self.onnx["path"], self.onnx["sha256"])]
        found += [(e["path"], e["sha256"]) for e in (self.reduced, self.reference) if e]
        found += [(c["reference"]["path"], c["reference"]["sha256"]) for c in self.dynamic.get("checks", [])]
        return found


@dataclass(frozen=True)
class Manifest:
    schema_version: int
    name: str
    created: str
    versions: dict[str, str]
    source: dict[str, Any]
    preprocessing: dict[str, Any]
    options: dict[str, Any]
    variants: tuple[VariantRecord, ...]
    engines: dict[str, Any] = field(default_factory=dict)
    shared_weights: dict[str, Any] = field(default_factory=dict)  # --shared-weights: the external-data file
    labels: tuple[str, ...] = ()  # class names by output index (empty: indices)
    source_parity: dict[str, Any] = field(default_factory=dict)  # vs the source framework's model

    @property
    def assumptions(self) -> tuple[str, ...]:
        """What the build assumed, each with what settles it (manifests before the structured
        ``assumptions`` list kept only the ``assumed`` strings)."""
        arch = self.source.get("architecture") or {}
        records = arch.get("assumptions") or []
        if records:
            return tuple(f"{r['what']} {r['value']} ({r['settle']})" for r in records)
        return tuple(map(str, arch.get("assumed") or ()))

    @property
    def classifier(self) -> bool:
        """Whether the model has a classifier (its outputs are class scores): False for a feature
        model (``num_classes`` 0, or an ``embeddings`` output). Bundles built before feature models
        were named say ``logits`` but still record ``num_classes`` 0."""
        arch = self.source.get("architecture") or {}
        names = {o.get("name") for v in self.variants for o in v.onnx.get("outputs", [])}
        return arch.get("num_classes") != 0 and EMBEDDINGS_NAME not in names

    @property
    def passed(self) -> bool:
        """Every variant passed parity, no engine set failed (pending ones are not failures) and
        source parity did not fail (inferred or skipped is not a failure)."""
        engines_ok = all(e.get("status") != "failed" for e in self.engines.values())
        source_ok = self.source_parity.get("status") != "failed"
        return engines_ok and source_ok and all(v.status == "passed" for v in self.variants)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise BundleError(
                f"manifest schema_version {version!r} is not supported (this flexiexport reads {SCHEMA_VERSION})"
            )
        data, _ = upgrade_manifest(data)
        names = {f.name for f in fields(VariantRecord)}
        variants = tuple(VariantRecord(**_record_fields(item, names)) for item in data.get("variants", []))
        known = {f.name for f in fields(cls)}
        labels = tuple(data.get("labels", ()))
        return cls(**{**{k: v for k, v in data.items() if k in known}, "variants": variants, "labels": labels})


def upgrade_manifest(data: Any, where: str = MANIFEST) -> tuple[Any, bool]:
    """A copy of manifest ``data`` in today's layout, and whether it was in an older one.

    Manifests written before each checked file carried its own tolerance (same schema_version)
    kept the fp32 ONNX files' tolerance at the top level and an engine's inside its ``parity``;
    both move into the file's record (``onnx.tolerance``, the engine entry's ``tolerance``).
    A manifest that records the fp32 tolerance both ways is refused: which would judge?"""
    if not isinstance(data, dict):
        return data, False
    data = copy.deepcopy(data)
    older = "tolerance" in data
    top = data.pop("tolerance", None)
    variants = data.get("variants")
    for variant in variants if older and isinstance(variants, list) else []:
        onnx = variant.get("onnx") if isinstance(variant, dict) else None
        if isinstance(onnx, dict):
            if "tolerance" in onnx:
                raise BundleError(
                    f"{where} is malformed: the fp32 tolerance is recorded both at the top level (as older "
                    "bundles did) and in variants[].onnx.tolerance"
                )
            onnx["tolerance"] = top
    engines = data.get("engines")
    for entry in engines.values() if isinstance(engines, dict) else []:
        built = entry.get("variants") if isinstance(entry, dict) else None
        for variant in built.values() if isinstance(built, dict) else []:
            parity = variant.get("parity") if isinstance(variant, dict) else None
            if isinstance(parity, dict) and "tolerance" in parity:
                older = True
                variant.setdefault("tolerance", parity.pop("tolerance"))
    return data, older


def _record_fields(item: dict[str, Any], names: set[str]) -> dict[str, Any]:
    """JSON lists back to the tuples a ``VariantRecord`` holds; unknown keys dropped."""
    return {k: tuple(v) if k in ("patch_size", "img_size", "grid") else v for k, v in item.items() if k in names}


def current_umask() -> int:
    """The process umask (reading it means setting it; it is put straight back)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def full_disk_as_usage_error(path: Path) -> Iterator[None]:
    """Running out of disk space or quota while writing ``path`` is ``DiskFullError`` (exit 2,
    one line): the user's disk, not a bug."""
    try:
        yield
    except Exception as exc:
        if full_disk_cause(exc) is None:
            raise
        raise DiskFullError(path) from exc


def write_atomic_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder, then rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with full_disk_as_usage_error(path), os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp files are private; artefacts are ordinary files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_atomic(path: Path, text: str) -> None:
    """``write_atomic_bytes`` for UTF-8 text."""
    write_atomic_bytes(path, text.encode("utf-8"))


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, streamed."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def top1_text(parity: dict[str, Any], digits: int = 1) -> str:
    """``"  top-1 93.8%"`` of a recorded comparison, or '' for a feature model's (no top-1)."""
    value = parity.get("top1_agreement")
    return "" if value is None else f"  top-1 {value:.{digits}%}"


def percent(value: float | None) -> str:
    """A share as ``93.8%``; '—' where there is none (a feature model's top-1)."""
    return "—" if value is None else f"{value:.1%}"


def variant_rows(manifest: Manifest) -> list[list[str]]:
    """One row of strings per variant: the table shared by the CLI and ``report.md``."""
    rows = []
    for v in manifest.variants:
        p = v.parity or {}
        rows.append(
            [
                "✓" if v.parity.get("passed", v.status == "passed") else "✗",
                v.label,
                format_size(v.img_size) + (f" ({format_range(v.img_range)})" if v.img_range else ""),
                f"{v.grid[0]}x{v.grid[1]}",
                str(v.tokens),
                f"{v.gflops:.3f}",
                f"{p.get('max_abs', float('nan')):.1e}",
                f"{p.get('p99_abs', float('nan')):.1e}",
                f"{p.get('min_cosine', float('nan')):.7f}",
                percent(p.get("top1_agreement", float("nan"))),
                percent(p.get("top5_agreement", float("nan"))),
                *native_cells(v.native_agreement),
                f"{v.export_seconds:.2f}",
                Path(v.onnx.get("path", "")).name,
                _source_cell(manifest, v),
            ]
        )
    return rows


def _source_cell(manifest: Manifest, v: VariantRecord) -> str:
    """Source parity on the row of the variant it judged (✓/✗); ``inferred``/``skipped`` on every
    row; ``-`` on the others; empty when the manifest predates the check."""
    from exporter.build.source_parity import mark

    entry = manifest.source_parity
    if not entry or (entry.get("status") in ("passed", "failed") and entry.get("variant") not in (None, v.label)):
        return "-" if entry else ""
    return mark(entry)


def native_cells(found: dict[str, Any]) -> list[str]:
    """The ``native`` cell (top-1 agreement with the native variant, a feature model's mean cosine)
    and the ``native cos`` one (min/mean cosine); 'skipped' without real images, '—' in bundles
    built before it was measured."""
    if not found:
        return ["—", "—"]
    if "skipped" in found:
        return ["skipped", "skipped"]
    top1 = found.get("top1_agreement")
    main = f"{found['mean_cosine']:.4f}" if top1 is None else percent(top1)
    return [main, f"{found['min_cosine']:.3f}/{found['mean_cosine']:.3f}"]


TABLE_HEADER = [
    "",
    "variant",
    "image",
    "grid",
    "tokens",
    "GFLOPs",
    "max|Δ|",
    "p99|Δ|",
    "cosine",
    "top-1",
    "top-5",
    "native",
    "native cos",
    "export s",
    "onnx",
    "src",  # source parity (exporter.build.source_parity)
]
CLASS_COLUMNS = ("top-1", "top-5")  # a feature model has no classes: its table leaves these out


def md_cell(text: object) -> str:
    """``text`` as one Markdown table cell: a ``|`` (as in ``max|Δ|``, or in a name) would end
    the cell and break the whole table, and a line break would end the row."""
    return " ".join(str(text).split()).replace("\\", "\\\\").replace("|", "\\|")


def md_row(cells: list[str]) -> str:
    return "| " + " | ".join(md_cell(c) for c in cells) + " |"


# The columns a terminal shows by default (``--wide``: all of TABLE_HEADER), within TABLE_WIDTH:
# where they would not fit, DROP_FIRST's go, in that order (the rest always show).
NARROW_HEADER = ["", "variant", "image", "tokens", "GFLOPs", "max|Δ|", "cosine", "top-1", "native", "src"]
TABLE_WIDTH = 80
DROP_FIRST = ("tokens", "GFLOPs", "image")  # a dynamic bundle's image cell (64 (32-128)) says most


def table_width(columns: list[int], rows: list[list[str]]) -> int:
    """The width of Rich's boxed table of these columns: each its widest cell plus 2 of padding,
    and a rule between and around them."""
    return 1 + sum(3 + max(len(TABLE_HEADER[i]), *(len(r[i]) for r in rows)) for i in columns)


def shown_columns(manifest: Manifest, rows: list[list[str]], wide: bool = False) -> list[int]:
    """Indexes into TABLE_HEADER of what to show: every column (``wide``) or the narrow ones that
    fit TABLE_WIDTH; never a feature model's top-1/top-5."""
    keep = [
        i
        for i, h in enumerate(TABLE_HEADER)
        if (wide or h in NARROW_HEADER) and (manifest.classifier or h not in CLASS_COLUMNS)
    ]
    for name in DROP_FIRST:
        if wide or table_width(keep, rows) <= TABLE_WIDTH:
            break
        keep = [i for i in keep if TABLE_HEADER[i] != name]
    return keep


def native_summary(manifest: Manifest) -> str:
    """What the ``native`` columns compare, or why they were skipped; '' in older bundles."""
    found = [v.native_agreement for v in manifest.variants if v.native_agreement]
    measured = next((n for n in found if "skipped" not in n), None)
    if measured is None:
        return f"Agreement with the native patch size: skipped ({found[0]['skipped']})." if found else ""
    what = (
        "top-1 agreement (native cos: min/mean cosine)" if manifest.classifier else "mean cosine (native cos: min/mean)"
    )
    skipped = [
        f"{v.label}: {v.native_agreement['skipped']}" for v in manifest.variants if "skipped" in v.native_agreement
    ]
    return (
        f"native: each variant's PyTorch outputs against {measured['against']} (the source's own patch and "
        f"image size) on {measured['images']} {measured['from']}, each image at the variant's own size: {what}. "
        "Not judged: it is the quality/compute trade-off." + (f" Skipped for {'; '.join(skipped)}." if skipped else "")
    )


def render_report(manifest: Manifest) -> str:
    """``report.md``: the manifest as a human-readable table."""
    from exporter.parity.compare import recorded_tolerance

    src = manifest.source
    tol = recorded_tolerance(manifest.variants[0].onnx)  # one build, one fp32 tolerance
    lines = [
        f"# {manifest.name}",
        "",
        f"Built {manifest.created} by flexiexport {manifest.versions.get('flexiexport')} "
        f"(torch {manifest.versions.get('torch')}, timm {manifest.versions.get('timm')}, "
        f"onnx {manifest.versions.get('onnx')}, onnxruntime {manifest.versions.get('onnxruntime')}).",
        "",
        f"Source: {src.get('path') or src.get('kind')} (sha256 {str(src.get('sha256'))[:16]}…), "
        f"{src.get('architecture', {}).get('summary', '')}.",
        "",
        *(
            [f"Assumed (not stated by the checkpoint or its config): {'; '.join(manifest.assumptions)}.", ""]
            if manifest.assumptions
            else []
        ),
        f"Parity: PyTorch fp32 (CPU) vs onnxruntime CPU on {manifest.options.get('parity_inputs')}; "
        f"pass when |Δ| ≤ {tol.atol} + {tol.rtol}·|ref|, cosine ≥ {tol.min_cosine}"
        + (
            f", top-1 agreement ≥ {tol.min_top1:.0%}."
            if manifest.classifier
            else " (a feature model, no classifier: cosine and |Δ| only)."
        ),
        "",
    ]
    rows = variant_rows(manifest)
    columns = shown_columns(manifest, rows, wide=True)
    lines += [md_row([TABLE_HEADER[i] or "ok" for i in columns]), "|" + "---|" * len(columns)]
    lines += [md_row([row[i] for i in columns]) for row in rows]
    summary = native_summary(manifest)
    lines += ["", summary] if summary else []
    if manifest.source_parity:
        from exporter.build.source_parity import describe

        lines += ["", describe(manifest.source_parity).replace("source parity", "Source parity", 1) + "."]
    failed = [v for v in manifest.variants if v.status != "passed"]
    for v in failed:
        reasons = list(v.parity.get("failures", [])) or ([v.parity["error"]] if v.parity.get("error") else [])
        if v.reduced and v.reduced.get("status") != "passed":
            precision = v.reduced["precision"]
            reasons += [f"{precision}: {r}" for r in v.reduced["parity"].get("failures", [])]
        lines += ["", f"**{v.label} {v.status}:** " + "; ".join(reasons)]
    reduced = [v for v in manifest.variants if v.reduced]
    if reduced:
        lines += [
            "",
            md_row(["ok", "variant", "precision", "onnx", "MB", "max|Δ|", "p99|Δ|", "cosine", "top-1"]),
            "|---|---|---|---|---|---|---|---|---|",
        ]  # a feature model's top-1 cell is '—': it has none
        for v in reduced:
            r, q = v.reduced, v.reduced["parity"]
            lines.append(
                md_row(
                    [
                        "✓" if r["status"] == "passed" else "✗",
                        v.label,
                        r["precision"],
                        Path(r["path"]).name,
                        f"{r['bytes'] / 1e6:.2f}",
                        f"{q['max_abs']:.1e}",
                        f"{q['p99_abs']:.1e}",
                        f"{q['min_cosine']:.5f}",
                        percent(q.get("top1_agreement")),
                    ]
                )
            )
        calibrated = [v for v in reduced if v.reduced.get("calibration")]
        if calibrated:
            lines += ["", f"INT8 calibration: {calibrated[0].reduced['calibration']}."]
    for v in manifest.variants:
        if v.trt_lint and not v.trt_lint.get("passed", True):
            lines += ["", f"TensorRT lint, {v.label}: " + "; ".join(v.trt_lint["issues"])]
    for name, entry in manifest.engines.items():
        lines += [
            "",
            f"TensorRT engines, profile {name}: {entry.get('status')}"
            + (f" ({entry['reason']})" if entry.get("reason") else "")
            + (
                f"; build them on the target with `{entry['command']}` or `{entry['script']}`"
                if entry.get("command")
                else ""
            ),
        ]
    lines += [
        "",
        "On a CPU with AVX-512 BF16 or AMX, OpenVINO computes in bf16 unless told otherwise: the runtime's "
        "`openvino` backend asks for f32 (judged with the fp32 tolerances), `openvino-bf16` is judged with the "
        "fp16 ones (`flexiexport validate BUNDLE --backends openvino,openvino-bf16`).",
    ]
    lines += ["", f"Overall: {'PASSED' if manifest.passed else 'FAILED'}", ""]
    return "\n".join(lines)


@dataclass(frozen=True)
class Entry:
    """One thing under a walked folder: its relative POSIX path and what it is (links not followed)."""

    rel: str
    path: Path
    is_dir: bool
    is_link: bool
    is_file: bool


def walk(root: Path, max_depth: int = 32) -> list[Entry]:
    """Everything under ``root``, sorted, without following links and without recursion (a
    hostile tree thousands of folders deep is refused with ``UsageError``, not a RecursionError)."""
    from exporter.core.errors import UsageError

    found: list[Entry] = []
    stack = [(root, "", 0)]
    while stack:
        folder, prefix, depth = stack.pop()
        if depth > max_depth:
            raise UsageError(f"{folder} is nested more than {max_depth} folders deep under {root}: refused")
        with os.scandir(folder) as entries:
            for e in entries:
                rel = f"{prefix}{e.name}"
                is_link = e.is_symlink()
                is_dir = e.is_dir(follow_symlinks=False)
                found.append(Entry(rel, Path(e.path), is_dir, is_link, e.is_file(follow_symlinks=False)))
                if is_dir:
                    stack.append((Path(e.path), rel + "/", depth + 1))
    return sorted(found, key=lambda e: e.rel)
