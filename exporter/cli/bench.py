"""``flexiexport bench``: latency and throughput per variant, backend and batch size."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from typing_extensions import TypedDict, Unpack

from exporter.cli.group import cli, debug_option
from exporter.cli.params import (
    BenchCommand,
    parse_batch_sizes,
)
from exporter.cli.render import (
    console,
    print_frontier,
    safe,
    write_plot,
)
from exporter.cli.tables import print_bench
from exporter.core.backends import BENCH_BACKENDS
from exporter.core.files import write_atomic


class BenchFlags(TypedDict):
    """``bench``'s options, as Click passes them."""

    batch_sizes: str
    backends: str
    threads: int | None
    runs: int
    min_seconds: float
    warmup: int
    weights: Path | None
    quiet: bool
    wide: bool
    debug: bool


@cli.command(cls=BenchCommand)
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--batch-sizes", default="1,8", show_default=True, help="Batch sizes, e.g. 1 8 or 1,8.")
@click.option(
    "--backends",
    default=",".join(BENCH_BACKENDS),
    show_default=True,
    help="Backends to try; unavailable ones are listed as skipped with the reason.",
)
@click.option("--threads", type=int, help="CPU threads for every backend [default: all available cores].")
@click.option("--runs", type=int, default=10, show_default=True, help="Timed runs at least (after warm-up).")
@click.option("--min-seconds", type=float, default=1.0, show_default=True, help="Timed seconds at least, per case.")
@click.option("--warmup", type=int, default=3, show_default=True, help="Untimed runs first.")
@click.option("--weights", type=click.Path(path_type=Path), help="Source checkpoint, if it moved since the build.")
@click.option("--quiet", "-q", is_flag=True, help="Print only the table.")
@click.option("--wide", is_flag=True, help="Every column of the table (p90, GFLOP per image and per second).")
@debug_option
def bench(bundle: Path, **kw: Unpack[BenchFlags]) -> None:
    """Latency and throughput per variant, backend and batch size; writes bench.json and a plot."""
    import json

    from exporter.bundle.door import Bundle
    from exporter.measure.bench import bench_bundle, merge_reports
    from exporter.measure.options import BenchOptions
    from exporter.runtime.measurements import folder_locked, read_bench_for_merge

    opened = Bundle.open(bundle)
    targets = opened.artefact("bench.json"), opened.artefact("tradeoff.png")  # refused before any work
    read_bench_for_merge(targets[0])  # one it cannot merge into is refused now, not overwritten later
    batch_sizes = parse_batch_sizes(kw["batch_sizes"])
    options = BenchOptions(
        batch_sizes=batch_sizes,
        backends=tuple(b for b in kw["backends"].replace(" ", ",").split(",") if b.strip()),
        threads=kw["threads"],
        warmup=kw["warmup"],
        min_runs=kw["runs"],
        min_seconds=kw["min_seconds"],
    )
    err = console(stderr=True)
    report = bench_bundle(opened, options, None if kw["quiet"] else lambda t: err.print(safe(f"  {t}")), kw["weights"])
    with folder_locked(opened.root):  # a concurrent bench's rows are merged, not overwritten
        merged, note = merge_reports(read_bench_for_merge(targets[0]), report)
        write_atomic(targets[0], json.dumps(merged, indent=2) + "\n")
    plot = write_plot(opened)
    print_bench(report, kw["wide"])
    say_fastest(opened, report)
    print_frontier(opened)
    if note:
        console().print(safe(note))
    console().print(safe(f"wrote {bundle / 'bench.json'} and {plot}"))


def say_fastest(opened: Any, report: Any) -> None:
    """Per variant, the fastest backend a deployment can run (the runtime's: onnxruntime, OpenVINO,
    TensorRT) that met its tolerance here, among those timed; PyTorch is the reference, not one
    of them, and is named where it ran faster."""
    from exporter.measure.validate import fastest_passing
    from exporter.runtime.backends.base import BACKENDS

    out = console()
    for label, (backend, p50) in fastest_passing(opened, report.timings, report.threads).items():
        rows = [t for t in report.timings if t.variant == label]
        batch = min(t.batch for t in rows if t.backend == backend)
        among = sorted({t.backend for t in rows if t.backend in BACKENDS and t.batch == batch})
        line = (
            f"{label}: fastest deployable backend within its tolerance, among {', '.join(among)}: "
            f"{backend} ({p50:.2f} ms p50, batch {batch})"
        )
        torch = [t for t in rows if t.backend.startswith("torch") and t.batch == batch and t.p50_ms < p50]
        if torch:
            best = min(torch, key=lambda t: t.p50_ms)
            line += f"; {best.backend} ran {best.p50_ms:.2f} ms, but PyTorch is the reference, not deployed"
        out.print(safe(line))
