"""The TensorRT engine stage: plan, trtexec script, build and validation, on the build machine
or later on the target device (``flexiexport engine``).

Needs TensorRT (imported lazily, in ``exporter.tensorrt.library``), cuda-python (``exporter.tensorrt.gpu``) and numpy:
engines are judged against the PyTorch logits the bundle carries (``exporter.bundle.reference``), and
the LayerNorm names the trtexec script pins to FP32 are read from the ONNX's protobuf directly,
so no torch, timm, onnx or checkpoint is needed on the device.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Final

from exporter.bundle.door import Bundle
from exporter.bundle.engines import (
    BuiltEngines,
    EngineProfile,
    EngineSet,
    EngineVariant,
    NotRunEngine,
    NotRunEngines,
    PendingEngines,
)
from exporter.bundle.manifest import MANIFEST, REPORT
from exporter.bundle.onnxwire import onnx_node_names
from exporter.bundle.reference import judged_rows, stored_reference
from exporter.bundle.report import render_report
from exporter.bundle.schema import Manifest
from exporter.bundle.write import swap_into_place
from exporter.core.errors import BundleError, EnvironmentMissing, param
from exporter.core.files import sha256_file, write_atomic
from exporter.core.locks import destination_lock
from exporter.core.names import check_name, printable
from exporter.core.precision import Precision
from exporter.core.progress import Reporter, SilentReporter, stage
from exporter.parity.compare import check_parity
from exporter.parity.tolerance import tolerance_for
from exporter.tensorrt.builder import build_engine
from exporter.tensorrt.gpu import gpu_identity, gpu_problem
from exporter.tensorrt.profile import Profile, load_profile
from exporter.tensorrt.runner import engine_runner
from exporter.tensorrt.script import build_script
from exporter.tensorrt.versions import (
    EngineTask,
    check_precision,
    engine_shapes,
    import_tensorrt,
    profile_library,
    profile_mismatch,
    tensorrt_problem,
    timing_cache_name,
)

log = logging.getLogger(__name__)


def layernorm_node_names(onnx_path: Path) -> tuple[str, ...]:
    """Names of the LayerNormalization nodes (TensorRT names its layers after them)."""
    return onnx_node_names(onnx_path, "LayerNormalization")


def engine_plan(bundle: Path, manifest: Manifest, profile: Profile) -> list[EngineTask]:
    """Per variant: the ONNX the engine is built from (the profile's precision when the bundle
    has it), the ONNX precisions the bundle has, the engine path, the optimisation-profile shapes
    and the LayerNorm names of that ONNX."""

    plan = []
    for record in manifest.variants:
        check_name(record.label, "the manifest's variant label")  # it names the engine file
        matching = record.reduced if record.reduced and record.reduced.precision == profile.precision else None
        onnx = matching.path if matching else record.onnx.path
        task = EngineTask(
            label=record.label,
            onnx=onnx,
            onnx_precision=profile.precision if matching else Precision.FP32.value,
            available=(Precision.FP32.value, *([record.reduced.precision] if record.reduced else [])),
            engine=f"engines/{profile.name}/model_{record.label}.engine",
            shapes=engine_shapes(profile, record.img_size, record.static_batch, record.img_range),
            layernorms=layernorm_node_names(bundle / onnx),
        )
        plan.append(task)
    return plan


def write_engine_script(bundle: Path, manifest: Manifest, profile: Profile, onnx_root: Path | None = None) -> Path:
    """``engines/build_<profile>.sh`` under ``bundle``, executable, for devices that have only
    trtexec; the ONNX files are read from ``onnx_root`` (default: ``bundle``)."""

    path = bundle / "engines" / f"build_{profile.name}.sh"
    write_atomic(path, build_script(profile, engine_plan(onnx_root or bundle, manifest, profile)))
    path.chmod(0o755)
    return path


def profile_record(profile: Profile) -> EngineProfile:
    """The manifest's record of ``profile``: every field but the file it was read from."""
    return EngineProfile.model_validate(asdict(profile) | {"path": None})


def pending_engines(bundle: str, profile: Profile, reason: str) -> EngineSet:

    script = {"script": f"engines/build_{profile.name}.sh"} if profile_library(profile).trtexec else {}
    return PendingEngines.model_validate(
        {
            "status": "pending (build on target)",
            "reason": reason,
            "profile": profile_record(profile),
            "command": shlex.join(["flexiexport", "engine", bundle, "--profile", profile.name]),
            **script,
        }
    )


NOT_RUN: Final = "built (not run)"  # TensorRT-RTX engines built on a CPU: judged only where a GPU runs them


def build_engines(
    bundle: Path,
    manifest: Manifest,
    profile: Profile,
    reporter: Reporter,
    times: dict[str, float],
    out_root: Path | None = None,
    cache_in: Path | None = None,
) -> EngineSet:
    """Build one engine per variant, then judge it against the PyTorch logits the bundle carries
    (needs TensorRT and a GPU; no torch, no checkpoint). A TensorRT version or GPU the profile is
    not for is ``EnvironmentMissing`` (exit 4) naming both, before anything is built.

    ONNX files are read from ``bundle``; engines, sidecars and the timing cache are written
    under ``out_root`` (default: ``bundle``). ``cache_in`` is a saved timing cache to start from."""

    out_root = out_root or bundle
    library = profile_library(profile)
    trt = import_tensorrt(library)
    no_gpu = gpu_problem() if not library.needs_gpu_to_build else None
    gpu = gpu_identity() if no_gpu is None else None
    here = (gpu.compute_capability, gpu.name) if gpu and library.needs_gpu_to_build else (None, "this GPU")
    mismatch = profile_mismatch(profile, trt.__version__, *here)
    if mismatch:
        raise EnvironmentMissing(mismatch)
    cache = None
    if library.timing_cache and gpu is not None:
        cache = f"engines/{profile.name}/{timing_cache_name(gpu.compute_capability, trt.__version__)}"
    tol = tolerance_for(profile.precision, "tensorrt")
    plan = engine_plan(bundle, manifest, profile)
    samples = manifest.options.parity_samples
    for item in plan:  # every refusal before the first build
        check_precision(trt.__version__, profile.precision, item.onnx_precision, item.available, library)
    built: dict[str, EngineVariant] = {}
    not_run: dict[str, NotRunEngine] = {}
    for item in plan:
        record = next(v for v in manifest.variants if v.label == item.label)
        cache_out = out_root / cache if cache else None
        with stage(reporter, item.label, "engine", times):
            info = build_engine(bundle / item.onnx, out_root / item.engine, profile, item.shapes, cache_in, cache_out)
        cache_in = cache_out  # the next variant starts from what this one measured
        # The sidecar names files beside the engine; the manifest, paths in the bundle.
        made = asdict(info) | {"engine": item.engine, "onnx": item.onnx}
        if no_gpu is not None:  # TensorRT-RTX on a machine without a GPU: built, never run here
            not_run[item.label] = NotRunEngine.model_validate(made | {"status": "not run"})
            continue
        with stage(reporter, item.label, "engine parity", times):
            planned, expected = stored_reference(bundle, manifest, record)
            inputs = judged_rows(samples, profile.precision, planned.arrays())
            expected = judged_rows(samples, profile.precision, expected)
            runner = engine_runner(out_root / item.engine, library)
            cmp = check_parity(expected, runner, inputs, item.shapes.opt[0], tol, manifest.classifier)
        judged = {"tolerance": asdict(tol), "parity": cmp.to_dict(), "status": "passed" if cmp else "failed"}
        built[item.label] = EngineVariant.model_validate(made | judged)
    if no_gpu is not None:
        return NotRunEngines(
            status=NOT_RUN,
            reason=no_gpu,
            profile=profile_record(profile),
            library=library.name,
            tensorrt=trt.__version__,
            compute_capability=profile.compute_capability or "portable",
            variants=not_run,
        )
    ok = all(v.status == "passed" for v in built.values())
    cache_file = out_root / cache if cache else None
    cached = cache_file is not None and cache_file.is_file()
    return BuiltEngines.model_validate(
        {
            "status": "built" if ok else "failed",
            "profile": profile_record(profile),
            "library": library.name,
            "gpu": gpu.name if gpu else "unknown",
            "compute_capability": gpu.compute_capability if gpu else "unknown",
            "tensorrt": trt.__version__,
            "variants": built,
            **({"script": f"engines/build_{profile.name}.sh"} if library.trtexec else {}),
            **({"timing_cache": {"path": cache, "sha256": sha256_file(cache_file)}} if cached and cache_file else {}),
        }
    )


def saved_timing_cache(opened: Bundle, profile: Profile) -> Path | None:
    """The timing cache a previous ``flexiexport engine`` recorded for ``profile``, checked like
    every bundle file (inside the bundle, sha256 as recorded); None when there is none or it has
    changed (a cache only saves build time: a warning, never a failure)."""
    entry = opened.manifest.engines.get(profile.name)
    record = entry.timing_cache if entry is not None else None
    if record is None:
        return None
    try:
        return opened.file(record.path, record.sha256)
    except BundleError as exc:
        log.warning("not reusing the timing cache: %s", exc)
        return None


def add_engines(bundle: Path, profile_name: str, reporter: Reporter | None = None) -> EngineSet:
    """``flexiexport engine``: on the target, build and validate engines and add them to the
    bundle. Engines are built in a staging folder inside the bundle and renamed into place;
    the manifest is rewritten atomically."""

    with destination_lock(
        bundle, "bundle", required=False
    ):  # not while a build replaces it, nor beside another engine run
        return _add_engines(bundle, profile_name, reporter or SilentReporter())


def _add_engines(bundle: Path, profile_name: str, reporter: Reporter) -> EngineSet:

    opened = Bundle.open(bundle)
    manifest = opened.manifest
    profile = load_profile(profile_name)
    for rel in ("engines", f"engines/{profile.name}", f"engines/build_{profile.name}.sh"):
        if (bundle / rel).is_symlink():
            raise BundleError(f"{printable(str(bundle / rel))} is a symbolic link: refusing to write through it")
    opened.verify_all()
    library = profile_library(profile)
    problem = tensorrt_problem(library, to_build=True)
    if problem and not library.trtexec:
        raise EnvironmentMissing(problem)
    if problem:
        path = bundle / "engines" / f"build_{profile.name}.sh"
        if path.is_file():
            raise EnvironmentMissing(f"{problem}; with trtexec only, run {shlex.quote(str(path))}")
        raise EnvironmentMissing(
            f"{problem}; with trtexec only, rebuild the bundle with {param('profile')} {profile.name} "
            "(it writes engines/build_<profile>.sh for the device; this bundle was built without that profile)"
        )
    times: dict[str, float] = {}
    cache_in = saved_timing_cache(opened, profile)
    staging = Path(tempfile.mkdtemp(prefix=f".engines-{profile.name}-", dir=bundle))
    try:
        entry = build_engines(bundle, manifest, profile, reporter, times, out_root=staging, cache_in=cache_in)
        if library.trtexec:
            write_engine_script(staging, manifest, profile, onnx_root=bundle)
        (bundle / "engines").mkdir(exist_ok=True)
        swap_into_place(staging / "engines" / profile.name, bundle / "engines" / profile.name)
        if library.trtexec:
            script = f"engines/build_{profile.name}.sh"
            os.replace(staging / script, bundle / script)
        manifest = manifest.but(engines={**manifest.engines, profile.name: entry})
        write_atomic(bundle / MANIFEST, manifest.to_json())
        write_atomic(bundle / REPORT, render_report(manifest))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return entry
