"""The manifest as people read it: the variant table (80 columns), source parity's line, report.md."""

from __future__ import annotations

from pathlib import Path

from exporter.bundle.engines import NotRunEngines, PendingEngines
from exporter.bundle.records import (
    NativeAgreement,
    NativeSkipped,
    ParityStats,
    Preflight,
    PreflightError,
    PreflightSkipped,
    SourceParity,
    VariantRecord,
)
from exporter.bundle.schema import Manifest
from exporter.core.sizes import format_range, format_size


def top1_text(parity: ParityStats, digits: int = 1) -> str:
    """``"  top-1 93.8%"`` of a recorded comparison, or '' for a feature model's (no top-1)."""
    value = parity.top1_agreement
    return "" if value is None else f"  top-1 {value:.{digits}%}"


def percent(value: float | None) -> str:
    """A share as ``93.8%``; '—' where there is none (a feature model's top-1)."""
    return "—" if value is None else f"{value:.1%}"


def variant_rows(manifest: Manifest) -> list[list[str]]:
    """One row of strings per check the build made: the table shared by the CLI and ``report.md``.
    Each variant's fp32 row, then a row per check beyond it: a dynamic variant at its smallest
    and largest size (``p8 at 32``), and its fp16/int8 file (``p8 fp16``)."""
    rows = []
    for v in manifest.variants:
        size = format_size(v.img_size) + (f" ({format_range(v.img_range)})" if v.img_range else "")
        rows.append(
            [
                "✓" if v.parity.passed else "✗",
                v.label,
                size,
                f"{v.grid[0]}x{v.grid[1]}",
                str(v.tokens),
                f"{v.gflops:.3f}",
                *_parity_cells(v.parity),
                *native_cells(v.native_agreement),
                f"{v.export_seconds:.2f}",
                Path(v.onnx.path).name,
                _source_cell(manifest, v),
                preflight_cell(v),
            ]
        )
        for check in v.dynamic.checks if v.dynamic else []:
            side = format_size(check.img_size)
            rows.append(_extra_row(check.parity.passed, f"{v.label} at {side}", side, check.parity, ""))
        if v.reduced:
            r = v.reduced
            passed = r.status == "passed"
            rows.append(_extra_row(passed, f"{v.label} {r.precision}", size, r.parity, r.path, r.tensorrt_preflight))
    return rows


def _parity_cells(p: ParityStats) -> list[str]:
    """max|Δ|, p99|Δ|, cosine, top-1 and top-5 of one recorded comparison."""
    return [
        f"{p.max_abs:.1e}",
        f"{p.p99_abs:.1e}",
        f"{p.min_cosine:.7f}",
        percent(p.top1_agreement),
        percent(p.top5_agreement),
    ]


def _extra_row(
    passed: bool,
    label: str,
    size: str,
    parity: ParityStats,
    path: str,
    preflight: Preflight | PreflightSkipped | None = None,
) -> list[str]:
    """A check beyond a variant's fp32 one (another size, another precision): its own verdict and
    numbers, and its own file's TensorRT preflight; the cells that belong to the variant (grid,
    native agreement...) left blank. One cell per TABLE_HEADER column."""
    trt = _preflight_mark([preflight]) if preflight is not None else ""
    cells = ["✓" if passed else "✗", label, size, "", "", "", *_parity_cells(parity), "", "", "", Path(path).name, ""]
    return [*cells, trt]


def preflight_cell(v: VariantRecord) -> str:
    """The ``trt`` cell: ✓ TensorRT's parser and builder took every ONNX file of the variant, ✗ one
    was refused (the lines under the table say why), – skipped or not recorded."""
    return _preflight_mark([p for _, p in v.preflights()])


def _preflight_mark(found: list[Preflight | PreflightSkipped]) -> str:
    if not found or any(isinstance(p, PreflightSkipped) for p in found):
        return "–"
    return "✓" if all(isinstance(p, Preflight) and p.ok for p in found) else "✗"


def lint_title(v: VariantRecord) -> str:
    """The op-list lint is the fallback: where TensorRT's parser ran, its verdict (``trt``) stands."""
    ran = any(isinstance(p, Preflight) for _, p in v.preflights())
    return "TensorRT 10 op-list lint (fallback; the parser's verdict is the trt column)" if ran else "TensorRT lint"


def preflight_lines(manifest: Manifest, wide: bool = False) -> list[str]:
    """What the ``trt`` column judged: one line when it was skipped (why, how to install), one per
    refused file (stage, node, op and the parser's message), and with ``wide`` one per file built."""
    records = [(v.label, path, p) for v in manifest.variants for path, p in v.preflights()]
    if not records:
        return []
    skipped = [p.skipped for _, _, p in records if isinstance(p, PreflightSkipped)]
    if skipped:
        return [f"TensorRT preflight skipped: {skipped[0]}"]
    ran = [(label, path, p) for label, path, p in records if isinstance(p, Preflight)]
    ok = [r for r in ran if r[2].ok]
    first = ran[0][2]
    lines = [
        f"trt: {first.library} {first.version} parsed and built {len(ok)} of {len(records)} "
        "ONNX files on the CPU (TensorRT's own ONNX parser and builder)"
    ]
    for label, path, p in ran:
        name = Path(path).name
        if p.ok:
            if wide:
                low, high = p.shapes.get("min", ["?"]), p.shapes.get("max", ["?"])
                lines.append(
                    f"  ✓ {label} {name}: {p.layers} layers, {p.engine_bytes / 1e6:.1f} MB engine "
                    f"in {p.build_seconds:.1f} s, batch {low[0]}-{high[0]}, sm {p.compute_capability or None}"
                )
            continue
        errors = p.errors or [PreflightError(node="", op="", message="no reason recorded")]
        for e in errors[:3]:
            where = " ".join(x for x in (e.node, e.op) if x)
            lines.append(f"  ✗ {label} {name} ({p.stage}): {where + ': ' if where else ''}{e.message}")
    return lines


def _source_cell(manifest: Manifest, v: VariantRecord) -> str:
    """Source parity on the row of the variant it judged (✓/✗); ``inferred``/``skipped`` on every
    row; ``-`` on the others; empty when the manifest predates the check."""

    entry = manifest.source_parity
    if not entry or (entry.status in ("passed", "failed") and entry.variant not in (None, v.label)):
        return "-" if entry else ""
    return mark(entry)


def native_cells(found: NativeAgreement | NativeSkipped | None) -> list[str]:
    """The ``native`` cell (top-1 agreement with the native variant, a feature model's mean cosine)
    and the ``native cos`` one (min/mean cosine); 'skipped' without real images, '—' in bundles
    built before it was measured."""
    if not found:
        return ["—", "—"]
    if isinstance(found, NativeSkipped):
        return ["skipped", "skipped"]
    top1 = found.top1_agreement
    main = f"{found.mean_cosine:.4f}" if top1 is None else percent(top1)
    return [main, f"{found.min_cosine:.3f}/{found.mean_cosine:.3f}"]


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
    "trt",  # TensorRT preflight (exporter.tensorrt.preflight)
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
NARROW_HEADER = ["", "variant", "image", "tokens", "GFLOPs", "max|Δ|", "cosine", "top-1", "native", "src", "trt"]


TABLE_WIDTH = 80


DROP_FIRST = ("tokens", "GFLOPs", "native", "image")  # a dynamic bundle's image cell (64 (32-128)) says most


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


def left_out(manifest: Manifest) -> list[str]:
    """The pairs of a grid (or the patches of a dynamic range) the build could not make, each
    with why and the sizes that would work, as the build logged them."""
    return list(manifest.options.impossible_variants)


def native_summary(manifest: Manifest) -> str:
    """What the ``native`` columns compare, or why they were skipped; '' in older bundles."""
    found = [v.native_agreement for v in manifest.variants if v.native_agreement]
    measured = next((n for n in found if isinstance(n, NativeAgreement)), None)
    if measured is None:
        skipped = [n.skipped for n in found if isinstance(n, NativeSkipped)]
        return f"Agreement with the native patch size: skipped ({skipped[0]})." if skipped else ""
    what = (
        "top-1 agreement (native cos: min/mean cosine)" if manifest.classifier else "mean cosine (native cos: min/mean)"
    )
    skipped = [
        f"{v.label}: {n.skipped}" for v in manifest.variants if isinstance(n := v.native_agreement, NativeSkipped)
    ]
    return (
        f"native: each variant's PyTorch outputs against {measured.against} (the source's own patch and "
        f"image size) on {measured.images} {measured.from_}, each image at the variant's own size: {what}. "
        "Not judged: it is the quality/compute trade-off." + (f" Skipped for {'; '.join(skipped)}." if skipped else "")
    )


def render_report(manifest: Manifest) -> str:
    """``report.md``: the manifest as a human-readable table."""
    src = manifest.source
    tol = manifest.variants[0].onnx.tolerance  # one build, one fp32 tolerance
    lines = [
        f"# {manifest.name}",
        "",
        f"Built {manifest.created} by flexiexport {manifest.versions.get('flexiexport')} "
        f"(torch {manifest.versions.get('torch')}, timm {manifest.versions.get('timm')}, "
        f"onnx {manifest.versions.get('onnx')}, onnxruntime {manifest.versions.get('onnxruntime')}).",
        "",
        f"Source: {src.path or src.kind} (sha256 {str(src.sha256)[:16]}…), {src.architecture.summary}.",
        "",
        *(
            [f"Assumed (not stated by the checkpoint or its config): {'; '.join(manifest.assumptions)}.", ""]
            if manifest.assumptions
            else []
        ),
        f"Parity: PyTorch fp32 (CPU) vs onnxruntime CPU on {manifest.options.parity_inputs or None}; "
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
    gaps = left_out(manifest)
    lines += ["", "Left out (the build could not make them):", *(f"- {md_cell(line)}" for line in gaps)] if gaps else []
    summary = native_summary(manifest)
    lines += ["", summary] if summary else []
    if manifest.source_parity:
        lines += ["", describe(manifest.source_parity).replace("source parity", "Source parity", 1) + "."]
    failed = [v for v in manifest.variants if v.status != "passed"]
    for v in failed:
        reasons = list(v.parity.failures) or ([v.parity.error] if v.parity.error else [])
        if v.reduced and v.reduced.status != "passed":
            reasons += [f"{v.reduced.precision}: {r}" for r in v.reduced.parity.failures]
        lines += ["", f"**{v.label} {v.status}:** " + "; ".join(reasons)]
    reduced = [v for v in manifest.variants if v.reduced]
    if reduced:
        lines += [
            "",
            md_row(["ok", "variant", "precision", "onnx", "MB", "max|Δ|", "p99|Δ|", "cosine", "top-1"]),
            "|---|---|---|---|---|---|---|---|---|",
        ]  # a feature model's top-1 cell is '—': it has none
        for v in reduced:
            r = v.reduced
            if r is None:
                continue
            q = r.parity
            lines.append(
                md_row(
                    [
                        "✓" if r.status == "passed" else "✗",
                        v.label,
                        r.precision,
                        Path(r.path).name,
                        f"{r.bytes / 1e6:.2f}",
                        f"{q.max_abs:.1e}",
                        f"{q.p99_abs:.1e}",
                        f"{q.min_cosine:.5f}",
                        percent(q.top1_agreement),
                    ]
                )
            )
        calibrated = [v.reduced.calibration for v in reduced if v.reduced and v.reduced.calibration]
        if calibrated:
            lines += ["", f"INT8 calibration: {calibrated[0]}."]
    preflight = preflight_lines(manifest, wide=True)
    if preflight:
        lines += ["", *(f"- {line.strip()}" if i else line for i, line in enumerate(preflight))]
    for v in manifest.variants:
        if v.trt_lint and not v.trt_lint.passed:
            lines += ["", f"{lint_title(v)}, {v.label}: " + "; ".join(v.trt_lint.issues)]
    for name, entry in manifest.engines.items():
        reason = entry.reason if isinstance(entry, (PendingEngines, NotRunEngines)) else ""
        command = entry.command if isinstance(entry, PendingEngines) else ""
        lines += [
            "",
            f"TensorRT engines, profile {name}: {entry.status}"
            + (f" ({reason})" if reason else "")
            + (
                f"; build them on the target with `{command}`" + (f" or `{entry.script}`" if entry.script else "")
                if command
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


INFERRED = "inferred, not independently checked"


def mark(entry: SourceParity | None) -> str:
    """One short cell for the variant table (it must fit 80 columns): ✓, ✗, ``n/c`` (not checked:
    inferred or skipped; the line under the table says which) or empty (none recorded)."""
    status = entry.status if entry else ""
    return {"passed": "✓", "failed": "✗", "": ""}.get(status, "n/c")


def describe(entry: SourceParity | None) -> str:
    """One line for the build, ``inspect`` and report.md."""
    if not entry:
        return ""
    status = entry.status
    (ph, pw), (ih, iw) = entry.patch_size, entry.img_size
    where = f"at patch {ph}x{pw}, image {ih}x{iw}"
    if status == "inferred":
        return f"source parity: {INFERRED} (weights only, architecture inferred from tensor shapes)"
    p = entry.parity
    if p is None:
        return f"source parity {mark(entry)} {status}: {entry.reference} {where}: {entry.reason}"
    numbers = f"max|Δ| {p.max_abs:.1e}, cosine {p.min_cosine:.7f}"
    why = "" if status == "passed" else " (" + "; ".join(p.failures) + ")"
    return f"source parity {mark(entry)}: {entry.candidate} vs {entry.reference} {where}: {numbers}{why}"
