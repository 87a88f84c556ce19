"""The build side's runners: PyTorch (the reference) and onnxruntime on the CPU.

PyTorch's backends register here in the one registry (``exporter.runtime.backends.base``), beside
the runtime's: ``torch`` (eager, CPU), ``torch-compile`` and ``torch-cuda``. The runtime never
imports this module, so the device side never imports torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from exporter.core.errors import Unavailable, UsageError
from exporter.parity.runner import Runner
from exporter.runtime.backends.base import Load, register
from exporter.runtime.backends.ort import OrtRunner


class TorchRunner(Runner):
    """A PyTorch model in float32, under ``inference_mode``, on ``device``; its ``path`` names the
    model's class (it runs no file)."""

    def __init__(self, model: Any, backend: str = "torch", device: str = "cpu") -> None:
        super().__init__(backend, Path(type(model).__name__))
        self.model, self.device = model, device

    def infer_impl(self, batch: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            if self.device == "cpu":
                return self.model(torch.from_numpy(batch)).float().numpy()  # type: ignore[no-any-return]
            out = self.model(torch.from_numpy(batch).to(self.device, non_blocking=True))
            torch.cuda.synchronize()
            return out.float().cpu().numpy()  # type: ignore[no-any-return]


def torch_runner(model: object) -> Runner:
    """PyTorch eager on the CPU in float32 (the reference)."""
    return TorchRunner(model)


def ort_runner(path: Path, threads: int | None = None) -> Runner:
    """onnxruntime on the CPU on an ONNX file, all graph optimisations on: the runtime's own
    runner (``exporter.runtime.backends.ort``), so a build checks what a device runs."""
    return OrtRunner(path, "ort-cpu", threads)


def built_model(load: Load) -> Any:
    if load.model is None:
        raise UsageError(f"backend {load.backend} runs a PyTorch model, and none was given")
    return load.model()


def eager(load: Load) -> Runner:
    return TorchRunner(built_model(load))


def compiled(load: Load) -> Runner:
    import torch

    try:
        model = torch.compile(built_model(load), dynamic=False)  # type: ignore[call-overload]
    except Exception as exc:  # any compile failure means "not available here"
        raise Unavailable(f"torch.compile failed: {exc}") from exc
    return TorchRunner(model, "torch-compile")


def on_cuda(load: Load) -> Runner:
    return TorchRunner(built_model(load).to("cuda"), "torch-cuda", "cuda")


def cuda_problem() -> str | None:
    import torch

    return None if torch.cuda.is_available() else "no CUDA GPU visible to PyTorch"


register("torch", eager)
register("torch-compile", compiled)
register("torch-cuda", on_cuda, cuda_problem)
