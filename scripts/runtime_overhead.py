"""What the runtime costs over a bare backend session, at batch 1.

    python scripts/runtime_overhead.py BUNDLE [--variant p16] [--backend ort-cpu] [--runs 300]

Times, interleaved in one process so that the machine's drift hits both alike: (a) a bare
onnxruntime ``InferenceSession.run`` (or OpenVINO infer request) on the variant's ONNX, and (b)
``exporter.runtime``'s ``model(pixel_values)`` on the same float32 input (bundle checks done once
at open; per call: batching and dtype checks). Prints p50/p90 of each and the p50 overhead.
The preprocessing of a decoded image (resize, crop, normalise) is timed apart: it is work any
deployment does, not overhead.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

from exporter.core.machine import available_cores
from exporter.runtime import Bundle


def bare_runner(path: Path, backend: str, threads: int):  # type: ignore[no-untyped-def]
    if backend.startswith("openvino"):
        import openvino as ov

        core = ov.Core()
        hint = "bf16" if backend == "openvino-bf16" else "f32"
        compiled = core.compile_model(
            str(path), "CPU", {"INFERENCE_PRECISION_HINT": hint, "INFERENCE_NUM_THREADS": threads}
        )
        request = compiled.create_infer_request()
        return lambda x: request.infer({0: x})
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})


def percentile(times: list[float], q: float) -> float:
    return float(np.percentile(times, q)) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--variant", default="p16")
    parser.add_argument("--backend", default="ort-cpu")
    parser.add_argument("--runs", type=int, default=300)
    args = parser.parse_args()
    threads = available_cores()
    bundle = Bundle.open(args.bundle)
    model = bundle.model(variant=args.variant, backend=args.backend, threads=threads)
    record = bundle.record(args.variant)
    bare = bare_runner(bundle.door.onnx(record), args.backend, threads)
    x = np.random.default_rng(0).standard_normal((1, 3, *record.img_size), dtype=np.float32)
    for _ in range(10):
        bare(x), model(x)
    times: dict[str, list[float]] = {"bare": [], "runtime": []}
    for _ in range(args.runs):
        for name, run in (("bare", bare), ("runtime", model)):
            start = time.perf_counter()
            run(x)
            times[name].append(time.perf_counter() - start)
    image = np.random.default_rng(1).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    pre = bundle.preprocess(args.variant)
    pre_times = []
    for _ in range(50):
        start = time.perf_counter()
        pre(image)
        pre_times.append(time.perf_counter() - start)
    print(f"{args.variant} on {args.backend}, batch 1, {threads} threads, {args.runs} interleaved runs")
    for name, t in times.items():
        print(f"  {name:8s} p50 {percentile(t, 50):8.3f} ms   p90 {percentile(t, 90):8.3f} ms")
    overhead = statistics.median(times["runtime"]) / statistics.median(times["bare"]) - 1
    print(f"  runtime overhead at p50: {overhead:+.1%}")
    print(f"  preprocessing a 640x480 uint8 image: p50 {percentile(pre_times, 50):.3f} ms (not counted above)")


if __name__ == "__main__":
    main()
