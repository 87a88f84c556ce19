"""What a build writes down: the manifest of a bundle, the source's record, library versions,
class names and every assumption (warned, or refused with ``--strict``)."""

from __future__ import annotations

import logging
import platform
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from exporter import __version__
from exporter.build.options import BuildOptions
from exporter.build.plan import img_size_policy
from exporter.build.variant import plan_dynamic, plan_grid
from exporter.bundle.manifest import INPUT_NAME, SCHEMA_VERSION
from exporter.bundle.records import (
    Architecture,
    ExportRecord,
    OptionsRecord,
    PreprocessingRecord,
    SourceRecord,
    VariantRecord,
)
from exporter.bundle.schema import Manifest
from exporter.core.assumptions import Assumption, summary
from exporter.core.errors import UsageError, param
from exporter.core.names import printable
from exporter.core.sizes import format_size
from exporter.source.demo import DEMO_NAME
from exporter.source.model import SourceModel

log = logging.getLogger(__name__)


def library_versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import timm
    import torch

    return {
        "flexiexport": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "numpy": np.__version__,
    }


def source_record(source: SourceModel, sha256: str | None) -> SourceRecord:
    """The manifest's ``source``: the file, its architecture and what was assumed of it."""
    arch = {
        "model_name": source.model_name,
        "family": source.family,
        "kernel_size": source.patch_size,
        "pos_grid": source.pos_grid,
        "img_size": source.img_size,
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
    return SourceRecord(
        name=source.name,
        kind=o.kind,
        path=str(o.path) if o.path else None,
        sha256=sha256,
        format=o.file_format,
        container=o.container,
        dtype=str(source.dtype).replace("torch.", ""),
        architecture=Architecture.model_validate(arch),
    )


def class_names(source: SourceModel, labels: Path | None) -> tuple[str, ...]:
    """Class names by output index: ``--labels FILE`` (one per line), the demo's digits, timm's
    ImageNet-1k names for a 1000-class timm model; else none (the runtime shows indices)."""
    if labels is not None:
        try:
            names = tuple(line.strip() for line in labels.read_text(encoding="utf-8").splitlines() if line.strip())
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"cannot read {param('labels')} {printable(str(labels))!r}: {exc}") from exc
        if len(names) != source.num_classes or any(len(n) > 512 for n in names):
            raise UsageError(
                f"{param('labels')} {printable(str(labels))!r} has {len(names)} names (of at most 512 characters); "
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

    if strict and source.assumptions:
        raise UsageError(f"{param('strict')}: {summary(source.assumptions)}")
    for assumption in source.assumptions:
        log.warning("assumed %s", assumption)


def _manifest(
    source: SourceModel, source_sha: str, calib_sha: str | None, options: BuildOptions, records: list[VariantRecord]
) -> Manifest:

    impossible: tuple[str, ...] | list[str] = ()
    if options.img_sizes:
        impossible = plan_grid(options.patch_sizes, options.img_sizes).impossible
    elif options.img_range is not None:
        impossible = plan_dynamic(options.patch_sizes, options.img_range, source.img_size)[1]
    pre = asdict(source.preprocessing)
    pre["input"] = {
        "name": INPUT_NAME,
        "layout": "NCHW",
        "dtype": "float32",
        "channels": "RGB",
        "range_before_normalisation": [0.0, 1.0],
    }
    what = records[0].parity.inputs if records else ""
    opts = {
        "img_size_policy": img_size_policy(options),
        **({"impossible_variants": list(impossible)} if impossible else {}),
        "export": ExportRecord(**asdict(options.export)),
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
        source=source_record(source, source_sha),
        preprocessing=PreprocessingRecord.model_validate(pre),
        options=OptionsRecord.model_validate(opts),
        variants=tuple(records),
        engines={},  # every key written, the absent ones as {} (as every bundle has them)
        shared_weights=None,
        labels=(),
        source_parity=None,
    )
