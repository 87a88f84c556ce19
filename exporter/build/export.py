"""ONNX export of one variant, followed by ``onnx.checker`` and strict shape inference.

Exporter choice: the TorchScript exporter (``dynamo=False``) at opset 17 by default. Measured
on flexivit_small p16 with torch 2.14.1 it exports in a fraction of the dynamo exporter's time,
its graph keeps LayerNormalization as one node, and onnxruntime runs both graphs equally fast
(see README, "Export choices"). ``exporter="dynamo"`` is available (needs ``onnxscript``).
"""

from __future__ import annotations

import contextlib
import io
import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Union

import torch

from exporter.bundle.manifest import INPUT_NAME, OUTPUT_NAME
from exporter.bundle.records import TensorSpec
from exporter.core.errors import EnvironmentMissing, UsageError, param
from exporter.core.files import full_disk_as_usage_error, sha256_file
from exporter.core.sizes import Size2

log = logging.getLogger(__name__)

MIN_OPSET, MAX_OPSET = 14, 20  # LayerNormalization needs 17 to stay one node; TRT 10 parses <= 20
EXPORTERS = ("torchscript", "dynamo")
Dim = Union[int, str]


@dataclass(frozen=True)
class ExportOptions:
    opset: int = 17
    batch: Union[int, Literal["dynamic"]] = "dynamic"
    exporter: str = "torchscript"

    def __post_init__(self) -> None:
        if not MIN_OPSET <= self.opset <= MAX_OPSET:
            raise UsageError(f"{param('opset')} must be between {MIN_OPSET} and {MAX_OPSET}, got {self.opset}")
        if self.batch != "dynamic" and (not isinstance(self.batch, int) or self.batch <= 0):
            raise UsageError(f"{param('batch')} must be 'dynamic' or a positive integer, got {self.batch!r}")
        if self.exporter not in EXPORTERS:
            raise UsageError(f"{param('exporter')} must be one of {', '.join(EXPORTERS)}, got {self.exporter!r}")

    @property
    def trace_batch(self) -> int:
        return 2 if self.batch == "dynamic" else int(self.batch)


@dataclass(frozen=True)
class ExportInfo:
    path: Path
    sha256: str
    opset: int
    exporter: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    num_nodes: int
    op_counts: tuple[tuple[str, int], ...]
    seconds: float
    size_bytes: int


def export_onnx(
    model: torch.nn.Module,
    img_size: Size2,
    path: Path,
    options: ExportOptions,
    dynamic_hw: bool = False,
    output: str = OUTPUT_NAME,
) -> ExportInfo:
    """Export ``model`` to ``path`` (float32 NCHW ``pixel_values`` → ``output``: ``logits``, or
    ``embeddings`` for a feature model) and check it.
    ``dynamic_hw``: the input's height and width are named (``height``, ``width``) axes too."""
    start = time.perf_counter()
    example = torch.zeros(options.trace_batch, 3, *img_size)
    if dynamic_hw and options.exporter == "dynamo":
        raise UsageError(f"{param('img_range')} dynamic:MIN-MAX exports with {param('exporter')} torchscript only")
    with full_disk_as_usage_error(path), warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        if options.exporter == "dynamo":
            _export_dynamo(model, example, path, options, output)
        else:
            axes: dict[int, str] = {0: "batch"} if options.batch == "dynamic" else {}
            if dynamic_hw:
                axes |= {2: "height", 3: "width"}
            dynamic = ({INPUT_NAME: axes} | ({output: {0: "batch"}} if 0 in axes else {})) if axes else None
            torch.onnx.export(
                model,
                (example,),
                str(path),
                dynamo=False,
                opset_version=options.opset,
                input_names=[INPUT_NAME],
                output_names=[output],
                dynamic_axes=dynamic,
                do_constant_folding=True,
            )
        declare_proven_dims(path)  # both exporters: the dynamo one's outputs checked the same way
    seconds = time.perf_counter() - start
    return check_onnx(path, options.exporter, seconds)


def _export_dynamo(
    model: torch.nn.Module, example: torch.Tensor, path: Path, options: ExportOptions, output: str
) -> None:
    try:
        import onnxscript  # noqa: F401
    except ImportError as exc:
        raise EnvironmentMissing(
            f"{param('exporter')} dynamo needs the onnxscript package: pip install onnxscript"
        ) from exc
    shapes = ({0: torch.export.Dim("batch", min=1, max=4096)},) if options.batch == "dynamic" else None
    with contextlib.redirect_stdout(io.StringIO()):  # the dynamo exporter prints its own progress lines
        program = torch.onnx.export(
            model,
            (example,),
            dynamo=True,
            opset_version=options.opset,
            input_names=[INPUT_NAME],
            output_names=[output],
            dynamic_shapes=shapes,
            optimize=True,
        )
    program.save(str(path))  # type: ignore[union-attr]


def declare_proven_dims(path: Path) -> bool:
    """Declare the graph outputs' dims that ONNX shape inference proves static; True if any changed.

    With a dynamic batch, TorchScript's exporter loses every dim after timm's ``PatchEmbed``
    flattens the patch grid (``flatten(2)`` becomes Shape → Slice → Concat → Reshape, which its
    own shape inference does not follow) and names what it lost (``Gatherembeddings_dim_1``). A
    classifier's head (a MatMul with a weight) makes the class count static again; a feature
    model's embedding dim reaches the output still named, so TensorRT's lint saw a dynamic dim
    that is not. ONNX's inference with data propagation follows the Reshape and proves it."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    named = [d.dim_param for o in model.graph.output for d in o.type.tensor_type.shape.dim if not d.dim_value]
    if set(named) <= {"batch", "height", "width"}:
        return False  # a classifier's outputs: nothing lost, no second inference over the weights
    proven = onnx.shape_inference.infer_shapes(model, strict_mode=True, data_prop=True).graph.output
    changed = False
    for declared, inferred in zip(model.graph.output, proven):
        for dim, known in zip(declared.type.tensor_type.shape.dim, inferred.type.tensor_type.shape.dim):
            if not dim.dim_value and known.dim_value:
                dim.dim_value = known.dim_value  # a oneof: setting the value clears the name
                changed = True
    if changed:
        onnx.save(model, str(path))
    return changed


def _dims(value_info) -> tuple[Dim, ...]:  # type: ignore[no-untyped-def]
    return tuple(d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim)


def _dtype(value_info) -> str:  # type: ignore[no-untyped-def]
    from onnx import helper

    return str(helper.tensor_dtype_to_np_dtype(value_info.type.tensor_type.elem_type).name)


def check_onnx(path: Path, exporter: str, seconds: float) -> ExportInfo:
    """Run ``onnx.checker`` and strict shape inference on ``path``; describe its I/O."""
    import onnx
    from onnx import helper

    onnx.checker.check_model(str(path), full_check=True)
    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)), strict_mode=True, data_prop=True)
    graph = model.graph
    ops: dict[str, int] = {}
    for node in graph.node:
        ops[node.op_type] = ops.get(node.op_type, 0) + 1
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    inputs = tuple(
        TensorSpec(
            name=i.name, dtype=helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type).name, shape=_dims(i)
        )
        for i in graph.input
    )
    outputs = tuple(
        TensorSpec(
            name=o.name, dtype=helper.tensor_dtype_to_np_dtype(o.type.tensor_type.elem_type).name, shape=_dims(o)
        )
        for o in graph.output
    )
    return ExportInfo(
        path=path,
        sha256=sha256_file(path),
        opset=opset,
        exporter=exporter,
        inputs=inputs,
        outputs=outputs,
        num_nodes=len(graph.node),
        op_counts=tuple(sorted(ops.items())),
        seconds=seconds,
        size_bytes=path.stat().st_size,
    )
