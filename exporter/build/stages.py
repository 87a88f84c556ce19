"""The stages of one variant: resize, export, parity (fixed, dynamic and reduced precision),
shared weights; and the digest that lets ``--resume`` reuse an unchanged variant."""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Literal

import numpy as np
from typing_extensions import TypedDict

from exporter import __version__
from exporter.build.export import check_onnx, export_onnx
from exporter.build.inputs import InputPlan
from exporter.build.lint import lint_onnx
from exporter.build.options import BuildOptions
from exporter.build.precision import int8_float_nodes, to_fp16, to_int8
from exporter.build.runners import ort_runner, torch_runner
from exporter.build.shared import share_weights
from exporter.build.variant import GRAPH_POS_RESIZE, VariantSpec, count_layernorms, fixed_at, make_variant
from exporter.bundle.door import Bundle
from exporter.bundle.manifest import ARTEFACTS, check_batch, output_name
from exporter.bundle.records import (
    DynamicCheck,
    DynamicEntry,
    OnnxEntry,
    ParityStats,
    ReducedEntry,
    ReferenceEntry,
    SharedWeights,
    ToleranceRecord,
    TrtLint,
    VariantParity,
    VariantRecord,
)
from exporter.bundle.reference import REFERENCE_DIR, ParityInputs, save_reference
from exporter.bundle.schema import Manifest
from exporter.core.files import sha256_file
from exporter.core.precision import Precision
from exporter.core.progress import Reporter, stage
from exporter.core.sizes import format_size
from exporter.parity.compare import check_parity, run_batched
from exporter.parity.tolerance import tolerance_for
from exporter.source.model import SourceModel


def state_digest(source: SourceModel) -> str:
    """sha256 over the tensors (for sources with no file, e.g. hub downloads)."""
    import torch

    digest = hashlib.sha256()
    for key in sorted(source.state_dict):
        raw = source.state_dict[key].detach().cpu().contiguous().view(-1).view(torch.uint8)  # any dtype, as bytes
        digest.update(key.encode())
        digest.update(raw.numpy().tobytes())
    return digest.hexdigest()


def input_key(source_sha: str, calib_sha: str | None, spec: VariantSpec, options: BuildOptions) -> str:
    """A digest of everything that determines a variant's ONNX and its parity verdict
    (``calib_sha``: ``InputPlan.key``, computed once per build)."""

    payload = {
        "source": source_sha,
        "patch": spec.patch_size,
        "img": spec.img_size,
        "img_range": spec.img_range,
        "patch_resize": str(spec.patch_resize),
        "pos_resize": str(spec.pos_resize),
        "export": asdict(options.export),
        "tolerance": asdict(options.tolerance),
        "samples": options.parity_samples,
        "seed": options.seed,
        "calib": calib_sha,
        "precision": options.precision,
        "shared_weights": options.shared_weights,
        "flexiexport": __version__,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def _reuse(old: Bundle | None, label: str, key: str, tmp: Path) -> VariantRecord | None:
    """The old record of a variant whose inputs and ONNX are unchanged, with its file copied."""
    if old is None:
        return None
    record = next((v for v in old.manifest.variants if v.label == label), None)
    if record is None or record.input_key != key or record.status != "passed" or not record.reference:
        return None
    if old.variant_problems(record):
        return None
    for rel, sha in record.files():
        (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(old.file(rel, sha), tmp / rel)
    return record.but(resumed=True)


class MeasuredFiles(TypedDict):
    """What the measurements of a bundle depend on (``measured_files``)."""

    variants: dict[str, list[str | None]]  # label: its ONNX's sha256, its reduced ONNX's (or None)
    shared: str | None  # the shared weights' sha256
    preprocessing: dict[str, object]  # as the manifest's JSON has it: compared whole


def measured_files(manifest: Manifest) -> MeasuredFiles:
    """What the measurements of a bundle (bench.json, eval.json, ...) depend on: each variant's
    ONNX files by sha256, the shared weights and the preprocessing (as the manifest's JSON has them)."""
    found: MeasuredFiles = {
        "variants": {v.label: [v.onnx.sha256, v.reduced.sha256 if v.reduced else None] for v in manifest.variants},
        "shared": manifest.shared_weights.sha256 if manifest.shared_weights else None,
        "preprocessing": manifest.preprocessing.model_dump(mode="json", exclude_unset=True),
    }
    return json.loads(json.dumps(found))  # tuples as lists, as read back from a manifest.json


def carry_measurements(old: Bundle, new: Manifest, tmp: Path) -> tuple[list[str], str]:
    """``--resume``: the old bundle's measurements (``ARTEFACTS``) copied into ``tmp`` when every
    variant they measured is still in the bundle with the same files; else none, and why."""
    present = [n for n in ARTEFACTS if (old.root / n).is_file() and not (old.root / n).is_symlink()]
    if not present:
        return [], ""
    before, after = measured_files(old.manifest), measured_files(new)
    changed = [k for k, v in before["variants"].items() if after["variants"].get(k) != v]
    gone = [k for k in changed if k not in after["variants"]]
    if changed or before["shared"] != after["shared"] or before["preprocessing"] != after["preprocessing"]:
        why = (
            f"{', '.join(gone)} no longer built"
            if gone
            else f"the ONNX of {', '.join(changed)} changed"
            if changed
            else "the shared weights or the preprocessing changed"
        )
        return [], f"dropped {', '.join(present)} of the previous bundle ({why}): measure again"
    for name in present:
        shutil.copy2(old.root / name, tmp / name)
    return present, ""


def build_variant(
    source: SourceModel,
    spec: VariantSpec,
    options: BuildOptions,
    plan: InputPlan,
    tmp: Path,
    key: str,
    reporter: Reporter,
    times: dict[str, float],
) -> VariantRecord:
    """Resize, export and check one variant; returns its manifest record."""

    label = spec.label
    with stage(reporter, label, "resize", times):
        variant = make_variant(source, spec)
    rel = Path("onnx") / f"model_{label}.onnx"
    (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
    dynamic = spec.img_range is not None
    with stage(reporter, label, "export", times):
        output = output_name(source.num_classes)  # a feature model's output is `embeddings`
        info = export_onnx(variant.model, spec.img_size, tmp / rel, options.export, dynamic, output)
        lint = lint_onnx(tmp / rel, layernorms=count_layernorms(variant.model), dynamic_hw=dynamic)
    with stage(reporter, label, "parity", times):
        start = time.perf_counter()
        planned = plan.parity(spec)
        inputs = planned.arrays()
        batch = check_batch(options.export.batch)
        # A dynamic ONNX is judged against a fixed-size model at each size, its opt size included.
        reference_model = fixed_at(source, spec, spec.img_size) if dynamic else variant.model
        expected = run_batched(torch_runner(reference_model), inputs, batch)
        candidate = ort_runner(tmp / rel, options.threads)
        comparison = check_parity(expected, candidate, inputs, batch, options.tolerance, source.num_classes != 0)
        ref_rel = Path(REFERENCE_DIR) / f"model_{label}.npz"
        save_reference(tmp / ref_rel, planned, expected)
        sizes = dynamic_checks(source, spec, options, plan, tmp, rel) if dynamic else None
        parity_seconds = time.perf_counter() - start
    onnx_record = OnnxEntry(
        path=str(rel),
        sha256=info.sha256,
        opset=info.opset,
        exporter=info.exporter,
        inputs=list(info.inputs),
        outputs=list(info.outputs),
        num_nodes=info.num_nodes,
        op_counts=dict(info.op_counts),
        size_bytes=info.size_bytes,
        tolerance=ToleranceRecord.of(options.tolerance),
    )
    parity = VariantParity.of(comparison, inputs=planned.what)
    reduced = None
    if options.precision.reduced:
        with stage(reporter, label, options.precision, times):
            reduced = reduced_variant(spec, options, plan, tmp, rel, inputs, expected, batch, source.num_classes != 0)
    reference = reference_entry(tmp, ref_rel, planned)
    return VariantRecord(
        label=label,
        patch_size=spec.patch_size,
        img_size=spec.img_size,
        grid=spec.grid,
        tokens=variant.tokens,
        gflops=round(variant.gflops, 6),
        patch_resize=str(spec.patch_resize),
        pos_resize=str(spec.pos_resize),
        onnx=onnx_record,
        parity=parity,
        status="passed"
        if comparison and all(c is None or c.status == "passed" for c in (reduced, sizes))
        else "failed",
        export_seconds=round(info.seconds, 3),
        parity_seconds=round(parity_seconds, 3),
        input_key=key,
        resumed=False,
        trt_lint=TrtLint.model_validate(lint.to_dict()),
        reduced=reduced,
        reference=reference,
        dynamic=sizes,
        native_agreement=None,  # measured over all variants (build.agreement)
    )


def dynamic_checks(
    source: SourceModel, spec: VariantSpec, options: BuildOptions, plan: InputPlan, tmp: Path, rel: Path
) -> DynamicEntry:
    """A dynamic-resolution ONNX at its smallest and largest size (the opt size is the variant's own
    check), each against a fixed-size PyTorch model built for exactly that size
    (``variant.fixed_at``: the position grid resampled offline as the graph does), with a stored
    reference each so that ``validate`` judges all three without torch."""

    assert spec.img_range is not None
    batch = check_batch(options.export.batch)
    runner = ort_runner(tmp / rel, options.threads)
    checks: list[DynamicCheck] = []
    which: Literal["min", "max"]
    for which, size in (("min", spec.img_range[0]), ("max", spec.img_range[1])):
        planned = plan.parity(spec.at(size))
        inputs = planned.arrays()
        expected = run_batched(torch_runner(fixed_at(source, spec, size)), inputs, batch)
        comparison = check_parity(expected, runner, inputs, batch, options.tolerance, source.num_classes != 0)
        ref_rel = Path(REFERENCE_DIR) / f"model_{spec.label}_{which}.npz"
        save_reference(tmp / ref_rel, planned, expected)
        parity = VariantParity.of(comparison, inputs=planned.what)
        reference = reference_entry(tmp, ref_rel, planned)
        checks.append(DynamicCheck(size=which, img_size=size, parity=parity, reference=reference))
    return DynamicEntry(
        min=spec.img_range[0],
        opt=spec.img_size,
        max=spec.img_range[1],
        multiple_of=spec.patch_size,
        pos_resample=f"{GRAPH_POS_RESIZE} in the graph (ONNX Resize cubic), from the {format_size(spec.grid)} grid",
        checks=checks,
        status="passed" if all(c.parity.passed for c in checks) else "failed",
    )


def reference_entry(tmp: Path, rel: Path, planned: ParityInputs) -> ReferenceEntry:
    """The manifest's record of a stored reference: its file and the inputs it holds."""
    return ReferenceEntry.model_validate({"path": rel.as_posix(), "sha256": sha256_file(tmp / rel), **planned.record()})


def reduced_variant(
    spec: VariantSpec,
    options: BuildOptions,
    plan: InputPlan,
    tmp: Path,
    rel: Path,
    inputs: np.ndarray,
    expected: np.ndarray,
    batch: int,
    classifier: bool = True,
) -> ReducedEntry:
    """Convert the fp32 ONNX to ``options.precision`` and check it against PyTorch fp32
    (``expected``: PyTorch's logits on ``inputs``)."""

    start = time.perf_counter()
    out_rel = rel.with_name(f"{rel.stem}.{options.precision}.onnx")
    anchors: list[str] = []
    calibration = ""
    if options.precision == Precision.FP16:
        anchors = to_fp16(tmp / rel, tmp / out_rel)
    else:
        static = None if options.export.batch == "dynamic" else int(options.export.batch)
        images, calibration = plan.calibration(spec)
        anchors = to_int8(tmp / rel, tmp / out_rel, images, static, exclude=int8_float_nodes(tmp / rel))
    import onnx

    onnx.checker.check_model(str(tmp / out_rel), full_check=True)
    tol = tolerance_for(options.precision, "onnxruntime")
    inputs, expected = plan.reduced(options.precision, inputs), plan.reduced(options.precision, expected)
    cmp = check_parity(expected, ort_runner(tmp / out_rel, options.threads), inputs, batch, tol, classifier)
    entry = ReducedEntry(
        precision=options.precision.value,  # type: ignore[arg-type]  # fp16 or int8 here: reduced precisions only
        shared_weights=options.shared_weights,
        path=str(out_rel),
        sha256=sha256_file(tmp / out_rel),
        bytes=(tmp / out_rel).stat().st_size,
        fp32_nodes=anchors,
        tolerance=ToleranceRecord.of(tol),
        parity=ParityStats.of(cmp),
        status="passed" if cmp else "failed",
        seconds=round(time.perf_counter() - start, 3),
    )
    return entry.but(calibration=calibration) if calibration else entry


def share_bundle_weights(
    specs: list[VariantSpec], options: BuildOptions, plan: InputPlan, tmp: Path, records: list[VariantRecord]
) -> tuple[list[VariantRecord], SharedWeights]:
    """Move the weights all variants share into one external file; each file must still give
    exactly the outputs it gave before (same graph, same bytes), or its variant fails."""

    paths = [tmp / r.onnx.path for r in records]
    batch = check_batch(options.export.batch)
    inputs = [plan.parity(spec).arrays() for spec in specs]
    before = [run_batched(ort_runner(p, options.threads), x, batch) for p, x in zip(paths, inputs)]
    sizes = sum(p.stat().st_size for p in paths)
    info = share_weights(paths)
    updated = []
    for record, path, x, reference in zip(records, paths, inputs, before):
        same = bool(np.array_equal(run_batched(ort_runner(path, options.threads), x, batch), reference))
        checked = check_onnx(path, str(record.onnx.exporter), 0.0)
        onnx_record = record.onnx.but(
            sha256=checked.sha256, size_bytes=checked.size_bytes, external_data=f"onnx/{info.path.name}"
        )
        parity = record.parity if same else record.parity.but(passed=False, failures=[CHANGED_BY_SHARING])
        updated.append(record.but(onnx=onnx_record, parity=parity, status=record.status if same else "failed"))
    shared = SharedWeights(
        path=f"onnx/{info.path.name}",
        sha256=info.sha256,
        bytes=info.bytes,
        tensors=info.tensors,
        bundle_onnx_bytes_before=sizes,
        bundle_onnx_bytes_after=info.bytes + sum(p.stat().st_size for p in paths),
    )
    return updated, shared


CHANGED_BY_SHARING = "outputs changed when sharing weights"
