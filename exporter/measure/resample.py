"""What the in-graph resample of a dynamic-resolution ONNX costs: each such variant timed against a
fixed-size ONNX of the same source at its min, opt and max size, the calls alternated."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from exporter.bundle.door import Bundle
from exporter.core.errors import BundleError
from exporter.measure.backends import bench_runner
from exporter.measure.ceiling import measure
from exporter.measure.options import BenchOptions, Skipped, bench_input, percentile
from exporter.parity.runner import Runner


@dataclass(frozen=True)
class ResampleCost:
    """A dynamic-resolution variant against a fixed-size ONNX of the same patch built for exactly
    ``img_size`` (``variant.fixed_at``), on one backend at one batch, timed alternately in the same
    run: ``extra_ms`` is what resampling the position grid in the graph (and shapes left
    dynamic) costs at that size."""

    backend: str
    variant: str
    img_size: tuple[int, int]
    batch: int
    dynamic_p50_ms: float
    fixed_p50_ms: float
    dynamic_p99_ms: float
    fixed_p99_ms: float
    extra_ms: float
    extra_percent: float
    measured_at: str = ""


def timed_pair(
    first: Runner, second: Runner, img: tuple[int, int], batch: int, options: BenchOptions
) -> tuple[list[float], list[float]]:
    """Seconds per call of two runners on the same batch, called in turn (ABAB...) so that
    whatever else loads the machine meanwhile slows both alike. Warm-up calls are not counted."""
    x = bench_input(img, batch)
    first(x), second(x)  # first calls: compilation, allocation
    laps: tuple[list[float], list[float]] = ([], [])

    def both() -> None:
        for runner, times in zip((first, second), laps):
            start = time.perf_counter()
            runner(x)
            times.append(time.perf_counter() - start)

    measure(both, options)
    return laps[0][options.warmup :], laps[1][options.warmup :]


def resample_costs(
    opened: Bundle,
    source: Callable[[], Any],
    backends: list[str],
    options: BenchOptions,
    say: Callable[[str], None],
) -> tuple[list[ResampleCost], list[Skipped]]:
    """Each dynamic-resolution variant at its smallest, opt and largest size against a fixed-size
    ONNX exported now for exactly that size, on every ONNX backend that ran, at the smallest
    batch asked for (or the ONNX's static one). Needs the source checkpoint (the fixed-size
    models are built from it); without it the comparison is skipped with the reason."""
    import tempfile

    from exporter.build.export import ExportOptions, export_onnx
    from exporter.build.recheck import record_spec
    from exporter.build.variant import fixed_at

    records = [r for r in opened.manifest.variants if r.img_range]
    if not records or not backends:
        return [], []
    try:
        src = source()
    except BundleError as exc:
        return [], [Skipped("resample cost", f"{exc} (the fixed-size models are built from it)")]
    costs: list[ResampleCost] = []
    with tempfile.TemporaryDirectory(prefix="flexiexport-resample-") as tmp:
        for record in records:
            spec, (low, high) = record_spec(record), record.img_range or ((0, 0), (0, 0))
            batch = record.static_batch or min(options.batch_sizes)
            export = ExportOptions(
                opset=record.onnx.opset or 17, batch=record.static_batch or "dynamic", exporter="torchscript"
            )
            fixed: dict[tuple[int, int], Path] = {}
            for size in dict.fromkeys((low, spec.img_size, high)):
                say(f"resample cost: exporting {record.label} fixed at {size[0]}x{size[1]}")
                fixed[size] = Path(tmp) / f"{record.label}_{size[0]}x{size[1]}.onnx"
                export_onnx(fixed_at(src, spec, size), size, fixed[size], export)
            for backend in backends:
                dynamic = bench_runner(backend, opened.onnx(record), options.thread_count)
                for size, path in fixed.items():
                    say(f"resample cost: {backend} {record.label} at {size[0]}x{size[1]}, batch {batch}")
                    plain = bench_runner(backend, path, options.thread_count)
                    dyn_times, fixed_times = timed_pair(dynamic, plain, size, batch, options)
                    d50, f50 = percentile(dyn_times, 50) * 1e3, percentile(fixed_times, 50) * 1e3
                    costs.append(
                        ResampleCost(
                            backend=backend,
                            variant=record.label,
                            img_size=size,
                            batch=batch,
                            dynamic_p50_ms=d50,
                            fixed_p50_ms=f50,
                            dynamic_p99_ms=percentile(dyn_times, 99) * 1e3,
                            fixed_p99_ms=percentile(fixed_times, 99) * 1e3,
                            extra_ms=d50 - f50,
                            extra_percent=100 * (d50 - f50) / f50,
                            measured_at=datetime.now(timezone.utc).replace(microsecond=0).isoformat(),
                        )
                    )
    return costs, []
