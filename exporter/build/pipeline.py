"""The build pipeline: the only module that knows the order of the stages.

    load ─▶ plan sizes ─▶ for each patch size: resize ─▶ export ─▶ parity ─▶ record
         ─▶ TensorRT preflight of every ONNX file ─▶ manifest + report ─▶ atomic swap into --out

Everything is written into a temporary folder beside ``--out`` and renamed into place at the
end, so an interrupted or failed build never leaves a half-written or clobbered bundle.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import replace
from pathlib import Path

from exporter.build.agreement import native_agreement, native_outputs, native_spec
from exporter.build.inputs import InputPlan
from exporter.build.options import STAGES, BuildOptions, BuildResult
from exporter.build.plan import (
    check_build_memory,
    check_engine_request,
    check_sizes_before_loading,
    default_out,
    plan_variants,
    protected_inputs,
    with_profile_precision,
)
from exporter.build.record import _manifest, announce_assumptions, class_names, label_assumptions
from exporter.build.source_parity import check_source
from exporter.build.stages import (
    _reuse,
    build_variant,
    carry_measurements,
    input_key,
    share_bundle_weights,
    state_digest,
)
from exporter.build.variant import VariantSpec
from exporter.bundle.door import Bundle
from exporter.bundle.engines import EngineSet
from exporter.bundle.manifest import MANIFEST, REPORT, check_batch
from exporter.bundle.records import SourceParity, VariantRecord
from exporter.bundle.report import render_report
from exporter.bundle.schema import Manifest
from exporter.bundle.write import check_replaceable_bundle, staging_folder, swap_into_place
from exporter.core.errors import BundleError
from exporter.core.files import write_atomic
from exporter.core.locks import destination_lock
from exporter.core.progress import Reporter, SilentReporter, stage
from exporter.source.load import load_source, source_name
from exporter.source.model import SourceModel
from exporter.tensorrt.preflight import preflight_records
from exporter.tensorrt.profile import Profile
from exporter.tensorrt.stage import build_engines, pending_engines, write_engine_script
from exporter.tensorrt.versions import engine_problem, profile_library

log = logging.getLogger(__name__)


def build(options: BuildOptions, reporter: Reporter | None = None) -> BuildResult:
    """Build a bundle. Raises ``FlexiExportError`` subclasses for bad input; a variant that
    fails parity is recorded as ``failed`` (the caller decides the exit code)."""

    reporter = reporter or SilentReporter()
    start = time.perf_counter()
    check_sizes_before_loading(options)
    name = source_name(options.source)
    out = Path(os.path.normpath(options.out or default_out(name)))
    with destination_lock(out):  # one build per --out, from this check to the end of the swap
        return _build_locked(options, reporter, out, name, start)


def _build_locked(options: BuildOptions, reporter: Reporter, out: Path, name: str, start: float) -> BuildResult:
    """``build`` with ``out``'s lock held."""

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
        shared = None
        if options.shared_weights:
            with stage(reporter, "bundle", "shared weights", times):
                records, shared = share_bundle_weights(specs, options, plan, tmp, records)
        records = preflight_records(tmp, records, profile, reporter, times)
        with stage(reporter, "source", "source parity", times):
            source_parity = check_source_parity(source, records, specs, options, plan, tmp)
        manifest = _manifest(source, source_sha, calib_sha, options, records).but(
            shared_weights=shared, labels=labels, source_parity=source_parity
        )
        if profile is not None:
            engines = {profile.name: engine_stage(tmp, out, manifest, profile, options, reporter, times)}
            manifest = manifest.but(engines=engines)
        if old is not None:  # measurements of unchanged variants stay; others are named as dropped
            kept, dropped = carry_measurements(old, manifest, tmp)
            if dropped:
                log.warning("--resume: %s", dropped)
            elif kept:
                log.info("--resume: kept %s (every variant measured is unchanged)", ", ".join(kept))
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
) -> SourceParity:
    """The native variant against the source framework's own model (``exporter.build.source_parity``)."""

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

    spec = native_spec(source, specs[0])
    native = native_outputs(source, spec, plan, records, tmp, check_batch(options.export.batch))
    return [r.but(native_agreement=native_agreement(r, spec, native, tmp, source)) for r in records]


def engine_stage(
    tmp: Path,
    out: Path,
    manifest: Manifest,
    profile: Profile,
    options: BuildOptions,
    reporter: Reporter,
    times: dict[str, float],
) -> EngineSet:
    """Always write the trtexec script; build engines when TensorRT and a GPU are here and they
    are what the profile is for (else the engines wait for the target, and the reason says why)."""

    if profile_library(profile).trtexec:
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
