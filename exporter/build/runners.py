"""The build side's runners: PyTorch eager (the reference) and onnxruntime by execution provider."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from exporter.core.errors import UsageError
from exporter.parity.compare import Runner


def torch_runner(model: object) -> Runner:
    """PyTorch eager on the CPU in float32 (the reference)."""
    import torch

    def run(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(np.ascontiguousarray(batch))).float().numpy()  # type: ignore[operator]

    return run


def ort_runner(path: Path, threads: int | None = None, provider: str = "CPUExecutionProvider") -> Runner:
    """onnxruntime on an ONNX file (CPU provider unless told), all graph optimisations on: the
    runtime's runner (``exporter.runtime.backends``), so a build checks what a device runs."""
    from exporter.runtime.backends import ORT_PROVIDERS
    from exporter.runtime.backends import ort_runner as runtime_ort_runner

    backend = next((name for name, p in ORT_PROVIDERS.items() if p == provider), None)
    if backend is None:
        raise UsageError(f"no onnxruntime backend for provider {provider!r}")
    return runtime_ort_runner(path, backend, threads)
