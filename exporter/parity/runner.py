"""One runner for every backend: a float32 NCHW batch in, float32 outputs out.

Polygraphy's ``BaseRunner`` (``infer`` checks the inputs once, then calls each backend's
``infer_impl``) with Ultralytics' one class per backend: onnxruntime and OpenVINO
(``exporter.runtime.backends``), TensorRT engines (``exporter.tensorrt.runner``) and PyTorch
(``exporter.build.runners``) are all a ``Runner``, so one parity check, one batching loop, bench,
validate, evaluate, predict and Triton's models run them alike. It lives in ``parity`` (the lowest
layer that runs models) so that every layer above may import it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from typing_extensions import TypedDict

from exporter.core.errors import UsageError


class RunnerDetails(TypedDict, total=False):
    """What a backend reports of the model it loaded."""

    providers: Sequence[str]  # onnxruntime's execution providers, in order
    shared_initializers: int  # onnxruntime: initializers shared with the bundle's other sessions
    inference_precision: str  # OpenVINO's
    shapes: list[list[int | None]]  # the file's own input and output dims (None: named or unknown)


class Runner(ABC):
    """A loaded model: ``runner(batch)`` → outputs. ``backend`` names what runs it, ``path`` the file
    it runs (for PyTorch, the model's class). It takes batches of ``min_batch`` to ``max_batch``
    (None: no upper limit; an engine's optimisation profile sets both); ``static_batch`` is the one
    batch a fixed-batch file takes (both limits equal), else None. ``details``: what the backend
    reports (providers, precision, the file's own input and output ``shapes``)."""

    def __init__(
        self,
        backend: str,
        path: Path,
        min_batch: int = 1,
        max_batch: int | None = None,
        details: RunnerDetails | None = None,
    ) -> None:
        self.backend = backend
        self.path = Path(path)
        self.min_batch = min_batch
        self.max_batch = max_batch
        self.details: RunnerDetails = details or {}

    @property
    def static_batch(self) -> int | None:
        return self.min_batch if self.min_batch == self.max_batch else None

    @property
    def batch_range(self) -> tuple[int, int | None]:
        """``(min_batch, max_batch)``; set both at once with it."""
        return self.min_batch, self.max_batch

    @batch_range.setter
    def batch_range(self, value: tuple[int, int | None]) -> None:
        self.min_batch, self.max_batch = value

    def batch_problem(self, n: int) -> str | None:
        """Why a batch of ``n`` is refused before the backend sees it, or None."""
        if self.static_batch is not None and n != self.static_batch:
            return f"{self.path.name} takes batches of exactly {self.static_batch}, got {n}"
        if self.max_batch is not None and n > self.max_batch:
            return f"{self.path.name} ({self.backend}) takes batches up to {self.max_batch}, got {n}"
        if n < self.min_batch:
            return f"{self.path.name} ({self.backend}) takes batches of at least {self.min_batch}, got {n}"
        return None

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """``batch`` checked against the limits (``UsageError``), made contiguous float32, run."""
        problem = self.batch_problem(len(batch))
        if problem:
            raise UsageError(problem)
        return np.asarray(self.infer_impl(np.ascontiguousarray(batch, dtype=np.float32)), dtype=np.float32)

    @abstractmethod
    def infer_impl(self, batch: np.ndarray) -> np.ndarray:
        """The backend's run of a checked, contiguous float32 batch."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.backend}, {self.path.name}, batch {self.min_batch}..{self.max_batch})"
