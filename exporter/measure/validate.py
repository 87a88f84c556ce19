"""``flexiexport validate``: judge a bundle's files against the PyTorch reference it carries.

No torch, no timm, no checkpoint: the parity inputs are rebuilt with numpy from the reference
(``exporter.bundle.reference``), every file is opened through the bundle door (paths inside, sha256
checked), and onnxruntime runs each ONNX. ``validate --rebuild`` (``pipeline.recheck_bundle``)
is the full re-run from the source checkpoint, where one is present.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from exporter.bundle.door import Bundle
from exporter.bundle.limits import check_bundle_memory
from exporter.bundle.manifest import check_batch
from exporter.bundle.records import VariantRecord
from exporter.bundle.reference import judged_rows, stored_reference
from exporter.core.errors import BundleError, EnvironmentMissing, param
from exporter.core.progress import Reporter, SilentReporter, stage
from exporter.core.sizes import format_size
from exporter.parity.compare import Comparison, Recheck, check_parity
from exporter.parity.tolerance import TOLERANCES, Tolerance
from exporter.runtime.backends.base import BACKENDS, backend_problem, load_runner


def backend_tolerance(recorded: Tolerance, backend: str) -> Tolerance:
    """The fp32 file's tolerance on ``backend``: the recorded fp32 one, except that OpenVINO in
    bf16 is judged as DESIGN.md judges fp16 (it computes matmuls in bf16)."""
    return TOLERANCES["fp16"] if backend == "openvino-bf16" else recorded


def check_variant(
    opened: Bundle, record: VariantRecord, threads: int | None = None, backend: str = "ort-cpu", size: str = "opt"
) -> Recheck:
    """Files first (inside, sha256), then each ONNX on ``backend`` against the stored PyTorch logits
    (``size``: a dynamic-resolution variant's ``min`` or ``max`` check)."""
    label = record.label if backend == "ort-cpu" else f"{record.label} {backend}"
    if size != "opt":
        label = f"{label} at {format_size(record.img_range[size == 'max'])}"  # type: ignore[index]
    problem = opened.variant_problems(record)
    if problem:
        return Recheck(label, False, None, problem)
    onnx_path = opened.onnx(record)
    try:
        planned, expected = stored_reference(opened.root, opened.manifest, record, size)
    except BundleError as exc:
        return Recheck(label, True, None, str(exc))
    export = opened.manifest.options.export
    batch = check_batch(export.batch)
    inputs = planned.arrays()
    tol = backend_tolerance(record.onnx.tolerance.judge(), backend)
    classifier = opened.manifest.classifier
    cmp = check_parity(expected, load_runner(onnx_path, backend, threads), inputs, batch, tol, classifier)
    reduced: Comparison | None = None
    if record.reduced and size == "opt":
        precision = record.reduced.precision
        samples = opened.manifest.options.parity_samples
        x, y = judged_rows(samples, precision, inputs), judged_rows(samples, precision, expected)
        runner = load_runner(opened.onnx(record, precision), backend, threads)
        reduced = check_parity(y, runner, x, batch, record.reduced.tolerance.judge(), classifier)
    return Recheck(label, True, cmp, reduced=reduced)


def fastest_passing(opened: Bundle, timings: Sequence[Any], threads: int | None = None) -> dict[str, tuple[str, float]]:
    """Per variant, the fastest runtime backend (by p50 at its smallest batch timed) whose run of
    the fp32 ONNX meets that backend's tolerance against the stored reference: what a CPU user
    should run. Only the runtime's backends are judged (PyTorch rows are the reference)."""

    found: dict[str, tuple[str, float]] = {}
    for record in opened.manifest.variants:
        rows = [t for t in timings if t.variant == record.label and t.backend in BACKENDS]
        if not rows or not record.reference:
            continue
        smallest = min(t.batch for t in rows)
        for t in sorted((t for t in rows if t.batch == smallest), key=lambda t: t.p50_ms):
            result = check_variant(opened, record, threads, t.backend)
            if result.sha256_ok and result.comparison:  # the fp32 file's verdict on this backend
                found[record.label] = (t.backend, t.p50_ms)
                break
    return found


def check_bundle(
    bundle: Path, threads: int | None = None, reporter: Reporter | None = None, backends: Sequence[str] = ("ort-cpu",)
) -> list[Recheck]:
    """``validate``'s verdict on every variant and backend, from the bundle alone."""
    for backend in backends:
        problem = backend_problem(backend)
        if problem:
            raise EnvironmentMissing(f"{param('backends')} {backend}: {problem}")
    reporter = reporter or SilentReporter()
    opened = Bundle.open(bundle)
    check_bundle_memory(opened.manifest, opened.root, "validate")
    reporter.begin(len(opened.manifest.variants) * len(backends))
    times: dict[str, float] = {}
    results = []
    for backend in backends:
        for record in opened.manifest.variants:
            with stage(reporter, record.label, f"parity on {backend} (stored reference)", times):
                results.append(check_variant(opened, record, threads, backend))
                # a dynamic-resolution ONNX: its smallest and largest size too
                results += [
                    check_variant(opened, record, threads, backend, s) for s in ("min", "max") if record.dynamic
                ]
    opened.check_unchanged()  # a build swapped a new bundle in meanwhile: no verdict on a mix of two
    return results
