"""Tables laid out for an 80-column terminal: every column that fits, the rest with ``--wide``.

A cell is never cut to "…": where the columns would not fit, whole columns go, least useful
first, and ``--wide`` brings them back (a pipe gets them whole, ``render.print_whole``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from exporter.bundle.report import TABLE_WIDTH
from exporter.cli.render import console, print_resample, print_whole, safe


def boxed_width(headers: Sequence[str], rows: Sequence[Sequence[str]], columns: Sequence[int]) -> int:
    """The width of Rich's boxed table of these columns: each its widest cell plus 2 of padding,
    and a rule between and around them."""
    return 1 + sum(3 + max(len(headers[i]), *(len(r[i]) for r in rows)) for i in columns)


def fitting(
    headers: Sequence[str], rows: Sequence[Sequence[str]], drop: Sequence[str], wide: bool = False
) -> list[int]:
    """Indexes of the columns to show: all of them (``wide``), else all but the ``drop`` ones
    that must go, in that order, for the table to fit TABLE_WIDTH."""
    keep = list(range(len(headers)))
    for name in drop:
        if wide or boxed_width(headers, rows, keep) <= TABLE_WIDTH:
            break
        keep = [i for i in keep if headers[i] != name]
    return keep


def boxed(
    title: str, headers: Sequence[str], rows: Sequence[Sequence[str]], columns: Sequence[int], left: Sequence[str]
) -> Any:
    """A Rich table of ``rows`` (plain text, escaped here; a ✓/✗ cell is coloured) with ``columns``
    shown, never wrapped or cut; ``left``: the headers of the left-aligned columns."""
    from rich.table import Table

    table = Table(title=safe(title), title_justify="left")
    for i in columns:
        table.add_column(headers[i], justify="left" if headers[i] in left else "right", no_wrap=True)
    for row in rows:
        table.add_row(*[MARKS.get(row[i], safe(row[i])) for i in columns])
    return table


MARKS = {"✓": "[green]✓[/green]", "✗": "[red]✗[/red]"}


VALIDATE_HEADER = ("", "check", "sha256", "max|Δ|", "p99|Δ|", "mean|Δ|", "cosine", "top-1", "top-5")


def comparison_cells(cmp: Any) -> list[str]:
    """max, p99 and mean |Δ|, cosine, top-1 and top-5 of a Comparison ('—' where it has none)."""
    if cmp is None:
        return ["—"] * 6
    return [
        f"{cmp.max_abs:.2e}",
        f"{cmp.p99_abs:.2e}",
        f"{cmp.mean_abs:.2e}",
        f"{cmp.min_cosine:.7f}",
        "—" if cmp.top1_agreement is None else f"{cmp.top1_agreement:.1%}",
        "—" if cmp.top5_agreement is None else f"{cmp.top5_agreement:.1%}",
    ]


def print_validation(results: Sequence[Any], wide: bool = False, classifier: bool = True) -> None:
    """``validate``'s verdicts: a row per check (a reduced-precision file's on a row of its own),
    then a line per failure saying why. A feature model (not ``classifier``) has no top-k columns."""
    rows: list[list[str]] = []
    why: list[str] = []
    for r in results:
        sha = "ok" if r.sha256_ok else "MISMATCH"
        rows.append(["✓" if r else "✗", r.label, sha, *comparison_cells(r.comparison)])
        if r.problem or (r.comparison is not None and not r.comparison):
            why.append(f"✗ {r.label}: {r.problem or '; '.join(r.comparison.failures)}")
        if r.reduced is not None:
            label = f"{r.label} {r.reduced.tolerance.name}"
            rows.append(["✓" if r.reduced else "✗", label, "", *comparison_cells(r.reduced)])
            if not r.reduced:
                why.append(f"✗ {label}: {'; '.join(r.reduced.failures)}")
    shown = len(VALIDATE_HEADER) - (0 if classifier else 2)  # top-1 and top-5 are the last two
    columns = fitting(VALIDATE_HEADER[:shown], [r[:shown] for r in rows], ("mean|Δ|", "top-5", "p99|Δ|"), wide)
    out = console()
    print_whole(
        boxed("validation against the stored reference", VALIDATE_HEADER, rows, columns, ("check", "sha256")), out
    )
    for line in why:
        out.print(safe(line))


BENCH_HEADER = (
    "variant",
    "batch",
    "backend",
    "p50 ms",
    "p90 ms",
    "p99 ms",
    "img/s",
    "GFLOP/img",
    "GFLOP/s",
    "of ceiling",
)


def plural(count: int, word: str) -> str:
    """``1 thread``, ``2 threads``."""
    return f"{count} {word}{'' if count == 1 else 's'}"


def print_bench(report: Any, wide: bool = False) -> None:
    """``bench``'s table (the columns that fit 80 columns; ``wide``: every one), the ceilings
    measured, and the process's peak memory (one number: the process's, not a row's)."""

    rows = [
        [
            t.variant,
            str(t.batch),
            t.backend,
            f"{t.p50_ms:.2f}",
            f"{t.p90_ms:.2f}",
            f"{t.p99_ms:.2f}",
            f"{t.images_per_s:.1f}",
            f"{t.gflops_per_image:.3f}",
            f"{t.achieved_gflops:.1f}",
            "" if t.fraction_of_ceiling is None else f"{t.fraction_of_ceiling:.0%}",
        ]
        for t in sorted(report.timings, key=lambda t: (t.patch_size, t.img_size, t.batch, t.backend))
    ]
    columns = fitting(BENCH_HEADER, rows, ("GFLOP/img", "p90 ms", "GFLOP/s", "img/s"), wide) if rows else []
    title = f"{report.machine['cpu']}, {plural(report.threads, 'thread')}"
    out = console()
    if rows:
        print_whole(boxed(title, BENCH_HEADER, rows, columns, ("variant", "backend")), out)
    for line in ceiling_lines(report.ceiling):
        out.print(safe(line))
    if report.timings:
        peak = max(t.peak_rss_mb for t in report.timings)
        out.print(f"process peak RSS: {peak:.0f} MB (the whole run's peak, every backend together)")
    if report.resample:
        print_resample(report.resample, out)
    for s in report.skipped:
        out.print(safe(f"skipped {s.backend}: {s.reason}"))


def ceiling_lines(c: Any) -> list[str]:
    """What the ceilings measured: only those of the backends asked for."""
    found = [
        (c.ort_matmul_gflops, "onnxruntime fp32 MatMul", "GFLOP/s"),
        (c.torch_sgemm_gflops, "torch sgemm", "GFLOP/s"),
        (c.bf16_matmul_gflops, "OpenVINO bf16 MatMul", "GFLOP/s"),
        (c.int8_matmul_gops, "onnxruntime int8 MatMulInteger", "GOP/s"),
    ]
    said = [f"{what} {value:.0f} {unit}" for value, what, unit in found if value]
    if not said:
        return []
    measured = ", ".join(said)
    return [f"ceiling (same run, {c.size}x{c.size}): {measured}; 'of ceiling' is of each row's own precision's"]
