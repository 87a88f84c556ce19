"""What a build will make, decided before any work: the variants and their sizes, the output
folder, the memory it needs, the profile's precision; every refusal here is exit 2 before loading."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

from exporter.build.inputs import InputPlan
from exporter.build.options import BuildOptions
from exporter.build.variant import VariantSpec, fitted_img_size, plan_dynamic, plan_grid
from exporter.bundle.limits import Workload, check_memory, prefix_tokens
from exporter.bundle.manifest import check_batch
from exporter.core.errors import EnvironmentMissing, UsageError, param
from exporter.core.precision import REDUCED_PRECISIONS, Precision
from exporter.core.sizes import format_range, format_size
from exporter.source.load import stated_img_size, weights_path
from exporter.source.model import SourceModel
from exporter.source.resampling import default_patch_resize
from exporter.tensorrt.profile import Profile, load_profile
from exporter.tensorrt.versions import engine_problem

log = logging.getLogger(__name__)


def default_out(source_name: str) -> Path:
    return Path("bundles") / source_name


def plan_variants(source: SourceModel, options: BuildOptions) -> list[VariantSpec]:
    """One spec per patch size, or per (patch, image size) of a grid; every size problem is
    reported before any work starts (a grid's impossible pairs are logged and left out)."""

    patch_resize = options.patch_resize.resolve(default_patch_resize(source.family))
    pos_resize = options.pos_resize.resolve(source.pos_resize_method())  # the source framework's own by default
    if options.img_range is not None:
        if "distilled" in (source.model_name or ""):  # the in-graph resample knows class and register tokens only
            raise UsageError(
                f"{param('img_range')} dynamic:{format_range(options.img_range)} does not support a distilled DeiT "
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

    if options.img_sizes:
        plan_grid(options.patch_sizes, options.img_sizes)
        return
    if options.img_range is not None:
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
            f"{param('img_size')} {size} with patch {patch}"
            if isinstance(policy, tuple)
            else f"patch {patch} at image size {size}"
        )
        check_memory(w, what)


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

    profile = load_profile(options.profile)
    if options.engines == "required":
        problem = engine_problem(profile)
        if problem:
            raise EnvironmentMissing(f"{param('engines')} required, but {problem}")
    return profile


def protected_inputs(options: BuildOptions) -> list[Path]:
    """What ``--out`` must never hold or replace: the checkpoint (and the config beside it) and
    the calibration images."""

    weights = weights_path(options.source)
    return [p for p in (weights, options.calib_dir) if p is not None]


def img_size_policy(options: BuildOptions) -> str | list[int] | list[list[int]]:
    """What the manifest records: 'native', 'auto', one [h, w], or a grid's [[h, w], ...]."""
    if options.img_sizes:
        return [list(size) for size in options.img_sizes]
    if options.img_range is not None:
        return f"dynamic:{format_range(options.img_range)}"
    return options.img_size if isinstance(options.img_size, str) else list(options.img_size)
