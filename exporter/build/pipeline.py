"""The build pipeline: the only module that knows the order of the stages.

    load ─▶ plan sizes ─▶ for each patch size: resize ─▶ export ─▶ parity ─▶ record
         ─▶ manifest + report ─▶ atomic swap into --out

Everything is written into a temporary folder beside ``--out`` and renamed into place at the
end, so an interrupted or failed build never leaves a half-written or clobbered bundle.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import shutil
import time
from dataclasses import asdict, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from exporter.build.inputs import InputPlan
from exporter.build.options import STAGES, BuildOptions, BuildResult
from exporter.build.variant import VariantSpec
from exporter.bundle.door import Bundle, check_replaceable_bundle, staging_folder, swap_into_place
from exporter.bundle.limits import Workload, check_bundle_memory, check_memory, prefix_tokens
from exporter.bundle.manifest import (
    INPUT_NAME,
    MANIFEST,
    REPORT,
    SCHEMA_VERSION,
    Manifest,
    VariantRecord,
    check_batch,
    output_name,
)
from exporter.bundle.reference import REFERENCE_DIR, save_reference, stored_reference
from exporter.bundle.report import render_report
from exporter.core.assumptions import Assumption
from exporter.core.errors import BundleError, EnvironmentMissing, UsageError
from exporter.core.files import sha256_file, write_atomic
from exporter.core.names import printable
from exporter.core.precision import REDUCED_PRECISIONS, Precision
from exporter.core.progress import Reporter, SilentReporter, stage
from exporter.core.sizes import format_range, format_size
from exporter.parity.compare import Recheck
from exporter.source.demo import DEMO_NAME
from exporter.source.load import SourceModel, SourceSpec
from exporter.source.resampling import ResizeMethod
from exporter.tensorrt.profile import Profile
from exporter.tensorrt.stage import build_engines, pending_engines, write_engine_script

log = logging.getLogger(__name__)


def default_out(source_name: str) -> Path:
    return Path("bundles") / source_name


def library_versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import timm
    import torch

    from exporter import __version__

    return {
        "flexiexport": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "numpy": np.__version__,
    }


def source_record(source: SourceModel) -> dict[str, Any]:
    arch = {
        "model_name": source.model_name,
        "family": source.family,
        "kernel_size": list(source.patch_size),
        "pos_grid": list(source.pos_grid),
        "img_size": list(source.img_size),
        "embed_dim": source.embed_dim,
        "depth": source.depth,
        "num_heads": source.num_heads,
        "num_classes": source.num_classes,
        "in_chans": source.in_chans,
        "num_pos_prefix_tokens": source.num_pos_prefix,
        "model_args": dict(source.model_args),
        "assumed": list(source.inferred),
        "assumptions": [asdict(a) for a in source.assumptions],
        **({"notes": list(source.origin.notes)} if source.origin.notes else {}),
        "summary": (
            f"{source.model_name or 'ViT (inferred)'}: {source.depth} blocks, width {source.embed_dim}, "
            f"{source.num_heads} heads, kernel {format_size(source.patch_size)}, "
            f"pos grid {format_size(source.pos_grid)}, native {format_size(source.img_size)}, "
            + (f"{source.num_classes} classes" if source.num_classes else "no classifier (outputs embeddings)")
        ),
    }
    o = source.origin
    return {
        "name": source.name,
        "kind": o.kind,
        "path": str(o.path) if o.path else None,
        "sha256": o.sha256,
        "format": o.file_format,
        "container": o.container,
        "dtype": str(source.dtype).replace("torch.", ""),
        "architecture": arch,
    }


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
    from exporter import __version__

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


def plan_variants(source: SourceModel, options: BuildOptions) -> list[VariantSpec]:
    """One spec per patch size, or per (patch, image size) of a grid; every size problem is
    reported before any work starts (a grid's impossible pairs are logged and left out)."""
    from exporter.build.variant import fitted_img_size, plan_grid
    from exporter.source.resampling import default_patch_resize

    patch_resize = options.patch_resize.resolve(default_patch_resize(source.family))
    pos_resize = options.pos_resize.resolve(source.pos_resize_method())  # the source framework's own by default
    if options.img_range is not None:
        from exporter.build.variant import plan_dynamic

        if "distilled" in (source.model_name or ""):  # the in-graph resample knows class and register tokens only
            raise UsageError(
                f"--img-size dynamic:{format_range(options.img_range)} does not support a distilled DeiT "
                f"({source.model_name}: its distillation token); give fixed image sizes"
            )
        planned, impossible = plan_dynamic(options.patch_sizes, options.img_range, source.img_size)
        for line in impossible:
            log.info("left out %s", line)
        return [VariantSpec(p, opt, patch_resize, pos_resize, img_range=fits) for p, opt, fits in planned]
    if options.img_sizes:
        plan = plan_grid(options.patch_sizes, options.img_sizes)
        for line in plan.impossible:
            log.info("left out %s", line)  # the manifest records them; the CLI prints them
        return [VariantSpec(patch, img, patch_resize, pos_resize, sized=True) for patch, img in plan.pairs]
    specs = []
    for patch in options.patch_sizes:
        img = fitted_img_size(source.img_size, patch, options.img_size)
        assert img is not None  # the native size is known once loaded
        specs.append(VariantSpec(patch, img, patch_resize, pos_resize))
    return specs


def check_sizes_before_loading(options: BuildOptions) -> None:
    """Refuse a patch size that cannot fit before the checkpoint is read: against ``--img-size N``,
    or the native size the config beside the weights states (the demo's 64); a grid with no
    possible pair. Sizes that only the weights can tell are checked by ``plan_variants``."""
    from exporter.build.variant import fitted_img_size, plan_grid
    from exporter.source.load import stated_img_size

    if options.img_sizes:
        plan_grid(options.patch_sizes, options.img_sizes)
        return
    if options.img_range is not None:
        from exporter.build.variant import plan_dynamic

        plan_dynamic(options.patch_sizes, options.img_range, options.img_range[0])
        return
    native = None if isinstance(options.img_size, tuple) else stated_img_size(options.source)
    for patch in options.patch_sizes:
        fitted_img_size(native, patch, options.img_size)


def check_build_memory(source: SourceModel, specs: list[VariantSpec], options: BuildOptions) -> None:
    """Refuse (exit 2) a build whose largest variant cannot fit in the memory available,
    before anything is resized, exported or drawn."""
    params = sum(t.numel() for t in source.state_dict.values())
    weight_bytes = sum(t.numel() * t.element_size() for t in source.state_dict.values())
    images = InputPlan.for_build(options, source.name).images_per_variant
    for spec in specs:
        w = Workload(
            params=params,
            weight_bytes=weight_bytes,
            embed_dim=source.embed_dim,
            depth=source.depth,
            num_heads=source.num_heads,
            num_classes=source.num_classes,
            img_size=spec.img_range[1] if spec.img_range else spec.img_size,  # a dynamic one: its largest
            patch_size=spec.patch_size,
            batch=check_batch(options.export.batch),
            images=images,
            prefix_tokens=prefix_tokens(source.model_args),
            mlp_ratio=float(source.model_args.get("mlp_ratio", 4.0)),
            in_chans=source.in_chans,
        )
        size, patch = format_size(spec.img_size), format_size(spec.patch_size)
        policy = options.img_size
        what = (
            f"--img-size {size} with patch {patch}"
            if isinstance(policy, tuple)
            else f"patch {patch} at image size {size}"
        )
        check_memory(w, what)


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
    return replace(record, resumed=True)


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
    from exporter.build.export import export_onnx
    from exporter.build.lint import lint_onnx
    from exporter.build.runners import ort_runner, torch_runner
    from exporter.build.variant import count_layernorms, fixed_at, make_variant
    from exporter.parity.compare import compare_outputs, run_batched

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
        actual = run_batched(ort_runner(tmp / rel, options.threads), inputs, batch)
        comparison = compare_outputs(expected, actual, options.tolerance, source.num_classes != 0)
        ref_rel = Path(REFERENCE_DIR) / f"model_{label}.npz"
        save_reference(tmp / ref_rel, planned, expected)
        sizes = dynamic_checks(source, spec, options, plan, tmp, rel) if dynamic else {}
        parity_seconds = time.perf_counter() - start
    onnx_record = {
        **asdict(info),
        "path": str(rel),
        "tolerance": asdict(options.tolerance),
        "inputs": [asdict(i) for i in info.inputs],
        "outputs": [asdict(o) for o in info.outputs],
        "op_counts": dict(info.op_counts),
    }
    onnx_record.pop("seconds")
    parity = comparison.to_dict() | {"inputs": planned.what}
    reduced: dict[str, Any] = {}
    if options.precision.reduced:
        with stage(reporter, label, options.precision, times):
            reduced = reduced_variant(spec, options, plan, tmp, rel, inputs, expected, batch, source.num_classes != 0)
    reference = {"path": ref_rel.as_posix(), "sha256": sha256_file(tmp / ref_rel), **planned.record()}
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
        if comparison and reduced.get("status", "passed") == "passed" and sizes.get("status", "passed") == "passed"
        else "failed",
        export_seconds=round(info.seconds, 3),
        parity_seconds=round(parity_seconds, 3),
        input_key=key,
        trt_lint=lint.to_dict(),
        reduced=reduced,
        reference=reference,
        dynamic=sizes,
    )


def dynamic_checks(
    source: SourceModel, spec: VariantSpec, options: BuildOptions, plan: InputPlan, tmp: Path, rel: Path
) -> dict[str, Any]:
    """A dynamic-resolution ONNX at its smallest and largest size (the opt size is the variant's own
    check), each against a fixed-size PyTorch model built for exactly that size
    (``variant.fixed_at``: the position grid resampled offline as the graph does), with a stored
    reference each so that ``validate`` judges all three without torch."""
    from exporter.build.runners import ort_runner, torch_runner
    from exporter.build.variant import GRAPH_POS_RESIZE, fixed_at
    from exporter.parity.compare import compare_outputs, run_batched

    assert spec.img_range is not None
    batch = check_batch(options.export.batch)
    runner = ort_runner(tmp / rel, options.threads)
    checks: list[dict[str, Any]] = []
    for which, size in zip(("min", "max"), spec.img_range):
        planned = plan.parity(spec.at(size))
        inputs = planned.arrays()
        expected = run_batched(torch_runner(fixed_at(source, spec, size)), inputs, batch)
        comparison = compare_outputs(
            expected, run_batched(runner, inputs, batch), options.tolerance, source.num_classes != 0
        )
        ref_rel = Path(REFERENCE_DIR) / f"model_{spec.label}_{which}.npz"
        save_reference(tmp / ref_rel, planned, expected)
        reference = {"path": ref_rel.as_posix(), "sha256": sha256_file(tmp / ref_rel), **planned.record()}
        checks.append(
            {
                "size": which,
                "img_size": list(size),
                "parity": comparison.to_dict() | {"inputs": planned.what},
                "reference": reference,
            }
        )
    return {
        "min": list(spec.img_range[0]),
        "opt": list(spec.img_size),
        "max": list(spec.img_range[1]),
        "multiple_of": list(spec.patch_size),
        "pos_resample": f"{GRAPH_POS_RESIZE} in the graph (ONNX Resize cubic), from the {format_size(spec.grid)} grid",
        "checks": checks,
        "status": "passed" if all(c["parity"]["passed"] for c in checks) else "failed",
    }


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
) -> dict[str, Any]:
    """Convert the fp32 ONNX to ``options.precision`` and check it against PyTorch fp32
    (``expected``: PyTorch's logits on ``inputs``)."""
    from exporter.build.precision import int8_float_nodes, to_fp16, to_int8
    from exporter.build.runners import ort_runner
    from exporter.parity.compare import compare_outputs, run_batched, tolerance_for

    start = time.perf_counter()
    out_rel = rel.with_name(f"{rel.stem}.{options.precision}.onnx")
    anchors: list[str] = []
    calibration = ""
    if options.precision == Precision.FP16:
        anchors = to_fp16(tmp / rel, tmp / out_rel)
    else:
        static = None if options.export.batch == "dynamic" else int(options.export.batch)
        images, calibration = plan.calibration(spec)
        anchors = int8_float_nodes(tmp / rel)
        to_int8(tmp / rel, tmp / out_rel, images, static, exclude=anchors)
    import onnx

    onnx.checker.check_model(str(tmp / out_rel), full_check=True)
    tol = tolerance_for(options.precision, "onnxruntime")
    inputs, expected = plan.reduced(options.precision, inputs), plan.reduced(options.precision, expected)
    actual = run_batched(ort_runner(tmp / out_rel, options.threads), inputs, batch)
    cmp = compare_outputs(expected, actual, tol, classifier)
    return {
        "precision": options.precision,
        "shared_weights": options.shared_weights,
        "path": str(out_rel),
        "sha256": sha256_file(tmp / out_rel),
        "bytes": (tmp / out_rel).stat().st_size,
        "fp32_nodes": anchors,
        **({"calibration": calibration} if calibration else {}),
        "tolerance": asdict(tol),
        "parity": cmp.to_dict(),
        "status": "passed" if cmp else "failed",
        "seconds": round(time.perf_counter() - start, 3),
    }


def share_bundle_weights(
    specs: list[VariantSpec], options: BuildOptions, plan: InputPlan, tmp: Path, records: list[VariantRecord]
) -> tuple[list[VariantRecord], dict[str, Any]]:
    """Move the weights all variants share into one external file; each file must still give
    exactly the outputs it gave before (same graph, same bytes), or its variant fails."""
    from exporter.build.export import check_onnx
    from exporter.build.runners import ort_runner
    from exporter.build.shared import share_weights
    from exporter.parity.compare import run_batched

    paths = [tmp / r.onnx["path"] for r in records]
    batch = check_batch(options.export.batch)
    inputs = [plan.parity(spec).arrays() for spec in specs]
    before = [run_batched(ort_runner(p, options.threads), x, batch) for p, x in zip(paths, inputs)]
    sizes = sum(p.stat().st_size for p in paths)
    info = share_weights(paths)
    updated = []
    for record, path, x, reference in zip(records, paths, inputs, before):
        same = bool(np.array_equal(run_batched(ort_runner(path, options.threads), x, batch), reference))
        checked = check_onnx(path, record.onnx["exporter"], 0.0)
        onnx_record = record.onnx | {
            "sha256": checked.sha256,
            "size_bytes": checked.size_bytes,
            "external_data": f"onnx/{info.path.name}",
        }
        parity = record.parity | (
            {} if same else {"passed": False, "failures": ["outputs changed when sharing weights"]}
        )
        updated.append(replace(record, onnx=onnx_record, parity=parity, status=record.status if same else "failed"))
    after = info.bytes + sum(p.stat().st_size for p in paths)
    shared = {
        "path": f"onnx/{info.path.name}",
        "sha256": info.sha256,
        "bytes": info.bytes,
        "tensors": info.tensors,
        "bundle_onnx_bytes_before": sizes,
        "bundle_onnx_bytes_after": after,
    }
    return updated, shared


def build(options: BuildOptions, reporter: Reporter | None = None) -> BuildResult:
    """Build a bundle. Raises ``FlexiExportError`` subclasses for bad input; a variant that
    fails parity is recorded as ``failed`` (the caller decides the exit code)."""
    from exporter.core.locks import destination_lock
    from exporter.source.load import source_name

    reporter = reporter or SilentReporter()
    start = time.perf_counter()
    check_sizes_before_loading(options)
    name = source_name(options.source)
    out = Path(os.path.normpath(options.out or default_out(name)))
    with destination_lock(out):  # one build per --out, from this check to the end of the swap
        return _build_locked(options, reporter, out, name, start)


def _build_locked(options: BuildOptions, reporter: Reporter, out: Path, name: str, start: float) -> BuildResult:
    """``build`` with ``out``'s lock held."""
    from exporter.source.load import load_source

    times: dict[str, float] = {}

    def replaceable(path: Path) -> None:
        check_replaceable_bundle(path, options.force, options.resume, protected_inputs(options))

    replaceable(out)
    profile = check_engine_request(options)
    options = with_profile_precision(options, profile)
    plan = InputPlan.for_build(options, name)
    plan.check()
    if options.threads:
        import torch

        torch.set_num_threads(options.threads)
    with stage(reporter, "source", "load", times):
        source = load_source(options.source)
    plan = plan.with_source(source)
    specs = plan_variants(source, options)
    check_build_memory(source, specs, options)
    labels = class_names(source, options.labels)
    source = replace(source, assumptions=source.assumptions + label_assumptions(source, options.labels, labels))
    announce_assumptions(source, options.strict)
    old = _old_manifest(out) if options.resume else None
    source_sha = source.origin.sha256 or state_digest(source)
    calib_sha = plan.key()
    reporter.begin(len(specs) * len(STAGES))
    with staging_folder(out) as tmp:
        records = []
        for spec in specs:
            key = input_key(source_sha, calib_sha, spec, options)
            reusable = old if not options.shared_weights else None  # the shared file is rebuilt whole
            record = _reuse(reusable, spec.label, key, tmp) or build_variant(
                source, spec, options, plan, tmp, key, reporter, times
            )
            reporter.variant(record)
            records.append(record)
        with stage(reporter, "bundle", "native agreement", times):
            records = with_native_agreement(source, specs, options, plan, tmp, records)
        shared: dict[str, Any] = {}
        if options.shared_weights:
            with stage(reporter, "bundle", "shared weights", times):
                records, shared = share_bundle_weights(specs, options, plan, tmp, records)
        with stage(reporter, "source", "source parity", times):
            source_parity = check_source_parity(source, records, specs, options, plan, tmp)
        manifest = replace(
            _manifest(source, source_sha, calib_sha, options, records),
            shared_weights=shared,
            labels=labels,
            source_parity=source_parity,
        )
        if profile is not None:
            manifest = replace(
                manifest,
                engines={profile.name: engine_stage(tmp, out, manifest, profile, options, reporter, times)},
            )
        write_atomic(tmp / MANIFEST, manifest.to_json())
        write_atomic(tmp / REPORT, render_report(manifest))
        swap_into_place(tmp, out, replaceable=replaceable)
    return BuildResult(out, manifest, time.perf_counter() - start, times)


def check_source_parity(
    source: SourceModel,
    records: list[VariantRecord],
    specs: list[VariantSpec],
    options: BuildOptions,
    plan: InputPlan,
    tmp: Path,
) -> dict[str, Any]:
    """The native variant against the source framework's own model (``exporter.build.source_parity``)."""
    from exporter.build.source_parity import check_source

    batch = check_batch(options.export.batch)
    return check_source(source, records, specs, plan, tmp, options.tolerance, batch, options.threads)


def with_native_agreement(
    source: SourceModel,
    specs: list[VariantSpec],
    options: BuildOptions,
    plan: InputPlan,
    tmp: Path,
    records: list[VariantRecord],
) -> list[VariantRecord]:
    """Every record with its agreement with the source's own patch and size (``exporter.build.agreement``),
    resumed ones included: it is recomputed from the stored outputs, which costs no model run."""
    from exporter.build.agreement import native_agreement, native_outputs, native_spec

    spec = native_spec(source, specs[0])
    native = native_outputs(source, spec, plan, records, tmp, check_batch(options.export.batch))
    return [replace(r, native_agreement=native_agreement(r, spec, native, tmp, source)) for r in records]


def with_profile_precision(options: BuildOptions, profile: Profile | None) -> BuildOptions:
    """A profile that asks for fp16 or int8 gets that ONNX too (strongly typed TensorRT needs it),
    unless ``--precision`` was given; an int8 profile's ``calibration`` folder calibrates it."""
    if profile is None or options.precision_given or profile.precision not in REDUCED_PRECISIONS:
        return options
    calib = options.calib_dir
    if profile.precision == Precision.INT8 and calib is None and profile.calibration not in (None, "demo"):
        calib = Path(str(profile.calibration))
    return replace(options, precision=Precision(profile.precision), calib_dir=calib)


def check_engine_request(options: BuildOptions) -> Profile | None:
    """Load ``--profile`` and, for ``--engines required``, insist on TensorRT and a GPU (exit 4)."""
    if not options.profile:
        return None
    from exporter.tensorrt.profile import load_profile
    from exporter.tensorrt.trt import engine_problem

    profile = load_profile(options.profile)
    if options.engines == "required":
        problem = engine_problem(profile)
        if problem:
            raise EnvironmentMissing(f"--engines required, but {problem}")
    return profile


def engine_stage(
    tmp: Path,
    out: Path,
    manifest: Manifest,
    profile: Profile,
    options: BuildOptions,
    reporter: Reporter,
    times: dict[str, float],
) -> dict[str, Any]:
    """Always write the trtexec script; build engines when TensorRT and a GPU are here and they
    are what the profile is for (else the engines wait for the target, and the reason says why)."""
    from exporter.tensorrt.trt import engine_problem

    write_engine_script(tmp, manifest, profile)
    if options.engines == "skip":
        return pending_engines(str(out), profile, "--engines skip")
    problem = engine_problem(profile)
    if problem:
        return pending_engines(str(out), profile, problem)
    return build_engines(tmp, manifest, profile, reporter, times)


def _old_manifest(out: Path) -> Bundle | None:
    try:
        return Bundle.open(out) if (out / MANIFEST).is_file() else None
    except BundleError as exc:
        log.warning("--resume: ignoring the old manifest (%s)", exc)
        return None


def protected_inputs(options: BuildOptions) -> list[Path]:
    """What ``--out`` must never hold or replace: the checkpoint (and the config beside it) and
    the calibration images."""
    from exporter.source.load import weights_path

    weights = weights_path(options.source)
    return [p for p in (weights, options.calib_dir) if p is not None]


def class_names(source: SourceModel, labels: Path | None) -> tuple[str, ...]:
    """Class names by output index: ``--labels FILE`` (one per line), the demo's digits, timm's
    ImageNet-1k names for a 1000-class timm model; else none (the runtime shows indices)."""
    if labels is not None:
        try:
            names = tuple(line.strip() for line in labels.read_text(encoding="utf-8").splitlines() if line.strip())
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"cannot read --labels {printable(str(labels))!r}: {exc}") from exc
        if len(names) != source.num_classes or any(len(n) > 512 for n in names):
            raise UsageError(
                f"--labels {printable(str(labels))!r} has {len(names)} names (of at most 512 characters); "
                f"the model has {source.num_classes} classes: give one name per line"
            )
        return names
    if source.class_names:
        return source.class_names
    if source.name == DEMO_NAME:
        return tuple(str(d) for d in range(10))
    if source.model_name and source.num_classes == 1000:
        from timm.data import ImageNetInfo

        return tuple(ImageNetInfo().label_descriptions())
    return ()


def label_assumptions(source: SourceModel, labels: Path | None, names: tuple[str, ...]) -> tuple[Assumption, ...]:
    """timm's ImageNet-1k names given to a 1000-class checkpoint file that named none itself."""
    imagenet = labels is None and bool(names) and not source.class_names and source.name != DEMO_NAME
    if not imagenet or source.origin.kind == "pretrained":
        return ()
    return (Assumption("class names", "ImageNet-1k (timm's)", "pass --labels FILE or a config.json label_names"),)


def announce_assumptions(source: SourceModel, strict: bool) -> None:
    """A warning per assumption, naming what settles it; ``--strict`` refuses any (before any variant is built)."""
    from exporter.core.assumptions import summary

    if strict and source.assumptions:
        raise UsageError(f"--strict: {summary(source.assumptions)}")
    for assumption in source.assumptions:
        log.warning("assumed %s", assumption)


def img_size_policy(options: BuildOptions) -> str | list[int] | list[list[int]]:
    """What the manifest records: 'native', 'auto', one [h, w], or a grid's [[h, w], ...]."""
    if options.img_sizes:
        return [list(size) for size in options.img_sizes]
    if options.img_range is not None:
        return f"dynamic:{format_range(options.img_range)}"
    return options.img_size if isinstance(options.img_size, str) else list(options.img_size)


def _manifest(
    source: SourceModel, source_sha: str, calib_sha: str | None, options: BuildOptions, records: list[VariantRecord]
) -> Manifest:
    from exporter.build.variant import plan_grid

    impossible: tuple[str, ...] | list[str] = ()
    if options.img_sizes:
        impossible = plan_grid(options.patch_sizes, options.img_sizes).impossible
    elif options.img_range is not None:
        from exporter.build.variant import plan_dynamic

        impossible = plan_dynamic(options.patch_sizes, options.img_range, source.img_size)[1]
    pre = asdict(source.preprocessing)
    pre["input"] = {
        "name": INPUT_NAME,
        "layout": "NCHW",
        "dtype": "float32",
        "channels": "RGB",
        "range_before_normalisation": [0.0, 1.0],
    }
    what = records[0].parity.get("inputs", "") if records else ""
    opts = {
        "img_size_policy": img_size_policy(options),
        **({"impossible_variants": list(impossible)} if impossible else {}),
        "export": asdict(options.export),
        "parity_samples": options.parity_samples,
        "seed": options.seed,
        "parity_inputs": what,
        "calib_dir": str(options.calib_dir) if options.calib_dir else None,
        "calib_sha256": calib_sha,
        "threads": options.threads,
        "patch_sizes": [format_size(p) for p in options.patch_sizes],
    }
    return Manifest(
        schema_version=SCHEMA_VERSION,
        name=source.name,
        created=datetime.now(timezone.utc).replace(microsecond=0).isoformat(),
        versions=library_versions(),
        source={**source_record(source), "sha256": source_sha},
        preprocessing=pre,
        options=opts,
        variants=tuple(records),
    )


def parse_resize_method(text: str) -> ResizeMethod:
    """Inverse of ``str(ResizeMethod)``: ``bilinear+antialias`` → ResizeMethod."""
    name, _, flag = text.partition("+")
    return ResizeMethod(name, antialias=flag == "antialias")


def bundle_source(manifest: Manifest, weights: Path | None = None) -> SourceModel:
    """Reload the checkpoint a bundle was built from: ``weights``, or the file the manifest names.
    That file is hashed before it is read and refused unless its sha256 is the manifest's; a
    bundle never makes a command download weights (hub-built bundles need ``--weights``)."""
    from exporter.source.config import resolve_weights
    from exporter.source.load import load_source

    src = manifest.source
    if weights is None and not src.get("path"):
        raise BundleError("the bundle names no checkpoint file (it was built from hub weights): pass --weights FILE")
    path = resolve_weights(weights) if weights else Path(src["path"])  # a folder: its weights file
    if not path.is_file():
        raise BundleError(f"the bundle's source checkpoint {printable(str(path))!r} is gone; pass --weights FILE")
    if weights is None and not src.get("sha256"):
        raise BundleError(f"the manifest records no sha256 for {printable(str(path))!r}: pass --weights FILE")
    sha = sha256_file(path)
    if src.get("sha256") and sha != src["sha256"]:
        raise BundleError(
            f"{printable(str(path))} has sha256 {sha[:16]}…, but the bundle was built from {src['sha256'][:16]}…"
        )
    arch = src["architecture"]
    spec = SourceSpec(weights=path, model_name=arch.get("model_name"), num_heads=arch.get("num_heads"))
    return load_source(spec)


def record_spec(record: VariantRecord) -> VariantSpec:
    """The ``VariantSpec`` a manifest record was built from."""
    from exporter.build.variant import variant_label

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
    from exporter.build.runners import ort_runner, torch_runner
    from exporter.build.variant import fixed_at, make_variant
    from exporter.parity.compare import check_parity, recorded_tolerance

    reporter = reporter or SilentReporter()
    opened = Bundle.open(bundle)
    manifest = opened.manifest
    check_bundle_memory(manifest, bundle, "validate")
    source = bundle_source(manifest, weights)
    opts = manifest.options
    batch = check_batch(opts["export"]["batch"])
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
            tol = recorded_tolerance(record.onnx)
            cmp = check_parity(reference, ort_runner(opened.onnx(record)), inputs, batch, tol, manifest.classifier)
            reduced = None
            if record.reduced:
                reduced = check_parity(
                    reference,
                    ort_runner(opened.onnx(record, record.reduced["precision"])),
                    plan.reduced(record.reduced["precision"], inputs),
                    batch,
                    recorded_tolerance(record.reduced),
                    manifest.classifier,
                )
        results.append(Recheck(record.label, True, cmp, reduced=reduced))
        for which, size in zip(("min", "max"), vspec.img_range or ()):
            with stage(reporter, record.label, f"parity at {format_size(size)}", times):
                planned = stored_reference(opened.root, manifest, record, which)[0]
                runner = torch_runner(fixed_at(source, vspec, size))
                onnx_runner = ort_runner(opened.onnx(record))
                tol = recorded_tolerance(record.onnx)
                cmp = check_parity(runner, onnx_runner, planned.arrays(), batch, tol, manifest.classifier)
            results.append(Recheck(f"{record.label} at {format_size(size)}", True, cmp))
    opened.check_unchanged()  # a build swapped a new bundle in meanwhile: no verdict on a mix of two
    return results
