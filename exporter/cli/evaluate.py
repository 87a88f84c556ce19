"""``flexiexport evaluate``: top-1 / top-5 per variant on labelled images."""

from __future__ import annotations

from pathlib import Path

import click

from exporter.cli.group import cli, debug_option
from exporter.cli.render import (
    console,
    print_frontier,
    print_whole,
    safe,
    write_plot,
)
from exporter.core.errors import (
    ImageErrors,
    UsageError,
    ValidationFailed,
)
from exporter.core.files import write_atomic


@cli.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option(
    "--data",
    type=click.Path(path_type=Path),
    help="ImageFolder tree (one sub-folder per class), or 'demo-digits' [default: demo-digits for the demo].",
)
@click.option(
    "--compare-resize", is_flag=True, help="Also evaluate the kernel plainly interpolated instead of PI-resized."
)
@click.option("--limit", type=int, help="Evaluate at most this many images.")
@click.option("--weights", type=click.Path(path_type=Path), help="Source checkpoint, if it moved since the build.")
@click.option(
    "--backends",
    default="",
    help="Also run the fp32 ONNX on these runtime backends, comma-separated (e.g. openvino,openvino-bf16).",
)
@click.option("--quiet", "-q", is_flag=True, help="Print only the table.")
@debug_option
def evaluate(
    bundle: Path,
    data: Path | None,
    compare_resize: bool,
    limit: int | None,
    weights: Path | None,
    backends: str,
    quiet: bool,
    debug: bool,
) -> None:
    """Top-1 / top-5 per variant in PyTorch and onnxruntime; writes eval.json and updates the plot."""
    import json

    from rich.table import Table

    from exporter.bundle.door import Bundle
    from exporter.measure.evaluate import evaluate_bundle

    if limit is not None and limit < 1:
        raise UsageError(f"--limit must be at least 1, got {limit}")
    opened = Bundle.open(bundle)
    targets = opened.artefact("eval.json"), opened.artefact("tradeoff.png")  # refused before any work
    err = console(stderr=True)
    names = tuple(dict.fromkeys(b.strip() for b in backends.split(",") if b.strip()))
    result = evaluate_bundle(
        opened, data, compare_resize, limit, weights, None if quiet else lambda t: err.print(safe(f"  {t}")), names
    )
    write_atomic(targets[0], json.dumps(result, indent=2) + "\n")
    plot = write_plot(opened)
    table = Table(title=safe(f"{result['data']}, {result['samples']} images"), title_justify="left")
    for header in ("", "variant", "image", "backend", "top-1", "top-5", "Δ top-1"):
        table.add_column(header, justify="right" if header.startswith(("top", "Δ")) else "left")
    for row in result["results"]:
        delta = "" if row["delta_top1"] is None else f"{row['delta_top1'] * 100:+.1f} pt"
        mark = "" if row["max_drop"] is None else ("✓" if row["passed"] else "✗")
        table.add_row(
            mark,
            safe(row["variant"]),
            str(row["img_size"][0]),
            safe(row["backend"]),
            f"{row['top1']:.3f}",
            f"{row['top5']:.3f}",
            delta,
        )
    print_whole(table)
    print_frontier(opened)
    console().print(safe(f"wrote {bundle / 'eval.json'} and {plot}"))
    if result["skipped"]:  # bad input: each unreadable image is one error line, after the others' results
        skipped = len(result["skipped"])
        err.print(safe(f"left out {skipped} unreadable images; the {result['samples']} others were evaluated"))
        raise ImageErrors(result["skipped"])
    if result["failures"]:
        raise ValidationFailed(f"{len(result['failures'])} accuracy check(s) failed: {'; '.join(result['failures'])}")
