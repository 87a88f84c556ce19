"""Reduced-precision ONNX variants, made with onnxruntime's own tools.

FP16: ``onnxruntime.transformers``' float16 converter (it handles the Cast and Identity nodes of
torch-exported graphs, where onnxconverter-common's copy produced graphs onnxruntime refused),
keeping LayerNormalization, Softmax, the position-embedding add and the logits in FP32 (the
known ViT FP16 overflow) and float32 inputs/outputs. INT8: ``onnxruntime.quantization``
static post-training quantisation in QDQ format, the explicit quantisation TensorRT's strongly
typed builder expects: symmetric int8 activations and weights (zero point 0), per-channel weight
scales, Q/DQ around MatMul, Gemm and Conv only (attention's activation matmuls only up to 512
tokens, as NVIDIA ModelOpt does), MinMax calibration on real images.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING

from exporter.errors import UsageError
from exporter.manifest import INPUT_NAME

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)


class Precision(str, Enum):
    """The precision of an ONNX file in a bundle: every variant has its fp32 file, and with
    ``--precision fp16|int8`` one reduced-precision file beside it. (A TensorRT profile's
    precision is wider: tf32, bf16 and fp8 are engine settings, not ONNX files.)"""

    FP32 = "fp32"
    FP16 = "fp16"
    INT8 = "int8"

    def __str__(self) -> str:  # "fp16" in file names, messages and JSON, on every Python
        return self.value

    @classmethod
    def parse(cls, value: object, what: str = "--precision") -> Precision:
        try:
            return cls(str(value))
        except ValueError:
            raise UsageError(f"{what} must be one of {', '.join(PRECISIONS)}, got {value!r}") from None

    @property
    def reduced(self) -> bool:
        """A file converted from the fp32 one (and judged with its own tolerance)."""
        return self is not Precision.FP32


PRECISIONS = tuple(p.value for p in Precision)
REDUCED_PRECISIONS = tuple(p.value for p in Precision if p.reduced)
FP32_OPS = ["LayerNormalization", "Softmax"]
QUANTIZED_OPS = ["MatMul", "Gemm", "Conv"]
INT8_ATTENTION_MAX_TOKENS = 512


def fp32_anchor_nodes(model: object) -> list[str]:
    """Nodes kept in FP32 besides ``FP32_OPS``: the position-embedding add and the logits producer."""
    graph = model.graph  # type: ignore[attr-defined]
    initializers = {i.name for i in graph.initializer}
    outputs = {o.name for o in graph.output}
    anchors = [n.name for n in graph.node if n.op_type == "Add" and any("pos_embed" in i for i in n.input)]
    anchors += [n.name for n in graph.node if outputs & set(n.output)]
    # The torch exporter may fold pos_embed into an anonymous initializer; fall back to the first
    # Add fed by an initializer whose shape is [1, tokens, dim].
    if not any("pos_embed" in i for i in initializers):
        shapes = {i.name: tuple(i.dims) for i in graph.initializer}
        anchors += [
            n.name
            for n in graph.node
            if n.op_type == "Add" and any(len(shapes.get(i, ())) == 3 and shapes[i][0] == 1 for i in n.input)
        ][:1]
    return anchors


def to_fp16(src: Path, dst: Path) -> list[str]:
    """Write an FP16 copy of ``src``; returns the nodes kept in FP32 by name."""
    import onnx
    from onnxruntime.transformers.onnx_model import OnnxModel

    model = onnx.load(str(src))
    anchors = fp32_anchor_nodes(model)
    wrapped = OnnxModel(model)
    wrapped.convert_float_to_float16(keep_io_types=True, op_block_list=FP32_OPS, node_block_list=anchors)
    wrapped.save_model_to_file(str(dst))
    return anchors


class _Calibration:
    """onnxruntime's CalibrationDataReader protocol over a float32 NCHW array."""

    def __init__(self, name: str, images: np.ndarray, batch: int) -> None:
        self._batches: Iterator[dict[str, np.ndarray]] = (
            {name: images[i : i + batch]} for i in range(0, len(images), batch)
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


def attention_matmuls(model: object) -> list[str]:
    """MatMuls of two activations, attention's Q·Kᵀ and P·V: neither input is a weight."""
    graph = model.graph  # type: ignore[attr-defined]
    weights = {i.name for i in graph.initializer}
    return [n.name for n in graph.node if n.op_type == "MatMul" and not weights & set(n.input)]


def int8_float_nodes(src: Path, tokens: int) -> list[str]:
    """Nodes kept float in INT8, by NVIDIA ModelOpt's rule for TensorRT: attention's two
    activation matmuls are quantised only up to 512 tokens (TensorRT's fused INT8 attention
    kernels stop there); above it they stay float, like ModelOpt's ``find_nodes_from_mha_to_exclude``."""
    import onnx

    if tokens <= INT8_ATTENTION_MAX_TOKENS:
        return []
    return attention_matmuls(onnx.load(str(src), load_external_data=False))


def to_int8(
    src: Path, dst: Path, calibration: np.ndarray, static_batch: int | None = None, exclude: Sequence[str] = ()
) -> None:
    """Write a QDQ INT8 copy of ``src`` calibrated on ``calibration`` images; the nodes named in
    ``exclude`` stay float."""
    if len(calibration) == 0:
        raise UsageError("int8 needs calibration images: pass --calib-dir DIR")
    batch = static_batch or 8
    if static_batch:
        usable = (len(calibration) // static_batch) * static_batch
        if usable == 0:
            raise UsageError(
                f"int8 calibration needs at least {static_batch} images for a static batch of {static_batch}"
            )
        calibration = calibration[:usable]
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.ERROR))  # onnxruntime's quantizer logs advice on the root logger
    try:
        _quantize(src, dst, calibration, batch, exclude)
    finally:
        root.setLevel(level)
    import onnx

    model = onnx.load(str(dst))
    qdq_inputs_only(model)
    onnx.save(model, str(dst))


def qdq_inputs_only(model: object) -> int:
    """Keep Q/DQ on the inputs of MatMul/Gemm/Conv only, as TensorRT's explicit quantisation wants:
    other readers of a quantised activation (Shape, Reshape) get the float tensor back, and Q/DQ
    pairs left with no quantised reader are removed. Returns how many readers were rewired."""
    graph = model.graph  # type: ignore[attr-defined]
    producers = {o: n for n in graph.node for o in n.output}
    rewired = 0
    for dq in [n for n in graph.node if n.op_type == "DequantizeLinear"]:
        q = producers.get(dq.input[0])
        if q is None or q.op_type != "QuantizeLinear":
            continue  # a weight: its DQ reads an int8 initializer
        for node in graph.node:
            if node.op_type not in QUANTIZED_OPS:
                for i, name in enumerate(node.input):
                    if name == dq.output[0]:
                        node.input[i] = q.input[0]
                        rewired += 1
    removed = []
    for op in ("DequantizeLinear", "QuantizeLinear"):
        used = {name for n in graph.node for name in n.input} | {o.name for o in graph.output}
        dead = [n for n in graph.node if n.op_type == op and n.output[0] not in used]
        for n in dead:
            graph.node.remove(n)
        removed += dead
    # Their scales and zero points, unless another node still reads them.
    used = {name for n in graph.node for name in n.input}
    orphans = {name for n in removed for name in n.input[1:]} - used
    for init in [i for i in graph.initializer if i.name in orphans]:
        graph.initializer.remove(init)
    return rewired


def _quantize(src: Path, dst: Path, calibration: np.ndarray, batch: int, exclude: Sequence[str]) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    quantize_static(
        str(src),
        str(dst),
        _Calibration(INPUT_NAME, calibration, batch),  # type: ignore[arg-type]
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=QUANTIZED_OPS,
        per_channel=True,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax,
        nodes_to_exclude=list(exclude),
        # Biases stay float: TensorRT fuses them itself and expects no int32 bias Q/DQ.
        # DedicatedQDQPair: only the quantised op reads the dequantised tensor; Shape/Reshape keep the float one.
        extra_options={
            "ActivationSymmetric": True,
            "WeightSymmetric": True,
            "QuantizeBias": False,
            "DedicatedQDQPair": True,
        },
    )
