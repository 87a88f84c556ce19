"""The build side's runners: PyTorch eager (the reference) and onnxruntime on the CPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from exporter.parity.compare import Runner


def torch_runner(model: object) -> Runner:
    """PyTorch eager on the CPU in float32 (the reference)."""
    import torch

    def run(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(np.ascontiguousarray(batch))).float().numpy()  # type: ignore[operator]

    return run


def ort_runner(path: Path, threads: int | None = None) -> Runner:
    """onnxruntime on the CPU on an ONNX file, all graph optimisations on: the runtime's own
    runner (``exporter.runtime.backends``), so a build checks what a device runs."""
    from exporter.runtime.backends import ort_runner as runtime_ort_runner

    return runtime_ort_runner(path, "ort-cpu", threads)
