"""``flexiexport bench``: latency and throughput per variant, per backend, per batch size.

Backends are runners (batch → logits) built by small factories; one that cannot run here
raises ``Unavailable`` with the reason, and the report lists it as skipped, never silently.
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
from typing import Any

import numpy as np

from exporter import __version__
from exporter.build.runners import torch_runner
from exporter.bundle.door import Bundle
from exporter.bundle.limits import check_bundle_memory
from exporter.bundle.manifest import VariantRecord
from exporter.core.backends import BENCH_BACKENDS as BACKENDS
from exporter.core.errors import BundleError, EnvironmentMissing, Unavailable, UsageError
from exporter.core.machine import available_cores, cap_threads, cpu_model
from exporter.measure.ceiling import Ceiling, measure, measure_ceiling
from exporter.parity.compare import Runner
from exporter.runtime.backends import backend_problem, load_runner
from exporter.tensorrt.select import tensorrt_here, tensorrt_runner

MAX_RUNS, MAX_WARMUP, MAX_SECONDS = 100_000, 10_000, 3600.0  # per case: a limit, not a measurement


@dataclass(frozen=True)
class BenchOptions:
    batch_sizes: tuple[int, ...] = (1, 8)
    backends: tuple[str, ...] = BACKENDS
    threads: int | None = None
    warmup: int = 3
    min_runs: int = 10
    min_seconds: float = 1.0
    max_runs: int = 500

    def __post_init__(self) -> None:
        if not self.batch_sizes or any(b < 1 for b in self.batch_sizes):
            raise UsageError(f"--batch-sizes must be positive integers, got {list(self.batch_sizes)}")
        unknown = [b for b in self.backends if b not in BACKENDS]
        if unknown:
            raise UsageError(f"unknown backend {unknown[0]!r}; choose from {', '.join(BACKENDS)}")
        object.__setattr__(self, "threads", cap_threads(self.threads))
        if not 1 <= self.min_runs <= MAX_RUNS:
            raise UsageError(f"--runs must be 1 to {MAX_RUNS:,}, got {self.min_runs}")
        if not 0 <= self.warmup <= MAX_WARMUP:
            raise UsageError(f"--warmup must be 0 to {MAX_WARMUP:,}, got {self.warmup}")
        if not 0 <= self.min_seconds <= MAX_SECONDS:  # false for NaN too; inf would time one case forever
            raise UsageError(
                f"--min-seconds must be a number of seconds from 0 to {MAX_SECONDS:g}, got {self.min_seconds}"
            )

    @property
    def thread_count(self) -> int:
        return self.threads or available_cores()


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
class Skipped:
    backend: str
    reason: str


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


@dataclass(frozen=True)
class BenchReport:
    machine: dict[str, object]
    threads: int
    ceiling: Ceiling
    timings: tuple[Timing, ...]
    skipped: tuple[Skipped, ...] = field(default=())
    resample: tuple[ResampleCost, ...] = field(default=())


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def peak_rss_mb() -> float:
    """The process's peak resident set so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def machine_info(threads: int) -> dict[str, object]:
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


ModelFactory = Callable[[], object]  # builds the PyTorch variant only for backends that run it


def torch_backend(model: ModelFactory, onnx_path: Path, threads: int) -> Runner:

    return torch_runner(model())


def torch_compile_backend(model: ModelFactory, onnx_path: Path, threads: int) -> Runner:
    import torch

    try:
        compiled = torch.compile(model(), dynamic=False)  # type: ignore[call-overload]
    except Exception as exc:  # any compile failure means "not available here"
        raise Unavailable(f"torch.compile failed: {exc}") from exc
    return torch_runner(compiled)


def runtime_backend(name: str) -> Callable[[ModelFactory, Path, int], Runner]:
    """The runtime's runner for ``name`` (onnxruntime, OpenVINO, TensorRT): what ``predict`` runs."""

    def make(model: ModelFactory, path: Path, threads: int) -> Runner:

        problem = backend_problem(name)
        if problem:
            raise Unavailable(problem)
        try:
            return load_runner(path, name, threads)
        except EnvironmentMissing as exc:
            raise Unavailable(str(exc)) from exc

    return make


def torch_cuda_backend(model: ModelFactory, onnx_path: Path, threads: int) -> Runner:
    import torch

    if not torch.cuda.is_available():
        raise Unavailable("no CUDA GPU visible to PyTorch")
    gpu_model = model().to("cuda")  # type: ignore[attr-defined]

    def run(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            out = gpu_model(torch.from_numpy(batch).to("cuda", non_blocking=True))
            torch.cuda.synchronize()
            return out.float().cpu().numpy()

    return run


ONNX_BACKENDS = ("ort-cpu", "openvino", "openvino-bf16", "ort-cuda", "ort-tensorrt")  # the runtime's, on an ONNX


FACTORIES: dict[str, Callable[[ModelFactory, Path, int], Runner]] = {
    "torch": torch_backend,
    "torch-compile": torch_compile_backend,
    **{name: runtime_backend(name) for name in ONNX_BACKENDS},
    "torch-cuda": torch_cuda_backend,
}  # "tensorrt" runs the bundle's engines, not its ONNX: tensorrt_runner


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


def bench_input(img: tuple[int, int], batch: int) -> np.ndarray:
    """The seeded random batch every timing runs on."""
    return np.random.default_rng(0).standard_normal((batch, 3, *img), dtype=np.float32)


def timed(runner: Runner, img: tuple[int, int], batch: int, options: BenchOptions) -> tuple[list[float], float]:
    """Seconds per call of ``runner`` on a seeded random batch, and the first call's seconds
    (compilation, allocation, autotuning), which are not among them."""
    x = bench_input(img, batch)
    start = time.perf_counter()
    runner(x)
    setup = time.perf_counter() - start
    return measure(lambda: runner(x), options), setup


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
                opset=int(record.onnx["opset"]), batch=record.static_batch or "dynamic", exporter="torchscript"
            )
            fixed: dict[tuple[int, int], Path] = {}
            for size in dict.fromkeys((low, spec.img_size, high)):
                say(f"resample cost: exporting {record.label} fixed at {size[0]}x{size[1]}")
                fixed[size] = Path(tmp) / f"{record.label}_{size[0]}x{size[1]}.onnx"
                export_onnx(fixed_at(src, spec, size), size, fixed[size], export)
            for backend in backends:
                dynamic = FACTORIES[backend](lambda: None, opened.onnx(record), options.thread_count)
                for size, path in fixed.items():
                    say(f"resample cost: {backend} {record.label} at {size[0]}x{size[1]}, batch {batch}")
                    plain = FACTORIES[backend](lambda: None, path, options.thread_count)
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


MEASURED = ("timings", "resample")  # a machine's section holding rows of either is kept


def merge_reports(previous: Any, report: BenchReport) -> tuple[dict[str, Any], str]:
    """``bench.json`` after this run, and a line saying what was merged. Rows are keyed by
    (backend, variant, batch): this run's rows replace earlier ones with the same key, the
    others are kept (each says when it was measured), so a run with other options adds to the
    plot instead of erasing it. Another machine's (CPU or GPU) file is never dropped: it is kept
    whole under ``other_machines``, and comes back to the top when that machine benches again."""
    if not isinstance(previous, dict):
        return asdict(report), ""
    here = (report.machine.get("cpu"), report.machine.get("gpu"))
    earlier = previous.get("other_machines")
    sections = [{k: v for k, v in previous.items() if k != "other_machines"}]
    sections += [s for s in earlier if isinstance(s, dict)] if isinstance(earlier, list) else []

    def machine_of(section: dict[str, Any]) -> tuple[Any, Any]:
        machine = section.get("machine")
        return (machine.get("cpu"), machine.get("gpu")) if isinstance(machine, dict) else (None, None)

    mine = next((s for s in sections if machine_of(s) == here), None)
    others = [s for s in sections if s is not mine and any(isinstance(s.get(k), list) and s[k] for k in MEASURED)]
    merged, note = _merge_same_machine(mine, report)
    if others:
        merged["other_machines"] = others
        kept = ", ".join(f"{m[0]}, GPU {m[1]}" for m in map(machine_of, others))
        note = "; ".join(filter(None, [note, f"kept the rows of {len(others)} other machine(s) ({kept})"]))
    return merged, note


def _merge_same_machine(previous: dict[str, Any] | None, report: BenchReport) -> tuple[dict[str, Any], str]:
    """``merge_reports`` for an earlier file of this same machine (None: there is none)."""
    new = asdict(report)
    if previous is None or not isinstance(previous.get("timings"), list):
        return new, ""

    def key(t: dict[str, Any]) -> tuple[Any, ...]:
        return (t.get("backend"), t.get("variant"), t.get("batch"))

    fresh = {key(t) for t in new["timings"]}
    earlier = [t for t in previous["timings"] if isinstance(t, dict)]
    kept = [t for t in earlier if key(t) not in fresh]
    ran = {t.backend for t in report.timings} | {s.backend for s in report.skipped}
    old_skips: list[Any] = previous["skipped"] if isinstance(previous.get("skipped"), list) else []
    new["timings"] = kept + list(new["timings"])
    still_skipped = [s for s in old_skips if isinstance(s, dict) and s.get("backend") not in ran]
    new["skipped"] = list(new["skipped"]) + still_skipped
    if isinstance(previous.get("resample"), list):  # same rule, keyed by size too

        def sized(r: dict[str, Any]) -> tuple[Any, ...]:
            return key(r) + (tuple(r.get("img_size") or ()),)

        fresh = {sized(r) for r in new["resample"]}
        kept_costs = [r for r in previous["resample"] if isinstance(r, dict) and sized(r) not in fresh]
        new["resample"] = kept_costs + list(new["resample"])
    if not kept:
        return new, f"replaced all {len(earlier)} rows of the previous bench.json" if earlier else ""
    backends = ", ".join(sorted({str(t.get("backend")) for t in kept}))
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
    int8 = any(r.reduced and r.reduced["precision"] == "int8" for r in manifest.variants)
    ceiling = measure_ceiling(threads, options, options.backends, int8)
    timings: list[Timing] = []
    skipped: list[Skipped] = []

    def run_batches(name: str, runner: Runner, record: VariantRecord) -> None:
        static = record.static_batch
        lo, hi = getattr(runner, "batch_range", (1, None))  # an engine takes its profile's batches only
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
                run_batches(backend, FACTORIES[backend](model, opened.onnx(record), threads), record)
            if backend in ONNX_BACKENDS:
                ran.append(backend)
        except Unavailable as exc:
            skipped.append(Skipped(backend, str(exc)))
    resample, not_measured = resample_costs(opened, source, ran, options, say)
    skipped += not_measured
    if "ort-cpu" in options.backends:  # the bundle's fp16/int8 ONNX, on the same provider
        for record in (r for r in manifest.variants if r.reduced):
            runner = FACTORIES["ort-cpu"](lambda: None, opened.onnx(record, record.reduced["precision"]), threads)
            run_batches(f"ort-cpu {record.reduced['precision']}", runner, record)
    return BenchReport(machine_info(threads), threads, ceiling, tuple(timings), tuple(skipped), tuple(resample))
