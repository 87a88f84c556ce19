"""Everything the commands print: the variant tables (laid out for 80 columns, ``--wide`` for the
rest), progress, summaries and the bench and frontier tables. Text from files is escaped here."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from exporter.bundle.engines import BuiltEngines, EngineSet, NotRunEngines, PendingEngines
from exporter.bundle.records import Preflight, VariantRecord
from exporter.bundle.report import (
    TABLE_HEADER,
    describe,
    native_summary,
    preflight_lines,
    shown_columns,
    top1_text,
    variant_rows,
)
from exporter.bundle.schema import Manifest
from exporter.core.assumptions import summary
from exporter.core.errors import FlexiExportError
from exporter.core.names import printable
from exporter.core.sizes import format_size
from exporter.measure.plot import native_series, plot_tradeoff

if TYPE_CHECKING:
    from exporter.build.options import BuildResult
    from exporter.bundle.door import Bundle


def console(stderr: bool = False) -> Any:
    """Rich's console at the terminal's width; when piped (a log, a file, ``grep``), lines are
    never wrapped and tables print whole (``print_whole``), rather than cut at 80 columns."""
    from rich.console import Console

    out = Console(stderr=stderr, highlight=False, emoji=False)
    out.soft_wrap = not out.is_terminal
    return out


def print_whole(renderable: Any, out: Any = None) -> None:
    """Print a table; when piped (a log, a file, ``less``), as wide as it needs rather than with
    its numbers cut to "…": no one is there to widen the window."""
    from rich.measure import Measurement

    out = out or console()
    if not out.is_terminal and not out.record:
        needed = Measurement.get(out, out.options.update(width=10_000), renderable).maximum
        out.width = max(out.width, needed)
    out.print(renderable)


def safe(text: object) -> str:
    """``text`` from a manifest, a checkpoint config or a file name, ready for Rich: control
    characters (ANSI escapes) removed and markup shown as written, never interpreted."""
    from rich.markup import escape

    return escape(printable(str(text)))


class RichReporter:
    """Draws the pipeline's progress: one bar, a line per finished stage, a row per variant."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.err = console(stderr=True)
        self.progress: Any = None
        self.task: Any = None

    def __enter__(self) -> RichReporter:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.stop()

    def begin(self, total_steps: int) -> None:
        if self.quiet:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=self.err,
            transient=True,
        )
        self.task = self.progress.add_task("building", total=total_steps)
        self.progress.start()

    def start(self, label: str, stage: str) -> None:
        if self.progress is not None:
            self.progress.update(self.task, description=safe(f"{label}: {stage}"))
        elif not self.quiet:
            self.err.print(safe(f"{label}: {stage} ..."))

    def done(self, label: str, stage: str, seconds: float) -> None:
        if self.quiet:
            return
        if self.progress is not None:
            self.progress.advance(self.task)
            self.progress.console.print(safe(f"  {label}: {stage} done in {seconds:.2f} s"))
        else:
            self.err.print(safe(f"  {label}: {stage} done in {seconds:.2f} s"))

    def variant(self, record: VariantRecord) -> None:
        if self.quiet:
            return
        mark = "[green]✓[/green]" if record.parity.passed else "[red]✗[/red]"
        p = record.parity
        note = " (resumed: inputs and ONNX unchanged)" if record.resumed else ""
        if self.progress is not None and record.resumed:
            self.progress.advance(self.task, 3)
        if record.trt_lint and not record.trt_lint.passed:
            issues = "; ".join(record.trt_lint.issues)
            self.err.print(f"[yellow]warning[/yellow] {safe(record.label)}: TensorRT lint: {safe(issues)}")
        self.err.print(
            f"{mark} {safe(record.label)}  max|Δ| {p.max_abs:.1e}  cos {p.min_cosine:.7f}{top1_text(p, 0)}{note}"
        )
        if record.reduced:
            r = record.reduced
            mark = "[green]✓[/green]" if r.status == "passed" else "[red]✗[/red]"
            q = r.parity
            why = "" if r.status == "passed" else f"  ({'; '.join(q.failures)})"
            self.err.print(
                f"{mark} {safe(record.label)} {safe(r.precision)}  max|Δ| {q.max_abs:.1e}  "
                f"p99 {q.p99_abs:.1e}  cos {q.min_cosine:.5f}{top1_text(q)}  "
                f"{r.bytes / 1e6:.1f} MB{safe(why)}"
            )


def print_table(manifest: Manifest, title: str, wide: bool = False, out: Any = None) -> None:
    """The variant table: the columns that fit 80 columns, or with ``wide`` every column."""
    from rich.table import Table

    rows = variant_rows(manifest)
    shown = shown_columns(manifest, rows, wide)
    table = Table(title=safe(title), title_justify="left")
    for i in shown:
        header = TABLE_HEADER[i]
        table.add_column(header, justify="right" if header not in ("", "variant", "onnx") else "left", no_wrap=True)
    for row in rows:
        mark = "[green]✓[/green]" if row[0] == "✓" else "[red]✗[/red]"
        table.add_row(*[mark if i == 0 else safe(row[i]) for i in shown])
    print_whole(table, out)


def print_preflight(manifest: Manifest, wide: bool = False, out: Any = None) -> None:
    """The lines under the table that say what its ``trt`` column judged (``--wide``: every file)."""

    for line in preflight_lines(manifest, wide):
        mark = "[red]✗[/red]" if line.lstrip().startswith("✗") else ""
        text = safe(line.replace("✗", "", 1)) if mark else safe(line)
        (out or console()).print(f"  {mark}{text.lstrip()}" if mark else text)


def print_engines(name: str, entry: EngineSet) -> None:
    out = console()
    if isinstance(entry, PendingEngines):
        out.print(safe(f"TensorRT engines for profile {name}: {entry.status} ({entry.reason})"))
        out.print(safe(f"  on the target device run:  {entry.command}"))
        if entry.script:
            out.print(safe(f"  or, with trtexec only:     bash {entry.script}  (inside the bundle)"))
        return
    if isinstance(entry, NotRunEngines):
        out.print(
            safe(
                f"{entry.library} engines for profile {name}: built on the CPU for sm {entry.compute_capability} "
                f"({entry.library} {entry.tensorrt}), not run: {entry.reason}"
            ),
        )
        for label, built in entry.variants.items():
            took = f"built in {built.build_seconds:.1f} s"
            out.print(safe(f"  {label}  {built.engine}  {took} (sidecar {built.engine}.json)"))
        return
    out.print(
        safe(
            f"TensorRT engines for profile {name}: {entry.status} on {entry.gpu} "
            f"(sm {entry.compute_capability}, TensorRT {entry.tensorrt})"
        )
    )
    for label, v in entry.variants.items():
        mark = "[green]✓[/green]" if v.status == "passed" else "[red]✗[/red]"
        p = v.parity
        out.print(
            f"  {mark} {safe(label)}  {safe(v.engine)}  max|Δ| {p.max_abs:.1e}  cos {p.min_cosine:.6f}"
            f"{top1_text(p)}  built in {v.build_seconds:.0f} s"
        )


def failed_message(manifest: Manifest, bundle: Path) -> str:
    bad = [v for v in manifest.variants if v.status != "passed"]
    if not bad and manifest.source_parity and manifest.source_parity.status == "failed":
        return f"{describe(manifest.source_parity)}; see {bundle / 'report.md'}"
    bad_reduced = [(v.label, v.reduced) for v in bad if v.reduced and v.reduced.status != "passed" and v.parity.passed]
    if bad_reduced and len(bad_reduced) == len(bad):
        detail = "; ".join(f"{label} {r.precision}: {', '.join(r.parity.failures)}" for label, r in bad_reduced)
        return (
            f"{len(bad)} of {len(manifest.variants)} variants failed validation ({detail}); see {bundle / 'report.md'}"
        )
    refused = [
        (v.label, path, p)
        for v in manifest.variants
        for path, p in v.preflights()
        if isinstance(p, Preflight) and not p.ok
    ]
    if refused and not bad:
        detail = "; ".join(
            f"{label} {Path(path).name}: " + ", ".join(f"{e.node or e.op} {e.message}" for e in p.errors[:1])
            for label, path, p in refused
        )
        return f"TensorRT's parser or builder refused {len(refused)} ONNX files ({detail}); see {bundle / 'report.md'}"
    bad_engines = [
        (n, label, v)
        for n, e in manifest.engines.items()
        if isinstance(e, BuiltEngines)
        for label, v in e.variants.items()
        if v.status == "failed"
    ]
    if bad_engines and not bad:
        detail = "; ".join(f"{n} {label}: {', '.join(v.parity.failures)}" for n, label, v in bad_engines)
        return f"{len(bad_engines)} TensorRT engines failed validation ({detail}); see {bundle / 'report.md'}"
    detail = "; ".join(f"{v.label}: {', '.join(v.parity.failures)}" for v in bad)
    return f"{len(bad)} of {len(manifest.variants)} variants failed validation ({detail}); see {bundle / 'report.md'}"


def summary_line(result: BuildResult) -> str:
    """``build -q``'s one line."""
    variants = result.manifest.variants
    passed = sum(v.status == "passed" for v in variants)
    mark = "✓" if result.manifest.passed else "✗"
    return (
        f"{mark} {result.manifest.name}: {passed} of {len(variants)} variants passed; "
        f"bundle written to {result.bundle} in {result.seconds:.1f} s"
        + source_parity_tail(result.manifest)
        + assumptions_tail(result.manifest)
    )


def source_parity_tail(manifest: Manifest) -> str:
    """``; source parity inferred ...`` or ``skipped: why`` for ``-q``'s line: the proof it could not
    anchor to an independent source (passed and failed are the line's mark already)."""
    entry = manifest.source_parity
    status = entry.status if entry else None
    if status == "inferred":
        return "; source parity: inferred, not independently checked"
    if entry and status == "skipped":
        return f"; source parity skipped: {entry.reason}"
    return ""


def assumptions_tail(manifest: Manifest) -> str:
    """``; 1 assumption: heads 3 (pass --num-heads or a config.json)`` for a summary line; empty when none."""

    return f"; {summary(manifest.assumptions)}" if manifest.assumptions else ""


def print_source_parity(manifest: Manifest, out: Any = None) -> None:
    """The lines under the table that say what the ``src`` and ``native`` columns compared (or
    why the native agreement was skipped, with the flag that enables it)."""

    for line in (describe(manifest.source_parity), native_summary(manifest)):
        if line:
            (out or console()).print(safe(line))


def print_build(result: BuildResult, wide: bool) -> None:
    print_table(result.manifest, f"{result.manifest.name} → {result.bundle}", wide)
    print_source_parity(result.manifest)
    print_preflight(result.manifest, wide)
    stages = "  ".join(f"{k} {v:.1f} s" for k, v in result.stage_seconds.items())
    if result.manifest.shared_weights:
        sw = result.manifest.shared_weights
        console().print(
            safe(
                f"shared weights: {sw.tensors} tensors in {sw.path}; ONNX bytes "
                f"{(sw.bundle_onnx_bytes_before or 0) / 1e6:.1f} MB -> {(sw.bundle_onnx_bytes_after or 0) / 1e6:.1f} MB"
            )
        )
    console().print(
        safe(
            f"bundle written to {result.bundle} in {result.seconds:.1f} s ({stages})"
            + assumptions_tail(result.manifest)
        ),
    )
    for name, entry in result.manifest.engines.items():
        print_engines(name, entry)


def write_plot(opened: Bundle) -> Path | None:
    """Redraw ``tradeoff.png`` from whatever of bench.json / eval.json the bundle holds."""
    from exporter.runtime.measurements import checked_bench, checked_eval

    variants = {v.label for v in opened.manifest.variants}
    bench = checked_bench(opened.read_artefact("bench.json"), str(opened.root / "bench.json"), variants)
    evaluation = checked_eval(opened.read_artefact("eval.json"), str(opened.root / "eval.json"), variants)
    if bench is None and evaluation is None:
        return None
    title = opened.manifest.name  # the plot says what its panels show
    native = native_series(opened.manifest)
    try:
        return plot_tradeoff(bench, evaluation, opened.artefact("tradeoff.png"), title, native)
    except FlexiExportError:  # a full disk is a ValueError too: the user's to hear, not a bad file
        raise
    except (KeyError, TypeError, ValueError, IndexError) as exc:  # a bench/eval.json we did not write
        logging.getLogger("exporter.measure.plot").warning(
            "no plot: bench.json or eval.json is not as written (%s)", exc
        )
        return None


def print_frontier(opened: Bundle) -> None:
    """The accuracy/latency frontier per backend, once the bundle has both bench.json and eval.json."""
    from rich.table import Table

    from exporter.measure.frontier import bundle_frontiers
    from exporter.runtime.measurements import checked_bench

    variants = {v.label for v in opened.manifest.variants}
    bench = checked_bench(opened.read_artefact("bench.json"), str(opened.root / "bench.json"), variants)
    frontiers = bundle_frontiers(bench, opened.read_artefact("eval.json"))
    for where, rows in frontiers.items():
        table = Table(title=safe(f"frontier on {where} (★ non-dominated)"), title_justify="left")
        for header in ("", "variant", "top-1", "p99 ms", "against its neighbours"):
            table.add_column(header, justify="right" if header in ("top-1", "p99 ms") else "left")
        for row in rows:
            p = row.point
            table.add_row(
                "★" if row.on_frontier else "",
                safe(p.variant),
                f"{p.accuracy:.3f}",
                f"{p.p99_ms:.3g}",
                safe(row.cost()),
            )
        print_whole(table)


def print_resample(costs: Any, out: Any) -> None:
    """What a dynamic-resolution variant's in-graph position resample costs, per size and backend."""
    from rich.table import Table

    table = Table(
        title="in-graph position resample: dynamic ONNX against a fixed-size ONNX at the same size",
        title_justify="left",
    )
    for header in ("variant", "image", "batch", "backend", "dynamic p50", "fixed p50", "extra ms", "extra"):
        table.add_column(header, justify="left" if header in ("variant", "backend") else "right")
    for c in costs:
        table.add_row(
            safe(c.variant),
            format_size(tuple(c.img_size)),
            str(c.batch),
            safe(c.backend),
            f"{c.dynamic_p50_ms:.3f}",
            f"{c.fixed_p50_ms:.3f}",
            f"{c.extra_ms:+.3f}",
            f"{c.extra_percent:+.1f}%",
        )
    print_whole(table, out)


def print_endpoints(server: Any, names: list[str], entry: str) -> None:
    version = server.metadata().get("version", "?")
    out = console()
    out.print(safe(f"Triton {version} ready on {server.http_url} (HTTP) and {server.grpc_url} (gRPC), localhost only"))
    out.print(safe(f"  {entry}: images uint8 [N, H, W, 3] or pixel_values; parameters budget_ms or variant"))
    out.print(safe(f"  variants: {', '.join(n for n in names if n != entry)}"))
    out.print(safe(f"  repository: {server.repository} (removed on exit); Ctrl-C stops"))
