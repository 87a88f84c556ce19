"""The models of a ``flexiexport triton --backend python`` repository, run by Triton's Python backend.

Each model folder holds ``1/model.py`` (three lines that import a class from here) and
``1/bundle/``, a copy of the bundle files serving needs, opened with ``exporter.runtime.Bundle``
(schema, paths and every file's sha256 checked when it is used):

- ``<bundle>_pN`` (``VariantModel``): one variant; float32 ``pixel_values`` in, ``logits`` out,
  run by the runtime's runner (``runtime_backend`` parameter: auto, ort-cpu, openvino, tensorrt, ...).
  The requests Triton's dynamic batcher hands over together are run as one batch.
- ``flexivit`` (``EntryModel``): takes uint8 RGB ``images`` ``[N, H, W, 3]`` (any size: resized
  and centre-cropped per chosen variant, the manifest's eval transform) or float32
  ``pixel_values`` ``[N, 3, H, W]`` at the chosen variant's size, and the request parameters
  ``budget_ms`` (the most accurate variant whose p99 measured on this device fits) or
  ``variant`` (``"p16"``). It forwards the batch to that variant's model (Triton BLS) and
  returns ``logits`` and ``variant`` (the label that answered, one string per image).

A bad request (shape, dtype, budget, parameter) gets an error response naming the problem; the
model instance keeps serving. Imports numpy and exporter.runtime; never torch.
"""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from typing_extensions import NotRequired, TypedDict

from exporter.core.errors import EnvironmentMissing, FlexiExportError, UsageError
from exporter.runtime.budget import Latency, load_latencies
from exporter.runtime.model import Bundle, run_in_batches

try:
    import triton_python_backend_utils as pb_utils
except ImportError:  # outside Triton's Python backend: importable (for documentation and tests), not runnable
    pb_utils = None

IMAGES = "images"
VARIANT = "variant"


class TritonArgs(TypedDict):
    """What the Python backend hands ``initialize``: strings, the model's config among them as JSON."""

    model_config: str
    model_instance_kind: str
    model_instance_device_id: str
    model_repository: str
    model_version: str
    model_name: str


class TensorConfig(TypedDict):
    """An ``input`` or ``output`` of the model's config (the keys read here)."""

    name: str


class ConfigParameter(TypedDict):
    string_value: str


class ModelConfig(TypedDict):
    """The model's ``config.pbtxt`` as Triton hands it over (JSON): the keys read here."""

    input: list[TensorConfig]
    output: list[TensorConfig]
    parameters: NotRequired[dict[str, ConfigParameter]]


# A request's parameter values: Triton takes booleans, integers, numbers and strings.
RequestValue = bool | int | float | str


def _parameters(config: ModelConfig) -> dict[str, str]:
    return {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}


def _open(args: TritonArgs) -> tuple[Bundle, ModelConfig, dict[str, str]]:
    """The model's bundle copy (``<model>/<version>/bundle``), its config and string parameters."""
    check_numpy_bridge()
    config: ModelConfig = json.loads(args["model_config"])
    folder = Path(args["model_repository"]) / args["model_version"] / "bundle"
    return Bundle.open(folder), config, _parameters(config)


def check_numpy_bridge() -> None:
    """Refuse to load where the Python backend's stub misreads numpy arrays.

    Triton 2.51's stub (nvidia-pytriton 0.7) was built for numpy 1.x: with numpy 2 every tensor
    it hands to Python reads as its first element repeated, and outputs fail their size check.
    A tensor made from memory the stub owns shows it; fail loudly rather than answer wrongly.
    """
    probe = np.arange(6, dtype=np.float32).reshape(2, 3)
    seen = pb_utils.Tensor.from_dlpack("probe", pb_utils.Tensor("probe", probe)).as_numpy()
    if not np.array_equal(seen, probe):
        raise EnvironmentMissing(
            f"this Triton Python backend misreads numpy {np.__version__} arrays (its stub was built for "
            "numpy 1.x): install numpy<2 in the server's environment (nvidia-pytriton pins it)"
        )


def error_response(exc: BaseException) -> Any:
    """An error response: a bad request names its problem; anything else says what it was."""
    text = str(exc) if isinstance(exc, FlexiExportError) else f"{type(exc).__name__}: {exc}"
    code = getattr(pb_utils.TritonError, "INVALID_ARG", None) if isinstance(exc, UsageError) else None
    error = pb_utils.TritonError(text) if code is None else pb_utils.TritonError(text, code)
    return pb_utils.InferenceResponse(output_tensors=[], error=error)


class VariantModel:
    """One variant: ``pixel_values`` → ``logits`` through the runtime's runner."""

    def initialize(self, args: TritonArgs) -> None:
        bundle, config, params = _open(args)
        precision = params.get("precision", "fp32")
        threads = int(params["threads"]) if params.get("threads") else None
        backend = bundle.resolve_backend(params.get("runtime_backend", "auto"), precision)
        self.label = params["variant"]
        self.runner = bundle.runner(self.label, backend, precision, threads)
        self.input_name = config["input"][0]["name"]
        self.output_name = config["output"][0]["name"]
        pb_utils.Logger.log_info(f"{args['model_name']}: {self.label} on {backend} ({precision})")

    def execute(self, requests: list[Any]) -> list[Any]:
        """The requests of one dynamic batch run as one batch (Triton checked shapes and dtypes)."""
        try:
            batches = [pb_utils.get_input_tensor_by_name(r, self.input_name).as_numpy() for r in requests]
            logits = run_in_batches(self.runner, np.concatenate(batches))
        except Exception as exc:  # every request of the batch hears why; the instance keeps serving
            return [error_response(exc) for _ in requests]
        ends = np.cumsum([len(b) for b in batches])
        return [
            pb_utils.InferenceResponse([pb_utils.Tensor(self.output_name, np.ascontiguousarray(part))])
            for part in np.split(logits, ends[:-1])
        ]


class EntryModel:
    """Images (or pixel values) and a latency budget in; the chosen variant's logits out."""

    def initialize(self, args: TritonArgs) -> None:
        self.setup(*_open(args))
        shown = ", ".join(f"{k} p99 {v.p99_ms:.3g} ms" for k, v in self.latencies[1].items())
        pb_utils.Logger.log_info(f"{args['model_name']}: variants on {self.backend} at batch 1: {shown}")

    def setup(self, bundle: Bundle, config: ModelConfig, params: dict[str, str]) -> None:
        """What ``initialize`` does with the opened copy, its config and parameters (no Triton
        call in it: a test runs it on a repository's copy)."""
        self.bundle = bundle
        self.models: dict[str, str] = json.loads(params["variants"])
        self.precision = params.get("precision", "fp32")
        self.backend = self.bundle.resolve_backend(params.get("runtime_backend", "auto"), self.precision)
        self.pixels_name = next(i["name"] for i in config["input"] if i["name"] != IMAGES)
        self.logits_name = next(o["name"] for o in config["output"] if o["name"] != VARIANT)
        self.preprocess = {label: self.bundle.preprocess(label) for label in self.models}
        # Latencies at batch 1, measured on this device: bench.json/latency.json rows, else a short
        # probe now (recorded in the copy's latency.json). Other batch sizes use their own rows when
        # the bundle has them.
        self.latencies: dict[int, dict[str, Latency]] = {1: self.bundle.latencies(self.backend, self.precision, 1)}

    async def execute(self, requests: list[Any]) -> list[Any]:
        """Every request of a batch is forwarded at once, so the variants' dynamic batchers see them together."""
        return list(await asyncio.gather(*(self.answer(r) for r in requests)))

    async def answer(self, request: Any) -> Any:
        try:
            images = pb_utils.get_input_tensor_by_name(request, IMAGES)
            pixels = pb_utils.get_input_tensor_by_name(request, self.pixels_name)
            if (images is None) == (pixels is None):
                raise UsageError(f"send either '{IMAGES}' (uint8 [N, H, W, 3]) or '{self.pixels_name}' (float32 NCHW)")
            given = (images if images is not None else pixels).as_numpy()
            label = self.choose(json.loads(request.parameters() or "{}"), len(given))
            batch = self.inputs(label, given, images is not None)
            logits = await self.forward(label, batch)
            names = np.array([[label.encode()]] * len(logits), dtype=np.object_)
            return pb_utils.InferenceResponse(
                [pb_utils.Tensor(self.logits_name, logits), pb_utils.Tensor(VARIANT, names)]
            )
        except Exception as exc:
            return error_response(exc)

    def choose(self, parameters: dict[str, RequestValue], batch: int) -> str:
        """``variant`` as asked, or the most accurate one within ``budget_ms``, else the most
        accurate: ``Bundle.choose``, as ``flexiexport predict`` chooses (the copy holds eval.json)."""
        variant, budget = parameters.get("variant"), parameters.get("budget_ms")
        if variant is not None and budget is not None:
            raise UsageError("give either the 'variant' or the 'budget_ms' parameter, not both")
        if variant is not None:
            label = self.bundle.variant_named(str(variant))
            if label not in self.models:
                raise UsageError(f"no variant {label!r} here; there are {', '.join(self.models)}")
            return label
        if budget is None:
            return self.bundle.choose(self.backend, self.precision)
        return self.bundle.choose(self.backend, self.precision, None, budget_value(budget), self.latencies_at(batch))

    def latencies_at(self, batch: int) -> dict[str, Latency]:
        if batch not in self.latencies:
            found = load_latencies(self.bundle.door, self.backend, self.precision, batch)
            self.latencies[batch] = found if set(found) >= set(self.models) else self.latencies[1]
        return self.latencies[batch]

    def inputs(self, label: str, given: np.ndarray, images: bool) -> np.ndarray:
        """``label``'s pixel_values: uint8 images preprocessed for its size, float32 ones checked."""
        preprocess = self.preprocess[label]
        if images:
            if given.ndim != 4 or given.shape[-1] != 3 or min(given.shape[1:3]) < 1:
                raise UsageError(f"'{IMAGES}' must be uint8 RGB [N, H, W, 3], got {list(given.shape)}")
            return preprocess(given)
        h, w = preprocess.img_size
        if given.shape[1:] != (3, h, w):
            raise UsageError(
                f"{label} takes '{self.pixels_name}' of [N, 3, {h}, {w}], got {list(given.shape)}; "
                f"send uint8 '{IMAGES}' to have them resized for whichever variant answers"
            )
        return np.ascontiguousarray(given, dtype=np.float32)

    async def forward(self, label: str, batch: np.ndarray) -> np.ndarray:
        record = self.bundle.record(label)
        inp, out = record.onnx.inputs[0].name, record.onnx.outputs[0].name
        request = pb_utils.InferenceRequest(
            model_name=self.models[label], requested_output_names=[out], inputs=[pb_utils.Tensor(inp, batch)]
        )
        response = await request.async_exec()
        if response.has_error():
            raise RuntimeError(f"{self.models[label]}: {response.error().message()}")
        return np.ascontiguousarray(pb_utils.get_output_tensor_by_name(response, out).as_numpy())


def budget_value(value: RequestValue) -> float:
    """A request's ``budget_ms``: a positive number (or a string of one)."""
    try:
        budget = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError, OverflowError):  # OverflowError: an integer too large for a float
        budget = math.nan
    if not math.isfinite(budget) or budget <= 0:
        raise UsageError(f"the 'budget_ms' parameter must be a positive number of milliseconds, got {value!r}")
    return budget
