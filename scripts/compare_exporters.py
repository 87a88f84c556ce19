"""Measure the two torch.onnx exporters on flexivit_small p16 (the README's "Export choices").

    python scripts/compare_exporters.py [--model flexivit_small] [--threads 2] [--runs 30]

For each exporter: export wall time, node count, LayerNormalization nodes, onnxruntime CPU
latency (batch 1, median of --runs after warm-up) and parity with PyTorch.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import timm
import torch

from exporter.build.export import ExportOptions, export_onnx
from exporter.build.runners import torch_runner
from exporter.parity.compare import compare_outputs


def ort_latency_ms(path: Path, x: np.ndarray, threads: int, runs: int) -> float:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    for _ in range(5):
        session.run(None, {"pixel_values": x})
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, {"pixel_values": x})
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="flexivit_small")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = timm.create_model(args.model, pretrained=False).eval()
    size = model.patch_embed.img_size
    x = np.random.default_rng(0).normal(size=(1, 3, *size)).astype(np.float32)
    reference = torch_runner(model)(x)
    print(f"{args.model} at {size}, torch {torch.__version__}, onnxruntime {ort.__version__}, {args.threads} threads")
    with tempfile.TemporaryDirectory() as tmp:
        for exporter, opset in (("torchscript", 17), ("dynamo", 18)):
            path = Path(tmp) / f"{exporter}.onnx"
            info = export_onnx(model, size, path, ExportOptions(opset=opset, exporter=exporter))
            latency = ort_latency_ms(path, x, args.threads, args.runs)
            session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            parity = compare_outputs(reference, session.run(None, {"pixel_values": x})[0])
            print(
                f"{exporter:>12} opset {opset}: export {info.seconds:5.2f} s, {info.num_nodes} nodes, "
                f"{dict(info.op_counts).get('LayerNormalization', 0)} LayerNormalization, "
                f"ORT {latency:6.1f} ms/image, parity max|Δ| {parity.max_abs:.1e} {'ok' if parity else 'FAIL'}"
            )


if __name__ == "__main__":
    main()
