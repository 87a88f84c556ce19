"""The speed/accuracy plot: latency (log scale) and, when evaluated, accuracy vs patch size (one
line per backend, and per image size in a grid); with both, the accuracy/latency frontier."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from exporter.bundle.records import NativeAgreement
from exporter.bundle.schema import Manifest
from exporter.core.files import write_atomic_bytes

if TYPE_CHECKING:
    from exporter.measure.frontier import FrontierRow
    from exporter.runtime.artefacts import CheckedBench, CheckedEval


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
        if isinstance(found, NativeAgreement):
            top1 = found.top1_agreement
            points.append((v.patch_size[0], v.img_size[0], found.mean_cosine if top1 is None else top1))
            against = found.against
    what = "top-1 agreement" if manifest.classifier else "mean cosine"
    return NativeSeries(f"{what} with {against} (no labels)", tuple(points)) if points else None


def plot_tradeoff(
    bench: CheckedBench | None,
    evaluation: CheckedEval | None,
    path: Path,
    title: str,
    native: NativeSeries | None = None,
) -> Path:
    """Write the PNG of ``draw_tradeoff``; returns ``path``."""
    import matplotlib.pyplot as plt

    fig = draw_tradeoff(bench, evaluation, title, native)
    image = io.BytesIO()
    fig.savefig(image, format="png", dpi=110)
    plt.close(fig)
    write_atomic_bytes(path, image.getvalue())  # never through a link, never half-written
    return path


def draw_tradeoff(
    bench: CheckedBench | None, evaluation: CheckedEval | None, title: str, native: NativeSeries | None = None
) -> Any:
    """The figure: one line per backend (one colour per backend in every panel; in a grid, one
    marker and dash per image size). ``native``: drawn dashed on the accuracy panel, or (no
    evaluation: a feature model's bundle, or one not evaluated yet) as a panel of its own.
    ``title`` is followed by what the panels show (no "accuracy" before ``evaluate``)."""
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
    shows = {"latency": "speed", "accuracy": "accuracy", "native": "agreement with the native patch (no labels)"}
    fig.suptitle(literal(f"{title}: {' / '.join(shows[p] for p in panels if p in shows)}"), fontsize=10)
    fig.tight_layout()
    return fig


def literal(text: str) -> str:
    """``text`` drawn as written: matplotlib reads ``$...$`` as mathtext (a stray one fails the draw)."""
    return str(text).replace("$", r"\$")


# One colour per backend in every panel (and its names: eval.json says onnxruntime and pytorch,
# bench.json ort-cpu and torch); backends not listed take the next free colour by name.
SAME_BACKEND = {"onnxruntime": "ort-cpu", "pytorch": "torch"}
COLOURS = {
    "torch": "tab:red",
    "ort-cpu": "tab:blue",
    "openvino": "tab:green",
    "openvino-bf16": "tab:olive",
    "torch-compile": "tab:pink",
    "ort-cuda": "tab:purple",
    "ort-tensorrt": "tab:brown",
    "torch-cuda": "tab:orange",
    "tensorrt": "tab:cyan",
    "ort-cpu fp16": "tab:gray",
    "ort-cpu int8": "black",
}
SIZE_STYLES = (("o", "-"), ("s", "--"), ("^", ":"), ("D", "-."))  # per image size, in a grid


def colour(backend: str) -> str:
    """The colour of ``backend`` (``ort-cpu``, ``onnxruntime``, ``ort-cpu, batch 1``...) in every panel."""
    name = backend.split(",")[0].split(" @ ")[0].strip()
    name = SAME_BACKEND.get(name, name)
    return COLOURS.get(name, f"C{sum(map(ord, name)) % 10}")


def _style(name: str, sides: list[str]) -> dict[str, str]:
    """Colour by backend; marker and dash by image size (``sides``, smallest first) where there are several."""
    side = name.split(" @ ")[1] if " @ " in name else ""
    marker, dash = SIZE_STYLES[sides.index(side) % len(SIZE_STYLES)] if side in sides else ("o", "-")
    return {"color": colour(name), "marker": marker, "linestyle": dash}


def _sides(names: Any) -> list[str]:
    return sorted({n.split(" @ ")[1] for n in names if " @ " in n}, key=int)


def plain_log_axis(axis: Any, values: list[float]) -> None:
    """Log-scale ticks as plain numbers (0.5, 1, 2, 5; never ``4x10^0``), at least three of them
    whatever the range: 1-2-5 per decade, or every 1..9 where the data spans less."""
    import math

    from matplotlib.ticker import FixedLocator, FormatStrFormatter, NullFormatter, NullLocator

    low, high = min(values), max(values)
    decades = range(math.floor(math.log10(low)) - 1, math.ceil(math.log10(high)) + 1)
    ticks: list[float] = []
    for steps in ((1, 2, 5), (1, 2, 3, 4, 5, 6, 7, 8, 9)):
        ticks = [m * 10.0**e for e in decades for m in steps if low / 1.15 <= m * 10.0**e <= high * 1.15]
        if len(ticks) >= 3:
            break
    axis.set_major_locator(FixedLocator(ticks))
    axis.set_major_formatter(FormatStrFormatter("%g"))
    axis.set_minor_locator(NullLocator())
    axis.set_minor_formatter(NullFormatter())


def _latency(ax: Any, bench: CheckedBench) -> None:
    batch = min(t["batch"] for t in bench["timings"])
    series: dict[str, list[tuple[int, float]]] = {}
    sizes = {tuple(t.get("img_size") or ()) for t in bench["timings"]}
    for t in bench["timings"]:
        if t["batch"] == batch:
            name = t["backend"] + (f" @ {t['img_size'][0]}" if len(sizes) > 1 and t.get("img_size") else "")
            series.setdefault(name, []).append((t["patch_size"][0], t["p50_ms"]))
    _lines(ax, series)
    ax.set_yscale("log")
    plain_log_axis(ax.yaxis, [ms for points in series.values() for _, ms in points])
    _patch_axis(ax, series)
    ax.set_ylabel(f"p50 latency, batch {batch} (ms, log)")
    machine, threads = bench["machine"], bench["threads"]
    ax.set_title(literal(f"{machine['cpu']}, {threads} thread{'' if threads == 1 else 's'}"), fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)


def _lines(ax: Any, series: dict[str, list[tuple[int, float]]], **style: Any) -> None:
    """One line per series, coloured by backend; series with the very same points are one line
    named for all of them (``pytorch = onnxruntime``), not lines drawn under one another."""
    merged: dict[tuple[tuple[int, float], ...], list[str]] = {}
    for name, points in sorted(series.items()):
        merged.setdefault(tuple(sorted(points)), []).append(name)
    sides = _sides(series)
    for drawn, names in merged.items():
        look = {**_style(names[0], sides), **style}
        ax.plot([p for p, _ in drawn], [v for _, v in drawn], label=literal(_joined(names)), **look)


def _joined(names: list[str]) -> str:
    """``pytorch = onnxruntime @ 48`` for series equal at one size; ``a = b`` otherwise."""
    sides = {n.split(" @ ")[1] if " @ " in n else "" for n in names}
    if len(sides) == 1 and sides != {""}:
        return " = ".join(n.split(" @ ")[0] for n in names) + f" @ {sides.pop()}"
    return " = ".join(names)


def _native(ax: Any, native: NativeSeries) -> dict[str, list[tuple[int, float]]]:
    """The agreement with the native patch size, dashed grey, one marker per image size."""
    series: dict[str, list[tuple[int, float]]] = {}
    sizes = {side for _, side, _ in native.points}
    for patch, side, value in native.points:
        series.setdefault(native.what + (f" @ {side}" if len(sizes) > 1 else ""), []).append((patch, value))
    sides = _sides(series)
    for name, points in sorted(series.items()):
        points.sort()
        look = {**_style(name, sides), "color": "gray", "linestyle": "--", "alpha": 0.8}
        ax.plot([p for p, _ in points], [v for _, v in points], label=literal(name), **look)
    _patch_axis(ax, series)
    ax.grid(True, alpha=0.3)
    return series


def _accuracy(ax: Any, evaluation: CheckedEval, native: NativeSeries | None = None) -> None:
    if native is not None:
        _native(ax, native)  # beside accuracy: what a user without labels would have seen
    series: dict[str, list[tuple[int, float]]] = {}
    sizes = {tuple(row.get("img_size") or ()) for row in evaluation["results"]}
    for row in evaluation["results"]:
        size = row.get("img_size")
        name = row["backend"] + (f" @ {size[0]}" if len(sizes) > 1 and size else "")
        series.setdefault(name, []).append((row["patch_size"][0], row["top1"]))
    _lines(ax, series)
    _patch_axis(ax, series)
    ax.set_ylabel("top-1 accuracy")
    ax.set_title(literal(f"{evaluation['data']} ({evaluation['samples']} images)"), fontsize=8)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)


def _patch_axis(ax: Any, series: dict[str, list[tuple[int, float]]]) -> None:
    """Log-2 patch-size axis labelled with the patch sizes themselves (8, 16, 32)."""
    from matplotlib.ticker import NullLocator

    ticks = sorted({p for points in series.values() for p, _ in points})
    ax.set_xscale("log", base=2)
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlabel("patch size")


def _frontier(ax: Any, frontiers: dict[str, list[FrontierRow]]) -> None:
    """Top-1 against p99 for every variant; the non-dominated ones joined, starred and named
    (each name once per place: two backends' points that meet share it)."""
    named: list[tuple[float, float]] = []
    for where, rows in sorted(frontiers.items()):
        on = [r.point for r in rows if r.on_frontier]
        line = ax.plot(
            [p.p99_ms for p in on],
            [p.accuracy for p in on],
            marker="*",
            markersize=10,
            color=colour(where),
            label=literal(where),
        )
        off = [r.point for r in rows if not r.on_frontier]
        ax.scatter([p.p99_ms for p in off], [p.accuracy for p in off], color=line[0].get_color(), alpha=0.4, s=16)
        for p in on:
            if any(abs(p.accuracy - a) < 0.02 and abs(p.p99_ms / ms - 1) < 0.25 for ms, a in named):
                continue  # another label sits there already: ``p32p32`` otherwise
            named.append((p.p99_ms, p.accuracy))
            ax.annotate(
                literal(p.variant), (p.p99_ms, p.accuracy), fontsize=7, xytext=(4, -10), textcoords="offset points"
            )
    ax.set_xscale("log")
    plain_log_axis(ax.xaxis, [r.point.p99_ms for rows in frontiers.values() for r in rows])
    ax.set_xlabel("p99 latency (ms, log)")
    ax.set_ylabel("top-1 accuracy")
    ax.set_title("frontier: ★ joined and named, dominated variants faint", fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
