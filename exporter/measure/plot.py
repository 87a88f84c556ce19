"""The speed/accuracy plot: latency (log scale) and, when evaluated, accuracy vs patch size (one
line per backend, and per image size in a grid); with both, the accuracy/latency frontier."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from exporter.bundle.manifest import Manifest
from exporter.core.files import write_atomic_bytes


@dataclass(frozen=True)
class NativeSeries:
    """The build's agreement with the native patch size, per variant: ``points`` are
    (patch, image side, value); ``what`` names the value (top-1 agreement or mean cosine)."""

    what: str
    points: tuple[tuple[int, int, float], ...]


def native_series(manifest: Manifest) -> NativeSeries | None:
    """The manifest's measured ``native_agreement`` values; None when none was measured."""
    points, against = [], ""
    for v in manifest.variants:
        found = v.native_agreement
        if found and "skipped" not in found:
            top1 = found.get("top1_agreement")
            points.append((v.patch_size[0], v.img_size[0], float(found["mean_cosine"] if top1 is None else top1)))
            against = str(found["against"])
    what = "top-1 agreement" if manifest.classifier else "mean cosine"
    return NativeSeries(f"{what} with {against} (no labels)", tuple(points)) if points else None


def plot_tradeoff(
    bench: dict[str, Any] | None,
    evaluation: dict[str, Any] | None,
    path: Path,
    title: str,
    native: NativeSeries | None = None,
) -> Path:
    """Write a PNG with one line per backend; returns ``path``. ``native``: drawn dashed on the
    accuracy panel, or (no evaluation: a feature model's bundle) as a panel of its own."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from exporter.measure.frontier import bundle_frontiers

    frontiers = bundle_frontiers(bench, evaluation) if bench and evaluation else {}
    alone = native if native and not evaluation else None
    panels = [
        p
        for p in (
            "latency" if bench else None,
            "accuracy" if evaluation else None,
            "native" if alone else None,
            "frontier" if frontiers else None,
        )
        if p
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.2), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        if panel == "latency":
            _latency(ax, bench)  # type: ignore[arg-type]
        elif panel == "accuracy":
            _accuracy(ax, evaluation, native)  # type: ignore[arg-type]
        elif panel == "native":
            _native(ax, alone)  # type: ignore[arg-type]
            ax.set_ylabel(literal(alone.what))  # type: ignore[union-attr]
            ax.legend(fontsize=8)
        else:
            _frontier(ax, frontiers)
    fig.suptitle(literal(title), fontsize=10)
    fig.tight_layout()
    image = io.BytesIO()
    fig.savefig(image, format="png", dpi=110)
    plt.close(fig)
    write_atomic_bytes(path, image.getvalue())  # never through a link, never half-written
    return path


def literal(text: str) -> str:
    """``text`` drawn as written: matplotlib reads ``$...$`` as mathtext (a stray one fails the draw)."""
    return str(text).replace("$", r"\$")


def _latency(ax: Any, bench: dict[str, Any]) -> None:
    from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter

    batch = min(t["batch"] for t in bench["timings"])
    series: dict[str, list[tuple[int, float]]] = {}
    sizes = {tuple(t.get("img_size") or ()) for t in bench["timings"]}
    for t in bench["timings"]:
        if t["batch"] == batch:
            name = t["backend"] + (f" @ {t['img_size'][0]}" if len(sizes) > 1 and t.get("img_size") else "")
            series.setdefault(name, []).append((t["patch_size"][0], t["p50_ms"]))
    for backend, points in sorted(series.items()):
        points.sort()
        ax.plot([p for p, _ in points], [ms for _, ms in points], marker="o", label=literal(backend))
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.yaxis.set_minor_formatter(NullFormatter())
    _patch_axis(ax, series)
    ax.set_ylabel(f"p50 latency, batch {batch} (ms, log)")
    machine = bench["machine"]
    ax.set_title(literal(f"{machine['cpu']}, {bench['threads']} threads"), fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)


def _native(ax: Any, native: NativeSeries) -> dict[str, list[tuple[int, float]]]:
    """The agreement with the native patch size, dashed, one line per image size."""
    series: dict[str, list[tuple[int, float]]] = {}
    sizes = {side for _, side, _ in native.points}
    for patch, side, value in native.points:
        series.setdefault(native.what + (f" @ {side}" if len(sizes) > 1 else ""), []).append((patch, value))
    for name, points in sorted(series.items()):
        points.sort()
        ax.plot([p for p, _ in points], [v for _, v in points], marker="x", linestyle="--", label=literal(name))
    _patch_axis(ax, series)
    ax.grid(True, alpha=0.3)
    return series


def _accuracy(ax: Any, evaluation: dict[str, Any], native: NativeSeries | None = None) -> None:
    if native is not None:
        _native(ax, native)  # beside accuracy: what a user without labels would have seen
    series: dict[str, list[tuple[int, float]]] = {}
    sizes = {tuple(row.get("img_size") or ()) for row in evaluation["results"]}
    for row in evaluation["results"]:
        name = row["backend"] + (f" @ {row['img_size'][0]}" if len(sizes) > 1 and row.get("img_size") else "")
        series.setdefault(name, []).append((row["patch_size"][0], row["top1"]))
    for backend, points in sorted(series.items()):
        points.sort()
        ax.plot([p for p, _ in points], [a for _, a in points], marker="o", label=literal(backend))
    _patch_axis(ax, series)
    ax.set_ylabel("top-1 accuracy")
    ax.set_title(literal(f"{evaluation['data']} ({evaluation['samples']} images)"), fontsize=8)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)


def _patch_axis(ax: Any, series: dict[str, list[tuple[int, float]]]) -> None:
    """Log-2 patch-size axis labelled with the patch sizes themselves (8, 16, 32)."""
    from matplotlib.ticker import NullLocator

    ticks = sorted({p for points in series.values() for p, _ in points})
    ax.set_xscale("log", base=2)
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlabel("patch size")


def _frontier(ax: Any, frontiers: dict[str, Any]) -> None:
    """Top-1 against p99 for every variant; the non-dominated ones joined and starred."""
    for where, rows in sorted(frontiers.items()):
        on = [r.point for r in rows if r.on_frontier]
        line = ax.plot(
            [p.p99_ms for p in on], [p.accuracy for p in on], marker="*", markersize=10, label=literal(where)
        )
        off = [r.point for r in rows if not r.on_frontier]
        ax.scatter([p.p99_ms for p in off], [p.accuracy for p in off], color=line[0].get_color(), alpha=0.5, s=16)
        for r in rows:
            ax.annotate(
                literal(r.point.variant),
                (r.point.p99_ms, r.point.accuracy),
                fontsize=7,
                xytext=(3, 3),
                textcoords="offset points",
            )
    ax.set_xscale("log")
    ax.set_xlabel("p99 latency (ms, log)")
    ax.set_ylabel("top-1 accuracy")
    ax.set_title("frontier: ★ joined, dominated variants faint", fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
