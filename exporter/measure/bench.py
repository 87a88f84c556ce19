"""``flexiexport bench``: latency and throughput per variant, per backend, per batch size.

Backends are runners from the one registry (``exporter.measure.backends.bench_runner``); one
that cannot run here is ``Unavailable`` with the reason, and the report lists it as skipped,
never silently.
The achievable ceiling is measured in the same run (``exporter.measure.ceiling``), for the
backends asked for.
"""

from __future__ import annotations

import platform
import resource
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from exporter import __version__
from exporter.bundle.door import Bundle
from exporter.bundle.limits import check_bundle_memory
from exporter.bundle.records import VariantRecord
from exporter.core.errors import Unavailable
from exporter.core.machine import available_cores, cpu_model
from exporter.core.names import printable
from exporter.measure.backends import ONNX_BACKENDS, bench_runner
from exporter.measure.ceiling import Ceiling, measure, measure_ceiling
from exporter.measure.options import BenchOptions, Skipped, bench_input, percentile
from exporter.measure.resample import ResampleCost, resample_costs
from exporter.parity.runner import Runner
from exporter.runtime.measurements import row_key, str_in
from exporter.tensorrt.select import tensorrt_here, tensorrt_runner

if TYPE_CHECKING:
    from exporter.runtime.artefacts import BenchFile, MachineInfo


@dataclass(frozen=True)
class Timing:
    backend: str
    variant: str
    patch_size: tuple[int, int]
    batch: int
    runs: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    images_per_s: float
    gflops_per_image: float
    achieved_gflops: float
    fraction_of_ceiling: float | None
    peak_rss_mb: float
    setup_seconds: float
    measured_at: str = ""  # UTC, ISO 8601: bench.json keeps rows of earlier runs (merge_reports)
    threads: int = 0
    img_size: tuple[int, int] = (0, 0)  # the variant's (a grid has several per patch size)


@dataclass(frozen=True)
class BenchReport:
    machine: MachineInfo
    threads: int
    ceiling: Ceiling
    timings: tuple[Timing, ...]
    skipped: tuple[Skipped, ...] = field(default=())
    resample: tuple[ResampleCost, ...] = field(default=())

    def record(self) -> BenchFile:
        """As bench.json has it, before any merge (``asdict``'s keys, in its order)."""
        return cast("BenchFile", asdict(self))


def peak_rss_mb() -> float:
    """The process's peak resident set so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def machine_info(threads: int) -> MachineInfo:
    import onnxruntime
    import torch

    cpu = cpu_model()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "cpu": cpu,
        "cores_available": available_cores(),
        "threads": threads,
        "gpu": gpu,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "ort_providers": onnxruntime.get_available_providers(),
        "flexiexport": __version__,
    }


def bench_variant(
    backend: str,
    runner: Runner,
    record: VariantRecord,
    img: tuple[int, int],
    batch: int,
    options: BenchOptions,
    ceiling: Ceiling,
) -> Timing:
    """Time one backend on one variant at one batch size."""
    times, setup = timed(runner, img, batch, options)
    p50 = percentile(times, 50)
    gflops = float(record.gflops)
    achieved = gflops * batch / p50
    roof = ceiling.for_backend(backend)
    return Timing(
        backend=backend,
        variant=record.label,
        patch_size=record.patch_size,
        batch=batch,
        runs=len(times),
        p50_ms=p50 * 1e3,
        p90_ms=percentile(times, 90) * 1e3,
        p99_ms=percentile(times, 99) * 1e3,
        images_per_s=batch / p50,
        gflops_per_image=gflops,
        achieved_gflops=achieved,
        fraction_of_ceiling=achieved / roof if roof else None,
        peak_rss_mb=peak_rss_mb(),
        setup_seconds=setup,
        measured_at=datetime.now(timezone.utc).replace(microsecond=0).isoformat(),
        threads=options.thread_count,
        img_size=img,
    )


def timed(runner: Runner, img: tuple[int, int], batch: int, options: BenchOptions) -> tuple[list[float], float]:
    """Seconds per call of ``runner`` on a seeded random batch, and the first call's seconds
    (compilation, allocation, autotuning), which are not among them."""
    x = bench_input(img, batch)
    start = time.perf_counter()
    runner(x)
    setup = time.perf_counter() - start
    return measure(lambda: runner(x), options), setup


MEASURED = ("timings", "resample")  # a machine's section holding rows of either is kept


def merge_reports(previous: Any, report: BenchReport) -> tuple[BenchFile, str]:
    """``bench.json`` after this run, and a line saying what was merged. Rows are keyed by
    (backend, variant, batch): this run's rows replace earlier ones with the same key, the
    others are kept (each says when it was measured), so a run with other options adds to the
    plot instead of erasing it. Another machine's (CPU or GPU) file is never dropped: it is kept
    whole under ``other_machines``, and comes back to the top when that machine benches again."""
    if not isinstance(previous, dict):
        return report.record(), ""
    here = (report.machine.get("cpu"), report.machine.get("gpu"))
    earlier = previous.get("other_machines")
    sections: list[dict[str, object]] = [{k: v for k, v in previous.items() if k != "other_machines"}]
    sections += [s for s in earlier if isinstance(s, dict)] if isinstance(earlier, list) else []

    def machine_of(section: dict[str, object]) -> tuple[object, object]:
        machine = section.get("machine")
        return (machine.get("cpu"), machine.get("gpu")) if isinstance(machine, dict) else (None, None)

    mine = next((s for s in sections if machine_of(s) == here), None)
    others = [s for s in sections if s is not mine and any(isinstance(s.get(k), list) and s[k] for k in MEASURED)]
    merged, note = _merge_same_machine(mine, report)
    if others:
        merged["other_machines"] = others
        kept = printable(", ".join(f"{m[0]}, GPU {m[1]}" for m in map(machine_of, others)))
        note = "; ".join(filter(None, [note, f"kept the rows of {len(others)} other machine(s) ({kept})"]))
    return merged, note


def _merge_same_machine(previous: dict[str, object] | None, report: BenchReport) -> tuple[BenchFile, str]:
    """``merge_reports`` for an earlier file of this same machine (None: there is none); its
    rows that this run does not replace are kept as they were read."""
    new = report.record()
    timings = previous.get("timings") if previous is not None else None
    if previous is None or not isinstance(timings, list):
        return new, ""

    fresh = {row_key(t) for t in new["timings"]}
    earlier = [t for t in timings if isinstance(t, dict)]
    kept = [t for t in earlier if row_key(t) not in fresh]
    ran = {t.backend for t in report.timings} | {s.backend for s in report.skipped}
    skipped = previous.get("skipped")
    old_skips: list[Any] = skipped if isinstance(skipped, list) else []
    new["timings"] = [*kept, *new["timings"]]
    still_skipped = [s for s in old_skips if isinstance(s, dict) and not str_in(s.get("backend"), ran)]
    new["skipped"] = [*new["skipped"], *still_skipped]
    costs = previous.get("resample")
    if isinstance(costs, list):  # same rule, keyed by size too
        fresh = {row_key(r, "img_size") for r in new["resample"]}
        kept_costs = [r for r in costs if isinstance(r, dict) and row_key(r, "img_size") not in fresh]
        new["resample"] = [*kept_costs, *new["resample"]]
    if not kept:
        return new, f"replaced all {len(earlier)} rows of the previous bench.json" if earlier else ""
    backends = printable(", ".join(sorted({str(t.get("backend")) for t in kept})))
    return new, (
        f"merged into bench.json: {len(report.timings)} rows measured now ({len(earlier) - len(kept)} replacing "
        f"earlier ones), {len(kept)} earlier rows kept ({backends})"
    )


def quiet_cuda_probe() -> None:
    """PyTorch warns "No CUDA runtime is found" when its extension helpers (which torch.compile
    imports) look for CUDA on a machine without a GPU: that is what ``torch-cuda``'s skip line
    says already, so the warning is dropped (only that one)."""
    import logging

    logger = logging.getLogger("torch.utils.cpp_extension")
    if not any(isinstance(f, _NoCudaRuntime) for f in logger.filters):
        logger.addFilter(_NoCudaRuntime())


class _NoCudaRuntime:
    def filter(self, record: Any) -> bool:
        return not str(record.msg).startswith("No CUDA runtime is found")


def bench_bundle(
    opened: Bundle, options: BenchOptions, progress: Callable[[str], None] | None = None, weights: Path | None = None
) -> BenchReport:
    """Benchmark every variant of the bundle on every requested backend and batch size."""
    import torch

    from exporter.build.recheck import bundle_source, record_spec
    from exporter.build.variant import make_variant
    from exporter.source.model import SourceModel

    say = progress or (lambda text: None)
    quiet_cuda_probe()
    threads = options.thread_count
    torch.set_num_threads(threads)
    manifest = opened.manifest
    check_bundle_memory(manifest, opened.root, "bench", max(options.batch_sizes), max(options.batch_sizes))
    sources: list[SourceModel] = []  # the checkpoint is read only for a PyTorch backend

    def source() -> SourceModel:
        if not sources:
            sources.append(bundle_source(manifest, weights))
        return sources[0]

    say(f"ceiling: MatMul 2048x2048 on {threads} thread{'s' if threads != 1 else ''}")
    int8 = any(r.reduced and r.reduced.precision == "int8" for r in manifest.variants)
    ceiling = measure_ceiling(threads, options, options.backends, int8)
    timings: list[Timing] = []
    skipped: list[Skipped] = []

    def run_batches(name: str, runner: Runner, record: VariantRecord) -> None:
        static = record.static_batch
        lo, hi = runner.batch_range  # an engine takes its profile's batches only
        for batch in options.batch_sizes:
            if static is not None and static != batch and not name.startswith("torch"):  # the ONNX/engine is fixed
                skipped.append(
                    Skipped(name, f"{record.label}: the ONNX has static batch {static}, batch {batch} skipped")
                )
                continue
            if batch < lo or (hi is not None and batch > hi):
                skipped.append(
                    Skipped(
                        name, f"{record.label}: batch {batch} is outside the engine's profile ({lo}..{hi}), skipped"
                    )
                )
                continue
            say(f"{name}: {record.label} batch {batch}")
            timings.append(bench_variant(name, runner, record, record_spec(record).img_size, batch, options, ceiling))

    ran: list[str] = []  # the ONNX backends that ran: the resample cost is measured on them
    for backend in options.backends:
        try:
            for record in manifest.variants:
                if backend == "tensorrt":
                    tensorrt_here()  # a missing TensorRT ends the backend: one line, not one per variant
                    try:
                        run_batches(backend, tensorrt_runner(opened, record), record)
                    except Unavailable as exc:  # this variant's engines; the next variant may have one
                        skipped.append(Skipped(backend, str(exc)))
                    continue
                spec = record_spec(record)
                model = lambda spec=spec: make_variant(source(), spec).model  # noqa: E731 - built only if used
                run_batches(backend, bench_runner(backend, opened.onnx(record), threads, model), record)
            if backend in ONNX_BACKENDS:
                ran.append(backend)
        except Unavailable as exc:
            skipped.append(Skipped(backend, str(exc)))
    resample, not_measured = resample_costs(opened, source, ran, options, say)
    skipped += not_measured
    if "ort-cpu" in options.backends:  # the bundle's fp16/int8 ONNX, on the same provider
        for record in manifest.variants:
            if record.reduced:
                precision = record.reduced.precision
                runner = bench_runner("ort-cpu", opened.onnx(record, precision), threads)
                run_batches(f"ort-cpu {precision}", runner, record)
    return BenchReport(machine_info(threads), threads, ceiling, tuple(timings), tuple(skipped), tuple(resample))
