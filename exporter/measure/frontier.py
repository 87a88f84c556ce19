"""The accuracy/latency frontier: which variants are worth shipping on one backend.

A variant is on the frontier (Pareto-optimal) when no other variant is at least as accurate and
at least as fast, and strictly better in one of the two. Accuracy comes from ``eval.json``
(``flexiexport evaluate``), latency (p99) from ``bench.json`` (``flexiexport bench``), both read
as plain JSON: this module imports neither torch nor onnx, so the runtime can use it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from exporter.core.numbers import finite_number
from exporter.runtime.measurements import accuracies

if TYPE_CHECKING:
    from exporter.runtime.artefacts import CheckedBench


@dataclass(frozen=True)
class Point:
    variant: str
    accuracy: float  # top-1, 0..1
    p99_ms: float


@dataclass(frozen=True)
class FrontierRow:
    """One variant, and for a frontier variant what it costs against its frontier neighbours."""

    point: Point
    on_frontier: bool
    dominated_by: str = ""  # a variant at least as accurate and as fast (off the frontier)
    faster: Point | None = None  # the next faster frontier variant
    more_accurate: Point | None = None  # the next more accurate frontier variant

    def cost(self) -> str:
        """``+0.42 ms (+35%) for +4.1 pt over p16_64`` or ``dominated by p32_64``."""
        if not self.on_frontier:
            return f"dominated by {self.dominated_by}"
        if self.faster is None:
            return "fastest"
        p, f = self.point, self.faster
        return (
            f"+{p.p99_ms - f.p99_ms:.3g} ms (+{(p.p99_ms / f.p99_ms - 1) * 100:.0f}%) for "
            f"+{(p.accuracy - f.accuracy) * 100:.1f} pt over {f.variant}"
        )


def dominates(a: Point, b: Point) -> bool:
    """``a`` is at least as accurate and as fast as ``b``, and better in one."""
    return a.accuracy >= b.accuracy and a.p99_ms <= b.p99_ms and (a.accuracy > b.accuracy or a.p99_ms < b.p99_ms)


def frontier(points: list[Point]) -> list[FrontierRow]:
    """Every point, fastest first, marked on or off the frontier. A sweep from the fastest: a
    point is on it when it is more accurate than every faster one (an exact tie in both: the
    first listed stays on, the others are dominated by it)."""
    ordered = sorted(points, key=lambda p: (p.p99_ms, -p.accuracy))
    on: list[Point] = []
    off: dict[str, str] = {}
    for p in ordered:
        if on and p.accuracy <= on[-1].accuracy:
            off[p.variant] = on[-1].variant  # as accurate or more, and as fast or faster
        else:
            on.append(p)
    neighbours = {
        p.variant: (on[i - 1] if i else None, on[i + 1] if i + 1 < len(on) else None) for i, p in enumerate(on)
    }
    return [
        FrontierRow(p, False, off[p.variant])
        if p.variant in off
        else FrontierRow(p, True, faster=neighbours[p.variant][0], more_accurate=neighbours[p.variant][1])
        for p in ordered
    ]


def latencies(bench: Any, backend: str, batch: int) -> dict[str, float]:
    """p99 ms by variant from ``bench.json`` for ``backend`` at ``batch``."""
    rows = bench.get("timings") if isinstance(bench, dict) else None
    found: dict[str, float] = {}
    for row in rows if isinstance(rows, list) else []:
        if not (isinstance(row, dict) and row.get("backend") == backend and row.get("batch") == batch):
            continue
        p99 = finite_number(row.get("p99_ms"))
        if p99 is not None and p99 > 0 and "variant" in row:
            found[str(row["variant"])] = p99
    return found


def bundle_frontiers(
    bench: CheckedBench | None, evaluation: Any, batch: int | None = None
) -> dict[str, list[FrontierRow]]:
    """The frontier of every backend in ``bench.json`` (as ``checked_bench`` returns it; at its
    smallest batch, or ``batch``) over the variants ``eval.json`` has an accuracy for."""
    rows = bench.get("timings") if isinstance(bench, dict) else None
    if not isinstance(rows, list) or not rows:
        return {}
    backends = sorted({str(r.get("backend")) for r in rows if isinstance(r, dict)})
    out = {}
    for backend in backends:
        sizes = [int(r["batch"]) for r in rows if isinstance(r, dict) and r.get("backend") == backend]
        at = batch if batch is not None else min(sizes)
        acc, lat = accuracies(evaluation, backend), latencies(bench, backend, at)
        points = [Point(v, acc[v], lat[v]) for v in lat if v in acc]
        if points:
            out[f"{backend}, batch {at}"] = frontier(points)
    return out
