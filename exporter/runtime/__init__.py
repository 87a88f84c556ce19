"""Run a bundle on the device: ``Bundle.open(path).model(variant=... | budget_ms=...)``.

Imports numpy, Pillow, pydantic and the one backend used; never torch, timm or onnx.
"""

from __future__ import annotations

from exporter.parity.runner import Runner
from exporter.runtime.backends.base import BACKENDS, load_runner
from exporter.runtime.model import Bundle, Model, Prediction, open_bundle
from exporter.runtime.preprocess import Preprocess

__all__ = ["BACKENDS", "Bundle", "Model", "Prediction", "Preprocess", "Runner", "load_runner", "open_bundle"]
