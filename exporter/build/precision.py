"""Reduced-precision ONNX variants, made with onnxruntime's own tools.

FP16: ``onnxruntime.transformers``' float16 converter (it handles the Cast and Identity nodes of
torch-exported graphs, where onnxconverter-common's copy produced graphs onnxruntime refused),
keeping LayerNormalization, Softmax, the position-embedding add and the logits in FP32 (the
known ViT FP16 overflow) and float32 inputs/outputs. INT8: ``onnxruntime.quantization``
static post-training quantisation in QDQ format, the explicit quantisation TensorRT's strongly
typed builder expects: symmetric int8 activations and weights (zero point 0), per-channel weight
scales, Q/DQ around MatMul, Gemm and Conv only, MinMax calibration on real images. Two kinds of
matmul stay float (``int8_float_nodes``): attention's activation-by-activation matmuls and the
MLP's second linear (fc2, reading GELU's output). Then every other weight matmul is screened on
the calibration images (``input_errors``): one whose input per-tensor int8 cannot hold (relative
error above ``MAX_INPUT_ERROR`` at its MinMax scale, a range set by a few outlier channels) stays
float too. Measured on the trained DINOv2-S/14 (scripts/real_weights.py, README "Real weights"):
quantising everything gives cosine 0.87 against fp32; attention float 0.98; attention and fc2
float 0.983-0.997 at p14/p16/p28, depending on the images and on onnxruntime's int8 kernels;
with the screen (block 0's fc1 and attention proj: input errors 22-24 % and 14-15 %, every other
input ≤ 6 %) ≥ 0.998. Percentile calibration (99.99) is worse than MinMax (0.81): DINOv2's
massive activations carry the signal.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from exporter.bundle.manifest import INPUT_NAME
from exporter.core.errors import UsageError, param

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)


FP32_OPS = ["LayerNormalization", "Softmax"]
QUANTIZED_OPS = ["MatMul", "Gemm", "Conv"]
# How far back from a matmul's activation input GELU's Erf/Tanh is looked for (x·0.5·(1+erf)).
GELU_DEPTH = 4
GELU_OPS = {"Gelu", "FastGelu", "Erf", "Tanh"}
# A weight matmul whose activation input, quantised per tensor at its MinMax scale, is off by more
# than this (relative L2 error on the worst calibration image) stays float. DINOv2-S/14: block 0's
# fc1 input 0.22-0.24 (one LayerNorm channel ~45x the others' spread), block 0's proj 0.14-0.15,
# every other qkv/proj/fc1/patch input ≤ 0.06.
MAX_INPUT_ERROR = 0.10


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


def mlp_output_matmuls(model: object) -> list[str]:
    """Weight MatMuls/Gemms reading GELU's output (the MLP's fc2): the last few nodes before them
    (at most ``GELU_DEPTH``, never through another matmul or a LayerNorm) include Gelu or the
    Erf/Tanh of its decomposed form."""
    graph = model.graph  # type: ignore[attr-defined]
    weights = {i.name for i in graph.initializer}
    producers = {o: n for n in graph.node for o in n.output}
    stops = {"MatMul", "Gemm", "Conv", "LayerNormalization", "Softmax"}

    def after_gelu(tensor: str) -> bool:
        frontier = [tensor]
        for _ in range(GELU_DEPTH):
            nodes = [producers[t] for t in frontier if t in producers]
            if any(n.op_type in GELU_OPS for n in nodes):
                return True
            frontier = [i for n in nodes if n.op_type not in stops for i in n.input if i not in weights]
        return False

    return [
        n.name
        for n in graph.node
        if n.op_type in ("MatMul", "Gemm")
        and weights & set(n.input)
        and any(after_gelu(i) for i in n.input if i not in weights)
    ]


def int8_float_nodes(src: Path) -> list[str]:
    """Matmuls kept float in INT8: attention's two activation matmuls (TensorRT fuses attention
    in fp16 anyway, and NVIDIA ModelOpt leaves them out for many models) and the MLP's fc2, whose
    input after GELU is heavy-tailed (DINOv2's massive activations: per-tensor int8 cannot hold
    both the outliers and the rest). Their weights stay float too. Found by the graph alone;
    ``to_int8`` adds the matmuls its calibration screen finds (``input_errors``)."""
    import onnx

    model = onnx.load(str(src), load_external_data=False)
    return attention_matmuls(model) + mlp_output_matmuls(model)


def _activation_inputs(model: object, exclude: Sequence[str]) -> dict[str, str]:
    """Weight matmuls, Gemms and Convs that would be quantised, each with its activation input:
    the one input that is not an initializer."""
    graph = model.graph  # type: ignore[attr-defined]
    weights = {i.name for i in graph.initializer}
    found = {}
    for n in graph.node:
        if n.op_type in QUANTIZED_OPS and n.name not in exclude:
            operands = list(n.input[:2])
            activations = [i for i in operands if i not in weights]
            if len(operands) == 2 and len(activations) == 1:
                found[n.name] = activations[0]
    return found


def input_errors(src: Path, calibration: np.ndarray, batch: int, exclude: Sequence[str] = ()) -> dict[str, float]:
    """Per weight matmul, Gemm or Conv that would be quantised: the relative error
    ``‖x − q(x)‖ / ‖x‖`` of its activation input quantised per tensor at the scale MinMax
    calibration gives it (symmetric int8, ``max|x| / 127`` over ``calibration``), on the worst
    calibration image. Two fp32 passes over the images with those inputs as extra outputs: the
    first finds each scale, the second the errors."""
    import numpy as np
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(src))
    inputs = _activation_inputs(model, exclude)
    if not inputs:
        return {}
    tensors = sorted(set(inputs.values()))
    outputs = {o.name for o in model.graph.output}
    model.graph.output.extend(onnx.helper.make_empty_tensor_value_info(t) for t in tensors if t not in outputs)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    del model
    fetched = [t for t in tensors if t != INPUT_NAME]

    def batches() -> Iterator[dict[str, np.ndarray]]:
        for i in range(0, len(calibration), batch):
            x = calibration[i : i + batch]
            yield dict(zip(fetched, session.run(fetched, {INPUT_NAME: x}))) | {INPUT_NAME: x}

    amax = dict.fromkeys(tensors, 0.0)
    for values in batches():
        for t in tensors:
            amax[t] = max(amax[t], float(np.abs(values[t]).max()))
    worst = dict.fromkeys(tensors, 0.0)
    for values in batches():
        for t in tensors:
            x = values[t].reshape(len(values[t]), -1).astype(np.float64)
            scale = amax[t] / 127 or 1.0
            error = x - np.clip(np.round(x / scale), -127, 127) * scale
            ratio = np.sqrt((error**2).sum(1) / np.maximum((x**2).sum(1), 1e-30))
            worst[t] = max(worst[t], float(ratio.max()))
    return {node: worst[t] for node, t in inputs.items()}


def to_int8(
    src: Path,
    dst: Path,
    calibration: np.ndarray,
    static_batch: int | None = None,
    exclude: Sequence[str] = (),
    max_input_error: float | None = MAX_INPUT_ERROR,
) -> list[str]:
    """Write a QDQ INT8 copy of ``src`` calibrated on ``calibration`` images; the nodes named in
    ``exclude`` stay float, and so does every other weight matmul whose input error on the
    calibration images exceeds ``max_input_error`` (``None``: no screen). Returns the nodes kept
    float: ``exclude``, then the screened ones."""
    if len(calibration) == 0:
        raise UsageError(f"int8 needs calibration images: pass {param('calib_dir')} DIR")
    batch = static_batch or 8
    if static_batch:
        usable = (len(calibration) // static_batch) * static_batch
        if usable == 0:
            raise UsageError(
                f"int8 calibration needs at least {static_batch} images for a static batch of {static_batch}"
            )
        calibration = calibration[:usable]
    kept = list(exclude)
    if max_input_error is not None:
        errors = input_errors(src, calibration, batch, exclude)
        coarse = [node for node, error in errors.items() if error > max_input_error]
        for node in coarse:
            log.info("int8: %s stays float (input error %.3f > %.2f)", node, errors[node], max_input_error)
        kept += coarse
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.ERROR))  # onnxruntime's quantizer logs advice on the root logger
    try:
        _quantize(src, dst, calibration, batch, kept)
    finally:
        root.setLevel(level)
    import onnx

    model = onnx.load(str(dst))
    qdq_inputs_only(model)
    onnx.save(model, str(dst))
    return kept


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
