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
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from exporter.demo import DEMO_NAME, DEMO_WEIGHTS
from exporter.errors import BundleError, EnvironmentMissing, UsageError
from exporter.export import ExportOptions
from exporter.limits import Workload, cap_threads, check_bundle_memory, check_memory
from exporter.load import SourceModel, SourceSpec
from exporter.manifest import (
    MANIFEST,
    REPORT,
    SCHEMA_VERSION,
    Manifest,
    VariantRecord,
    current_umask,
    read_manifest,
    render_report,
    write_atomic,
)
from exporter.profile import Profile
from exporter.resize import ResizeMethod
from exporter.sizes import Size2, format_size
from exporter.validate import TOLERANCES, Comparison, Tolerance
from exporter.variant import ImagePolicy, VariantSpec

log = logging.getLogger(__name__)
CALIBRATION_IMAGES = 64  # int8: calibration images read after the ones the check uses
NO_CALIBRATION = "--precision int8 needs calibration images: pass --calib-dir DIR"
STAGES = ("resize", "export", "parity")
MAX_SEED = 2**32 - 1  # numpy takes any non-negative seed; this range is portable (torch, legacy numpy)


class Reporter(Protocol):
    """Receives progress from the pipeline; the CLI draws it, tests may record it."""

    def begin(self, total_steps: int) -> None: ...
    def start(self, label: str, stage: str) -> None: ...
    def done(self, label: str, stage: str, seconds: float) -> None: ...
    def variant(self, record: VariantRecord) -> None: ...


class SilentReporter:
    def begin(self, total_steps: int) -> None: ...
    def start(self, label: str, stage: str) -> None: ...
    def done(self, label: str, stage: str, seconds: float) -> None: ...
    def variant(self, record: VariantRecord) -> None: ...


@dataclass(frozen=True)
class BuildOptions:
    """Everything ``flexiexport build`` was asked to do."""

    patch_sizes: tuple[Size2, ...]
    source: SourceSpec = field(default_factory=SourceSpec)
    img_size: ImagePolicy = "native"
    out: Path | None = None
    export: ExportOptions = field(default_factory=ExportOptions)
    force: bool = False
    resume: bool = False
    calib_dir: Path | None = None
    parity_samples: int = 16
    seed: int = 0
    patch_resize: ResizeMethod | None = None
    pos_resize: ResizeMethod | None = None
    tolerance: Tolerance = TOLERANCES["fp32"]
    threads: int | None = None
    profile: str | None = None
    engines: str = "auto"
    precision: str = "fp32"
    shared_weights: bool = False
    precision_given: bool = False  # --precision on the command line wins over the profile's

    def __post_init__(self) -> None:
        from exporter.precision import PRECISIONS

        if self.precision not in PRECISIONS:
            raise UsageError(f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.engines not in ENGINE_MODES:
            raise UsageError(f"--engines must be one of {', '.join(ENGINE_MODES)}, got {self.engines!r}")
        if self.engines == "required" and not self.profile:
            raise UsageError("--engines required needs --profile NAME (see 'flexiexport profiles')")
        if not self.patch_sizes:
            raise UsageError("give at least one patch size, e.g. --patch-sizes 8 16 32")
        unique = tuple(dict.fromkeys(self.patch_sizes))
        object.__setattr__(self, "patch_sizes", unique)
        if self.parity_samples < 1:
            raise UsageError(f"--parity-samples must be at least 1, got {self.parity_samples}")
        if not 0 <= self.seed <= MAX_SEED:
            raise UsageError(f"--seed must be between 0 and {MAX_SEED}, got {self.seed}")
        object.__setattr__(self, "threads", cap_threads(self.threads))


@dataclass(frozen=True)
class BuildResult:
    bundle: Path
    manifest: Manifest
    seconds: float
    stage_seconds: dict[str, float]


@contextmanager
def _stage(reporter: Reporter, label: str, stage: str, times: dict[str, float]) -> Iterator[None]:
    reporter.start(label, stage)
    log.info("%s: %s ...", label, stage)
    start = time.perf_counter()
    yield
    seconds = time.perf_counter() - start
    times[stage] = times.get(stage, 0.0) + seconds
    log.info("%s: %s done in %.2f s", label, stage, seconds)
    reporter.done(label, stage, seconds)


def default_out(source_name: str) -> Path:
    return Path("bundles") / source_name


def check_output(out: Path, force: bool, resume: bool) -> None:
    """Refuse an ``--out`` that is a file, a foreign folder, or an existing bundle without --force/--resume."""
    if out.exists() and not out.is_dir():
        raise BundleError(f"--out {str(out)!r} is a file; give a folder path for the bundle")
    if out.is_dir() and any(out.iterdir()):
        if not (out / MANIFEST).is_file():
            raise BundleError(
                f"--out {str(out)!r} is a non-empty folder that is not a flexiexport bundle; "
                "refusing to replace it, choose another --out"
            )
        if not (force or resume):
            raise BundleError(
                f"a bundle already exists at {str(out)!r}; pass --force to replace it "
                "or --resume to reuse its unchanged variants"
            )
    parent = out.absolute().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BundleError(f"cannot create the folder {str(parent)!r} for --out: {exc.strerror}") from exc
    if not os.access(parent, os.W_OK | os.X_OK):
        raise BundleError(f"cannot write to {str(parent)!r}: permission denied (choose another --out)")


@contextmanager
def staging_folder(out: Path) -> Iterator[Path]:
    """A temporary folder beside ``out``; removed on any failure or interrupt."""
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.absolute().parent))
        tmp.chmod(0o777 & ~current_umask())  # mkdtemp makes it private; a bundle is an ordinary folder
    except OSError as exc:
        raise BundleError(f"cannot write to {str(out.absolute().parent)!r}: {exc.strerror}") from exc
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def swap_into_place(tmp: Path, out: Path) -> None:
    """Rename ``tmp`` to ``out``; an existing ``out`` is moved aside first and removed after."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}-{int(time.time())}")
        os.replace(out, old)
    try:
        os.replace(tmp, out)
    except BaseException:
        if old is not None:
            os.replace(old, out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


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
        "summary": (
            f"{source.model_name or 'ViT (inferred)'}: {source.depth} blocks, width {source.embed_dim}, "
            f"{source.num_heads} heads, kernel {format_size(source.patch_size)}, "
            f"pos grid {format_size(source.pos_grid)}, native {format_size(source.img_size)}, "
            f"{source.num_classes} classes"
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


def calib_key(options: BuildOptions) -> str | None:
    """The ``--calib-dir`` images a build reads, by content: parity's, and int8's calibration set.
    Their headers are checked first, so a broken file or a decompression bomb stops the build
    before any export."""
    if options.calib_dir is None:
        return None
    from exporter.images import check_headers, folder_digest

    used = options.parity_samples + (CALIBRATION_IMAGES if options.precision == "int8" else 0)
    check_headers(options.calib_dir, used)
    return folder_digest(options.calib_dir, used)


def input_key(source_sha: str, calib_sha: str | None, spec: VariantSpec, options: BuildOptions) -> str:
    """A digest of everything that determines a variant's ONNX and its parity verdict
    (``calib_sha``: ``calib_key``, computed once per build)."""
    from exporter import __version__

    payload = {
        "source": source_sha,
        "patch": spec.patch_size,
        "img": spec.img_size,
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
    """One spec per patch size; every size problem is reported before any work starts."""
    from exporter.resize import default_patch_resize, default_pos_resize
    from exporter.sizes import check_patch_fits
    from exporter.variant import plan_img_size

    patch_resize = options.patch_resize or default_patch_resize(source.family)
    pos_resize = options.pos_resize or default_pos_resize(source.family)
    specs = []
    for patch in options.patch_sizes:
        reference = options.img_size if isinstance(options.img_size, tuple) else source.img_size
        check_patch_fits(patch, reference)
        specs.append(
            VariantSpec(patch, plan_img_size(source.img_size, patch, options.img_size), patch_resize, pos_resize)
        )
    return specs


def check_build_memory(source: SourceModel, specs: list[VariantSpec], options: BuildOptions) -> None:
    """Refuse (exit 2) a build whose largest variant cannot fit in the memory available,
    before anything is resized, exported or drawn."""
    params = sum(t.numel() for t in source.state_dict.values())
    weight_bytes = sum(t.numel() * t.element_size() for t in source.state_dict.values())
    static = options.export.batch if isinstance(options.export.batch, int) else None
    calibration = CALIBRATION_IMAGES if options.precision == "int8" else 0
    for spec in specs:
        w = Workload(
            params=params,
            weight_bytes=weight_bytes,
            embed_dim=source.embed_dim,
            depth=source.depth,
            num_heads=source.num_heads,
            num_classes=source.num_classes,
            img_size=spec.img_size,
            patch_size=spec.patch_size,
            batch=static or 8,
            images=2 * options.parity_samples + calibration,  # random + as many real ones
            prefix_tokens=int(source.model_args.get("class_token", True)) + int(source.model_args.get("reg_tokens", 0)),
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


def parity_inputs(source: SourceModel, spec: VariantSpec, options: BuildOptions) -> tuple[np.ndarray, str]:
    """Seeded random images plus real ones (``--calib-dir``, or the demo's held-out digits)."""
    from exporter.validate import random_inputs

    pre = source.preprocessing
    parts = [random_inputs(spec.img_size, options.parity_samples, options.seed, pre.mean, pre.std)]
    what = f"{options.parity_samples} seeded random images"
    if options.calib_dir is not None:
        from exporter.images import load_images

        real = load_images(options.calib_dir, spec.img_size, pre, limit=options.parity_samples)
        parts.append(real)
        what += f" + {len(real)} images from {options.calib_dir}"
    elif source.origin.path is not None and source.name == DEMO_NAME and spec.img_size[0] == spec.img_size[1]:
        from exporter.demo import digits_to_pixels, load_demo_digits

        digits, _ = load_demo_digits("test")
        parts.append(digits_to_pixels(digits[: options.parity_samples], spec.img_size[0]))
        what += f" + {min(len(digits), options.parity_samples)} held-out demo digits"
    return np.concatenate(parts).astype(np.float32), what


def _reuse(old: Manifest | None, old_dir: Path, label: str, key: str, tmp: Path) -> VariantRecord | None:
    """The old record of a variant whose inputs and ONNX are unchanged, with its file copied."""
    from exporter.load import sha256_file

    if old is None:
        return None
    record = next((v for v in old.variants if v.label == label), None)
    if record is None or record.input_key != key or record.status != "passed":
        return None
    files = [(record.onnx["path"], record.onnx["sha256"])]
    if record.reduced:
        files.append((record.reduced["path"], record.reduced["sha256"]))
    if not all((old_dir / rel).is_file() and sha256_file(old_dir / rel) == sha for rel, sha in files):
        return None
    for rel, _ in files:
        (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(old_dir / rel, tmp / rel)
    return replace(record, resumed=True)


def build_variant(
    source: SourceModel,
    spec: VariantSpec,
    options: BuildOptions,
    tmp: Path,
    key: str,
    reporter: Reporter,
    times: dict[str, float],
) -> VariantRecord:
    """Resize, export and check one variant; returns its manifest record."""
    from exporter.export import export_onnx
    from exporter.lint import lint_onnx
    from exporter.validate import check_parity, ort_runner, torch_runner
    from exporter.variant import count_layernorms, make_variant

    label = spec.label
    with _stage(reporter, label, "resize", times):
        variant = make_variant(source, spec)
    rel = Path("onnx") / f"model_{label}.onnx"
    (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
    with _stage(reporter, label, "export", times):
        info = export_onnx(variant.model, spec.img_size, tmp / rel, options.export)
        lint = lint_onnx(tmp / rel, layernorms=count_layernorms(variant.model))
    with _stage(reporter, label, "parity", times):
        start = time.perf_counter()
        inputs, inputs_text = parity_inputs(source, spec, options)
        batch = 8 if options.export.batch == "dynamic" else int(options.export.batch)
        comparison: Comparison = check_parity(
            torch_runner(variant.model), ort_runner(tmp / rel, options.threads), inputs, batch, options.tolerance
        )
        parity_seconds = time.perf_counter() - start
    onnx_record = {
        **asdict(info),
        "path": str(rel),
        "inputs": [asdict(i) for i in info.inputs],
        "outputs": [asdict(o) for o in info.outputs],
        "op_counts": dict(info.op_counts),
    }
    onnx_record.pop("seconds")
    parity = comparison.to_dict() | {"inputs": inputs_text}
    parity.pop("tolerance")
    reduced: dict[str, Any] = {}
    if options.precision != "fp32":
        with _stage(reporter, label, options.precision, times):
            reduced = reduced_variant(source, spec, options, tmp, rel, variant.model, inputs, batch, variant.tokens)
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
        status="passed" if comparison and reduced.get("status", "passed") == "passed" else "failed",
        export_seconds=round(info.seconds, 3),
        parity_seconds=round(parity_seconds, 3),
        input_key=key,
        trt_lint=lint.to_dict(),
        reduced=reduced,
    )


def check_calibration(options: BuildOptions, demo: bool) -> None:
    """Fail before any work when int8 has no calibration images, or none left over after the
    check: with ``--calib-dir`` the first ``--parity-samples`` images (sorted) check the int8
    model and only the rest calibrate it, so it is never judged on its own calibration data."""
    if options.precision != "int8":
        return
    if options.calib_dir is None:
        if demo:
            return
        raise UsageError(NO_CALIBRATION)
    from exporter.images import list_images

    count = len(list_images(options.calib_dir))
    if count <= options.parity_samples:
        raise UsageError(
            f"--calib-dir {str(options.calib_dir)!r} has {count} images; int8 needs more than --parity-samples "
            f"({options.parity_samples}): the first {options.parity_samples} check the int8 model, the rest "
            f"(up to {CALIBRATION_IMAGES}) calibrate it"
        )


def calibration_images(source: SourceModel, spec: VariantSpec, options: BuildOptions) -> tuple[np.ndarray, str]:
    """INT8 calibration images and what they are: the ``--calib-dir`` images after the ones
    the check uses, or the demo's own calibration split (disjoint from its held-out digits)."""
    if options.calib_dir is not None:
        from exporter.images import load_images

        skip = options.parity_samples
        images = load_images(options.calib_dir, spec.img_size, source.preprocessing, CALIBRATION_IMAGES, skip)
        return images, f"{len(images)} images from {options.calib_dir} (after the {skip} used for the check)"
    if source.name == DEMO_NAME and spec.img_size[0] == spec.img_size[1]:
        from exporter.demo import digits_to_pixels, load_demo_digits

        digits, _ = load_demo_digits("calib")
        images = digits_to_pixels(digits[:CALIBRATION_IMAGES], spec.img_size[0])
        return images, f"{len(images)} digits of the demo's calibration split"
    raise UsageError(NO_CALIBRATION)


def reduced_check_inputs(precision: str, inputs: np.ndarray, random_count: int) -> np.ndarray:
    """What a reduced-precision file is judged on, at build and at ``validate``: the parity inputs,
    except that int8 sees only the real images after the ``random_count`` random ones (static
    quantisation is calibrated to a data distribution; random images lie far outside its ranges)."""
    return inputs[random_count:] if precision == "int8" else inputs


def reduced_variant(
    source: SourceModel,
    spec: VariantSpec,
    options: BuildOptions,
    tmp: Path,
    rel: Path,
    model: Any,
    inputs: np.ndarray,
    batch: int,
    tokens: int,
) -> dict[str, Any]:
    """Convert the fp32 ONNX to ``options.precision`` and check it against PyTorch fp32."""
    from exporter.load import sha256_file
    from exporter.precision import int8_float_nodes, to_fp16, to_int8
    from exporter.validate import check_parity, ort_runner, tolerance_for, torch_runner

    start = time.perf_counter()
    out_rel = rel.with_name(f"{rel.stem}.{options.precision}.onnx")
    anchors: list[str] = []
    calibration = ""
    if options.precision == "fp16":
        anchors = to_fp16(tmp / rel, tmp / out_rel)
    else:
        static = None if options.export.batch == "dynamic" else int(options.export.batch)
        images, calibration = calibration_images(source, spec, options)
        anchors = int8_float_nodes(tmp / rel, tokens)
        to_int8(tmp / rel, tmp / out_rel, images, static, exclude=anchors)
    import onnx

    onnx.checker.check_model(str(tmp / out_rel), full_check=True)
    tol = tolerance_for(options.precision, "onnxruntime")
    inputs = reduced_check_inputs(options.precision, inputs, options.parity_samples)
    cmp = check_parity(torch_runner(model), ort_runner(tmp / out_rel, options.threads), inputs, batch, tol)
    parity = cmp.to_dict()
    parity.pop("tolerance")
    return {
        "precision": options.precision,
        "shared_weights": options.shared_weights,
        "path": str(out_rel),
        "sha256": sha256_file(tmp / out_rel),
        "bytes": (tmp / out_rel).stat().st_size,
        "fp32_nodes": anchors,
        **({"calibration": calibration} if calibration else {}),
        "tolerance": asdict(tol),
        "parity": parity,
        "status": "passed" if cmp else "failed",
        "seconds": round(time.perf_counter() - start, 3),
    }


def share_bundle_weights(
    source: SourceModel, specs: list[VariantSpec], options: BuildOptions, tmp: Path, records: list[VariantRecord]
) -> tuple[list[VariantRecord], dict[str, Any]]:
    """Move the weights all variants share into one external file; each file must still give
    exactly the outputs it gave before (same graph, same bytes), or its variant fails."""
    from exporter.export import check_onnx
    from exporter.shared import share_weights
    from exporter.validate import ort_runner, run_batched

    paths = [tmp / r.onnx["path"] for r in records]
    batch = 8 if options.export.batch == "dynamic" else int(options.export.batch)
    inputs = [parity_inputs(source, spec, options)[0] for spec in specs]
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
    from exporter.load import load_source, source_name, weights_path

    reporter = reporter or SilentReporter()
    start = time.perf_counter()
    times: dict[str, float] = {}
    out = options.out or default_out(source_name(options.source))
    check_output(out, options.force, options.resume)
    profile = check_engine_request(options)
    options = with_profile_precision(options, profile)
    check_calibration(options, demo=weights_path(options.source) == DEMO_WEIGHTS)
    if options.threads:
        import torch

        torch.set_num_threads(options.threads)
    with _stage(reporter, "source", "load", times):
        source = load_source(options.source)
    specs = plan_variants(source, options)
    check_build_memory(source, specs, options)
    old = _old_manifest(out) if options.resume else None
    source_sha = source.origin.sha256 or state_digest(source)
    calib_sha = calib_key(options)
    reporter.begin(len(specs) * len(STAGES))
    with staging_folder(out) as tmp:
        records = []
        for spec in specs:
            key = input_key(source_sha, calib_sha, spec, options)
            reusable = old if not options.shared_weights else None  # the shared file is rebuilt whole
            record = _reuse(reusable, out, spec.label, key, tmp) or build_variant(
                source, spec, options, tmp, key, reporter, times
            )
            reporter.variant(record)
            records.append(record)
        shared: dict[str, Any] = {}
        if options.shared_weights:
            with _stage(reporter, "bundle", "shared weights", times):
                records, shared = share_bundle_weights(source, specs, options, tmp, records)
        manifest = replace(_manifest(source, source_sha, options, records), shared_weights=shared)
        if profile is not None:
            manifest = replace(
                manifest,
                engines={profile.name: engine_stage(tmp, out, manifest, source, profile, options, reporter, times)},
            )
        write_atomic(tmp / MANIFEST, manifest.to_json())
        write_atomic(tmp / REPORT, render_report(manifest))
        swap_into_place(tmp, out)
    return BuildResult(out, manifest, time.perf_counter() - start, times)


def with_profile_precision(options: BuildOptions, profile: Profile | None) -> BuildOptions:
    """A profile that asks for fp16 or int8 gets that ONNX too (strongly typed TensorRT needs it),
    unless ``--precision`` was given; an int8 profile's ``calibration`` folder calibrates it."""
    if profile is None or options.precision_given or profile.precision not in ("fp16", "int8"):
        return options
    calib = options.calib_dir
    if profile.precision == "int8" and calib is None and profile.calibration not in (None, "demo"):
        calib = Path(str(profile.calibration))
    return replace(options, precision=profile.precision, calib_dir=calib)


def check_engine_request(options: BuildOptions) -> Profile | None:
    """Load ``--profile`` and, for ``--engines required``, insist on TensorRT and a GPU (exit 4)."""
    if not options.profile:
        return None
    from exporter.profile import load_profile
    from exporter.trt import tensorrt_problem

    profile = load_profile(options.profile)
    if options.engines == "required":
        problem = tensorrt_problem()
        if problem:
            raise EnvironmentMissing(f"--engines required, but {problem}")
    return profile


def engine_stage(
    tmp: Path,
    out: Path,
    manifest: Manifest,
    source: SourceModel,
    profile: Profile,
    options: BuildOptions,
    reporter: Reporter,
    times: dict[str, float],
) -> dict[str, Any]:
    """Always write the trtexec script; build engines when TensorRT and a GPU are here."""
    from exporter.trt import tensorrt_problem

    write_engine_script(tmp, manifest, profile)
    if options.engines == "skip":
        return pending_engines(str(out), profile, "--engines skip")
    problem = tensorrt_problem()
    if problem:
        return pending_engines(str(out), profile, problem)
    return build_engines(tmp, manifest, source, profile, reporter, times)


def _old_manifest(out: Path) -> Manifest | None:
    try:
        return read_manifest(out) if (out / MANIFEST).is_file() else None
    except BundleError as exc:
        log.warning("--resume: ignoring the old manifest (%s)", exc)
        return None


def _manifest(source: SourceModel, source_sha: str, options: BuildOptions, records: list[VariantRecord]) -> Manifest:
    pre = asdict(source.preprocessing)
    pre["input"] = {
        "name": "pixel_values",
        "layout": "NCHW",
        "dtype": "float32",
        "channels": "RGB",
        "range_before_normalisation": [0.0, 1.0],
    }
    what = records[0].parity.get("inputs", "") if records else ""
    opts = {
        "img_size_policy": options.img_size if isinstance(options.img_size, str) else list(options.img_size),
        "export": asdict(options.export),
        "parity_samples": options.parity_samples,
        "seed": options.seed,
        "parity_inputs": what,
        "calib_dir": str(options.calib_dir) if options.calib_dir else None,
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
        tolerance=asdict(options.tolerance),
        variants=tuple(records),
    )


@dataclass(frozen=True)
class Recheck:
    """``validate``'s verdict on one variant: file integrity and fresh parity."""

    label: str
    sha256_ok: bool
    comparison: Comparison | None
    problem: str = ""
    reduced: Comparison | None = None  # the fp16/int8 ONNX, when the bundle has one

    def __bool__(self) -> bool:
        reduced_ok = self.reduced is None or bool(self.reduced)
        return self.sha256_ok and bool(self.comparison) and reduced_ok and not self.problem


def parse_resize_method(text: str) -> ResizeMethod:
    """Inverse of ``str(ResizeMethod)``: ``bilinear+antialias`` → ResizeMethod."""
    name, _, flag = text.partition("+")
    return ResizeMethod(name, antialias=flag == "antialias")


def bundle_source(manifest: Manifest, weights: Path | None = None) -> SourceModel:
    """Reload the checkpoint a bundle was built from, refusing one whose sha256 changed."""
    from exporter.load import SourceSpec, load_source

    src = manifest.source
    path = weights or (Path(src["path"]) if src.get("path") else None)
    if path is not None and not path.is_file():
        raise BundleError(f"the bundle's source checkpoint {str(path)!r} is gone; pass --weights FILE")
    arch = src["architecture"]
    spec = SourceSpec(
        weights=path, model_name=arch.get("model_name"), pretrained=path is None, num_heads=arch.get("num_heads")
    )
    source = load_source(spec)
    if src.get("sha256") and source.origin.sha256 and source.origin.sha256 != src["sha256"]:
        raise BundleError(
            f"{path} has sha256 {source.origin.sha256[:16]}…, but the bundle was built from {src['sha256'][:16]}…"
        )
    return source


def record_spec(record: VariantRecord) -> VariantSpec:
    """The ``VariantSpec`` a manifest record was built from."""
    return VariantSpec(
        record.patch_size,
        record.img_size,
        parse_resize_method(record.patch_resize),
        parse_resize_method(record.pos_resize),
    )


def recheck_bundle(bundle: Path, weights: Path | None = None, reporter: Reporter | None = None) -> list[Recheck]:
    """Re-verify every file's sha256 and re-run parity of every variant against PyTorch."""
    from exporter.load import sha256_file
    from exporter.validate import check_parity, ort_runner, torch_runner
    from exporter.variant import make_variant

    reporter = reporter or SilentReporter()
    manifest = read_manifest(bundle)
    check_bundle_memory(manifest, bundle, "validate")
    source = bundle_source(manifest, weights)
    opts = manifest.options
    tol = Tolerance(**manifest.tolerance)
    export = ExportOptions(**opts["export"])
    calib = Path(opts["calib_dir"]) if opts.get("calib_dir") else None
    options = BuildOptions(
        patch_sizes=tuple(tuple(v.patch_size) for v in manifest.variants),  # type: ignore[misc]
        export=export,
        parity_samples=opts["parity_samples"],
        seed=opts["seed"],
        calib_dir=calib if calib and calib.is_dir() else None,
        tolerance=tol,
    )
    reporter.begin(len(manifest.variants) * 2)
    results = []
    times: dict[str, float] = {}
    for record in manifest.variants:
        files = [(record.onnx["path"], record.onnx["sha256"])]
        if record.reduced:
            files.append((record.reduced["path"], record.reduced["sha256"]))
        if record.onnx.get("external_data"):
            files.append((manifest.shared_weights["path"], manifest.shared_weights["sha256"]))
        with _stage(reporter, record.label, "sha256", times):
            bad = [rel for rel, sha in files if not (bundle / rel).is_file() or sha256_file(bundle / rel) != sha]
        if bad:
            results.append(Recheck(record.label, False, None, f"{', '.join(bad)}: missing or sha256 changed"))
            continue
        vspec = record_spec(record)
        with _stage(reporter, record.label, "parity", times):
            reference = torch_runner(make_variant(source, vspec).model)
            inputs, _ = parity_inputs(source, vspec, options)
            batch = 8 if export.batch == "dynamic" else int(export.batch)
            cmp = check_parity(reference, ort_runner(bundle / record.onnx["path"]), inputs, batch, tol)
            reduced = None
            if record.reduced:
                reduced_tol = Tolerance(**record.reduced["tolerance"])
                reduced_inputs = reduced_check_inputs(record.reduced["precision"], inputs, options.parity_samples)
                reduced = check_parity(
                    reference, ort_runner(bundle / record.reduced["path"]), reduced_inputs, batch, reduced_tol
                )
        results.append(Recheck(record.label, True, cmp, reduced=reduced))
    return results


ENGINE_MODES = ("auto", "required", "skip")


def layernorm_node_names(onnx_path: Path) -> tuple[str, ...]:
    """Names of the LayerNormalization nodes (TensorRT names its layers after them)."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    return tuple(n.name for n in model.graph.node if n.op_type == "LayerNormalization")


def engine_plan(bundle: Path, manifest: Manifest, profile: Profile) -> list[dict[str, Any]]:
    """Per variant: the ONNX, the engine path, the optimisation-profile shapes, LayerNorm names."""
    from exporter.trt import engine_shapes

    plan = []
    for record in manifest.variants:
        static = record.onnx["inputs"][0]["shape"][0]
        matching = record.reduced if record.reduced.get("precision") == profile.precision else None
        plan.append(
            {
                "label": record.label,
                "onnx": matching["path"] if matching else record.onnx["path"],
                "onnx_precision": profile.precision if matching else "fp32",
                "engine": f"engines/{profile.name}/model_{record.label}.engine",
                "shapes": engine_shapes(profile, record.img_size, static if isinstance(static, int) else None),
                "layernorms": layernorm_node_names(bundle / record.onnx["path"]),
            }
        )
    return plan


def write_engine_script(bundle: Path, manifest: Manifest, profile: Profile) -> Path:
    """``engines/build_<profile>.sh``, executable, for devices that have only trtexec."""
    from exporter.trt import build_script

    path = bundle / "engines" / f"build_{profile.name}.sh"
    write_atomic(path, build_script(profile, engine_plan(bundle, manifest, profile)))
    path.chmod(0o755)
    return path


def pending_engines(bundle_name: str, profile: Profile, reason: str) -> dict[str, Any]:
    return {
        "status": "pending (build on target)",
        "reason": reason,
        "profile": asdict(profile) | {"path": None},
        "command": f"flexiexport engine {bundle_name} --profile {profile.name}",
        "script": f"engines/build_{profile.name}.sh",
    }


def build_engines(
    bundle: Path,
    manifest: Manifest,
    source: SourceModel,
    profile: Profile,
    reporter: Reporter,
    times: dict[str, float],
    out_root: Path | None = None,
) -> dict[str, Any]:
    """Build, then validate against PyTorch, one engine per variant (needs TensorRT and a GPU).

    ONNX files are read from ``bundle``; engines, sidecars and the timing cache are written
    under ``out_root`` (default: ``bundle``)."""
    from exporter.trt import (
        build_engine,
        check_precision,
        engine_runner,
        gpu_identity,
        import_tensorrt,
        timing_cache_name,
    )
    from exporter.validate import check_parity, tolerance_for, torch_runner
    from exporter.variant import make_variant

    out_root = out_root or bundle
    trt = import_tensorrt()
    gpu, cc = gpu_identity()
    cache = out_root / "engines" / profile.name / timing_cache_name(cc, trt.__version__)
    tol = tolerance_for(profile.precision, "tensorrt")
    variants: dict[str, Any] = {}
    for item in engine_plan(bundle, manifest, profile):
        check_precision(trt.__version__, profile.precision, item["onnx_precision"])
        record = next(v for v in manifest.variants if v.label == item["label"])
        with _stage(reporter, item["label"], "engine", times):
            info = build_engine(bundle / item["onnx"], out_root / item["engine"], profile, item["shapes"], cache)
        with _stage(reporter, item["label"], "engine parity", times):
            spec = record_spec(record)
            inputs, _ = parity_inputs(source, spec, BuildOptions(patch_sizes=(spec.patch_size,)))
            inputs = inputs[: max(1, min(len(inputs), item["shapes"].max[0] * 4))]
            cmp = check_parity(
                torch_runner(make_variant(source, spec).model),
                engine_runner(out_root / item["engine"]),
                inputs,
                item["shapes"].opt[0],
                tol,
            )
        variants[item["label"]] = {
            **asdict(info),
            "parity": cmp.to_dict() | {"tolerance": asdict(tol)},
            "status": "passed" if cmp else "failed",
        }
    ok = all(v["status"] == "passed" for v in variants.values())
    return {
        "status": "built" if ok else "failed",
        "profile": asdict(profile) | {"path": None},
        "gpu": gpu,
        "compute_capability": cc,
        "tensorrt": trt.__version__,
        "variants": variants,
        "script": f"engines/build_{profile.name}.sh",
    }


def add_engines(
    bundle: Path, profile_name: str, weights: Path | None = None, reporter: Reporter | None = None
) -> dict[str, Any]:
    """``flexiexport engine``: on the target, build and validate engines and add them to the
    bundle. Engines are built in a staging folder inside the bundle and renamed into place;
    the manifest is rewritten atomically."""
    from exporter.profile import load_profile
    from exporter.trt import tensorrt_problem

    reporter = reporter or SilentReporter()
    manifest = read_manifest(bundle)
    profile = load_profile(profile_name)
    problem = tensorrt_problem()
    if problem:
        raise EnvironmentMissing(f"{problem}; with trtexec only, run {bundle}/engines/build_{profile.name}.sh")
    source = bundle_source(manifest, weights)
    times: dict[str, float] = {}
    staging = Path(tempfile.mkdtemp(prefix=f".engines-{profile.name}-", dir=bundle))
    try:
        entry = build_engines(bundle, manifest, source, profile, reporter, times, out_root=staging)
        write_engine_script(staging, manifest, profile)
        (bundle / "engines").mkdir(exist_ok=True)
        swap_into_place(staging / "engines" / profile.name, bundle / "engines" / profile.name)
        os.replace(staging / "engines" / f"build_{profile.name}.sh", bundle / "engines" / f"build_{profile.name}.sh")
        manifest = replace(manifest, engines={**manifest.engines, profile.name: entry})
        write_atomic(bundle / MANIFEST, manifest.to_json())
        write_atomic(bundle / REPORT, render_report(manifest))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return entry
