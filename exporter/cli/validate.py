"""``flexiexport validate``: re-check a bundle's files on this machine (``--rebuild``: against PyTorch)."""

from __future__ import annotations

from pathlib import Path

import click

from exporter.cli.group import cli, debug_option
from exporter.cli.render import RichReporter, console, print_preflight
from exporter.cli.tables import print_validation
from exporter.core.errors import (
    EnvironmentMissing,
    UsageError,
    ValidationFailed,
)


@cli.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option(
    "--rebuild",
    is_flag=True,
    help="Rebuild each variant in PyTorch from the source checkpoint and re-run parity "
    "[default: judge against the PyTorch reference stored in the bundle; needs no torch].",
)
@click.option("--weights", type=click.Path(path_type=Path), help="With --rebuild: the source checkpoint, if it moved.")
@click.option(
    "--backends",
    default="ort-cpu",
    show_default=True,
    help="Where to run the ONNX files: ort-cpu, ort-cuda, ort-tensorrt, openvino (f32), openvino-bf16 "
    "(judged with the fp16 tolerances), comma-separated.",
)
@click.option("--quiet", "-q", is_flag=True, help="Print only the verdicts.")
@click.option("--wide", is_flag=True, help="Every column of the table (p99 and mean |Δ|, top-5).")
@debug_option
def validate(
    bundle: Path, rebuild: bool, weights: Path | None, backends: str, quiet: bool, wide: bool, debug: bool
) -> None:
    """Re-check every file's sha256, then each ONNX in onnxruntime against PyTorch's outputs."""
    if weights is not None and not rebuild:
        raise UsageError("--weights is used only with --rebuild (the stored reference needs no checkpoint)")
    if rebuild and backends != "ort-cpu":
        raise UsageError("--rebuild runs onnxruntime on the CPU; --backends works with the stored reference")
    with RichReporter(quiet) as reporter:
        if rebuild:
            try:
                from exporter.build.recheck import recheck_bundle
            except ImportError as exc:
                raise EnvironmentMissing(
                    f"validate --rebuild needs PyTorch and timm ({exc}); without them, validate judges the "
                    "bundle against its stored reference"
                ) from exc

            results = recheck_bundle(bundle, weights, reporter)
        else:
            from exporter.measure.validate import check_bundle

            names = tuple(dict.fromkeys(b.strip() for b in backends.split(",") if b.strip()))
            if "tensorrt" in names:
                raise UsageError("validate runs ONNX files; TensorRT engines are validated by 'flexiexport engine'")
            results = check_bundle(bundle, reporter=reporter, backends=names)
    from exporter.bundle.door import read_manifest

    manifest = read_manifest(bundle)
    print_validation(results, wide, manifest.classifier)
    out = console()
    print_preflight(manifest, out=out)
    bad = [r.label for r in results if not r]
    refused = [v.label for v in manifest.variants if v.preflight_failed]
    what = "variants" if all(" at " not in r.label for r in results) else "checks (a dynamic variant at 3 sizes)"
    if bad:
        raise ValidationFailed(f"{len(bad)} of {len(results)} {what} failed validation: {', '.join(bad)}")
    if refused:
        raise ValidationFailed(f"TensorRT's parser or builder refused the ONNX of {', '.join(refused)} (see above)")
    out.print(f"all {len(results)} {what} passed")
