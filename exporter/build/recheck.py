"""``validate --rebuild``: a bundle's variants rebuilt from the recorded source and checked again."""

from __future__ import annotations

from pathlib import Path

from exporter.build.inputs import InputPlan
from exporter.build.runners import ort_runner, torch_runner
from exporter.build.variant import VariantSpec, fixed_at, make_variant, variant_label
from exporter.bundle.door import Bundle
from exporter.bundle.limits import check_bundle_memory
from exporter.bundle.manifest import check_batch
from exporter.bundle.records import VariantRecord
from exporter.bundle.reference import stored_reference
from exporter.bundle.schema import Manifest
from exporter.core.errors import BundleError, param
from exporter.core.files import sha256_file
from exporter.core.names import printable
from exporter.core.progress import Reporter, SilentReporter, stage
from exporter.core.sizes import format_size
from exporter.parity.compare import Recheck, check_parity
from exporter.source.config import resolve_weights
from exporter.source.load import load_source
from exporter.source.model import SourceModel, SourceSpec
from exporter.source.resampling import ResizeMethod


def parse_resize_method(text: str) -> ResizeMethod:
    """Inverse of ``str(ResizeMethod)``: ``bilinear+antialias`` → ResizeMethod."""
    name, _, flag = text.partition("+")
    return ResizeMethod(name, antialias=flag == "antialias")


def bundle_source(manifest: Manifest, weights: Path | None = None) -> SourceModel:
    """Reload the checkpoint a bundle was built from: ``weights``, or the file the manifest names.
    That file is hashed before it is read and refused unless its sha256 is the manifest's; a
    bundle never makes a command download weights (hub-built bundles need ``--weights``)."""

    src = manifest.source
    if weights is None and not src.path:
        raise BundleError(
            f"the bundle names no checkpoint file (it was built from hub weights): pass {param('weights')} FILE"
        )
    path = resolve_weights(weights) if weights else Path(str(src.path))  # a folder: its weights file
    if not path.is_file():
        shown = printable(str(path))
        raise BundleError(f"the bundle's source checkpoint {shown!r} is gone; pass {param('weights')} FILE")
    if weights is None and not src.sha256:
        raise BundleError(f"the manifest records no sha256 for {printable(str(path))!r}: pass {param('weights')} FILE")
    sha = sha256_file(path)
    if src.sha256 and sha != src.sha256:
        raise BundleError(
            f"{printable(str(path))} has sha256 {sha[:16]}…, but the bundle was built from {src.sha256[:16]}…"
        )
    arch = src.architecture
    spec = SourceSpec(weights=path, model_name=arch.model_name, num_heads=arch.num_heads)
    return load_source(spec)


def record_spec(record: VariantRecord) -> VariantSpec:
    """The ``VariantSpec`` a manifest record was built from."""

    return VariantSpec(
        record.patch_size,
        record.img_size,
        parse_resize_method(record.patch_resize),
        parse_resize_method(record.pos_resize),
        sized=record.label != variant_label(record.patch_size),
        img_range=record.img_range,
    )


def recheck_bundle(bundle: Path, weights: Path | None = None, reporter: Reporter | None = None) -> list[Recheck]:
    """Re-verify every file's sha256, rebuild every variant in PyTorch from the checkpoint and
    re-run parity on the build's inputs (the ones the bundle's reference stores: the recorded
    ``--calib-dir`` is never read again)."""

    reporter = reporter or SilentReporter()
    opened = Bundle.open(bundle)
    manifest = opened.manifest
    check_bundle_memory(manifest, bundle, "validate")
    source = bundle_source(manifest, weights)
    batch = check_batch(manifest.options.export.batch)
    plan = InputPlan.for_bundle(manifest).with_source(source)
    reporter.begin(len(manifest.variants) * 2)
    results = []
    times: dict[str, float] = {}
    for record in manifest.variants:
        with stage(reporter, record.label, "sha256", times):
            problem = opened.variant_problems(record)
        if problem:
            results.append(Recheck(record.label, False, None, problem))
            continue
        vspec = record_spec(record)
        with stage(reporter, record.label, "parity", times):
            model = fixed_at(source, vspec, vspec.img_size) if vspec.img_range else make_variant(source, vspec).model
            reference = torch_runner(model)
            planned = stored_reference(opened.root, manifest, record)[0] if record.reference else plan.parity(vspec)
            inputs = planned.arrays()
            tol = record.onnx.tolerance.judge()
            cmp = check_parity(reference, ort_runner(opened.onnx(record)), inputs, batch, tol, manifest.classifier)
            reduced = None
            if record.reduced:
                reduced = check_parity(
                    reference,
                    ort_runner(opened.onnx(record, record.reduced.precision)),
                    plan.reduced(record.reduced.precision, inputs),
                    batch,
                    record.reduced.tolerance.judge(),
                    manifest.classifier,
                )
        results.append(Recheck(record.label, True, cmp, reduced=reduced))
        for which, size in zip(("min", "max"), vspec.img_range or ()):
            with stage(reporter, record.label, f"parity at {format_size(size)}", times):
                planned = stored_reference(opened.root, manifest, record, which)[0]
                runner = torch_runner(fixed_at(source, vspec, size))
                onnx_runner = ort_runner(opened.onnx(record))
                tol = record.onnx.tolerance.judge()
                cmp = check_parity(runner, onnx_runner, planned.arrays(), batch, tol, manifest.classifier)
            results.append(Recheck(f"{record.label} at {format_size(size)}", True, cmp))
    opened.check_unchanged()  # a build swapped a new bundle in meanwhile: no verdict on a mix of two
    return results
