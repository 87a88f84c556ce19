"""TensorRT-compatibility lint for an exported ONNX graph, runnable without TensorRT.

Checks: opset within the TensorRT ONNX parser's range, every operator in the parser's supported
list (``data/trt10_onnx_ops.txt``, with its source version), no dynamic dimension but the batch
(and height and width for ``--img-size dynamic``), Resize nodes TensorRT can import (onnx-tensorrt
10.1, 96e7811: importResize's modes and coordinate transformations; its checker refuses antialias),
and LayerNormalization kept as one node (opset >= 17), not decomposed into ReduceMean/Pow/Sqrt.

The fallback: where TensorRT's own parser and builder ran (``exporter.tensorrt.preflight``, with
TensorRT-RTX), their verdict stands; this lint keeps what that parser cannot know (TensorRT 10.3's
op list and opset range on JetPack 6, LayerNorm not decomposed, our dynamic-dims policy). Each
finding starts with the check that made it (``[lint: op list] ...``).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

OPS_FILE = Path(__file__).resolve().parents[1] / "data" / "trt10_onnx_ops.txt"
TRT10_OPSETS = (9, 20)


def finding(check: str, text: str) -> str:
    """A finding that names the check that made it."""
    return f"[lint: {check}] {text}"


@lru_cache(maxsize=1)
def supported_ops() -> frozenset[str]:
    lines = OPS_FILE.read_text().splitlines()
    return frozenset(line.strip() for line in lines if line.strip() and not line.startswith("#"))


@dataclass(frozen=True)
class LintResult:
    """Truthy when the graph passed every check; ``issues`` says what did not."""

    opset: int
    ops: tuple[str, ...]
    issues: tuple[str, ...]

    def __bool__(self) -> bool:
        return not self.issues

    def to_dict(self) -> dict[str, object]:
        return {"passed": bool(self), "opset": self.opset, "issues": list(self.issues), "source": OPS_FILE.name}


# What TensorRT's ONNX parser takes of Resize (onnx-tensorrt's importResize, TensorRT 10): modes
# nearest/linear/cubic, these coordinate transformations, and no antialias (opset 18's attribute).
RESIZE_MODES = ("nearest", "linear", "cubic")
RESIZE_COORDINATES = ("half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric", "tf_half_pixel_for_nn")


def resize_issues(model) -> list[str]:  # type: ignore[no-untyped-def]
    """What TensorRT would refuse of the graph's Resize nodes (a dynamic-resolution graph's
    position-grid resample)."""
    from onnx import helper

    issues = []
    for node in model.graph.node:
        if node.op_type != "Resize":
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        mode = attrs.get("mode", b"nearest").decode()
        coords = attrs.get("coordinate_transformation_mode", b"half_pixel").decode()
        if mode not in RESIZE_MODES:
            issues.append(
                finding("resize", f"Resize {node.name!r}: mode {mode!r} (TensorRT takes {', '.join(RESIZE_MODES)})")
            )
        if coords not in RESIZE_COORDINATES:
            issues.append(
                finding(
                    "resize",
                    f"Resize {node.name!r}: coordinate_transformation_mode {coords!r} is not one TensorRT takes",
                )
            )
        if attrs.get("antialias", 0):
            issues.append(
                finding("resize", f"Resize {node.name!r}: antialias, which TensorRT's parser does not implement")
            )
    return issues


def lint_onnx(
    path: Path, opsets: tuple[int, int] = TRT10_OPSETS, layernorms: int | None = None, dynamic_hw: bool = False
) -> LintResult:
    """Lint ``path``; ``layernorms`` is how many LayerNormalization nodes the model should have;
    ``dynamic_hw``: the input's height and width may be dynamic (``--img-size dynamic``)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    issues = []
    if not opsets[0] <= opset <= opsets[1]:
        issues.append(
            finding("opset range", f"opset {opset} is outside the TensorRT parser's range {opsets[0]}-{opsets[1]}")
        )
    ops = sorted({n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}::{n.op_type}" for n in model.graph.node})
    unsupported = [op for op in ops if op not in supported_ops()]
    if unsupported:
        issues.append(
            finding("op list", f"operators the TensorRT 10 parser does not support: {', '.join(unsupported)}")
        )
    allowed = {0, 2, 3} if dynamic_hw else {0}
    for value in list(model.graph.input) + list(model.graph.output):
        dims = value.type.tensor_type.shape.dim
        dynamic = [i for i, d in enumerate(dims) if i not in allowed and not d.dim_value]
        if dynamic:
            what = "the batch, height and width" if dynamic_hw else "the batch"
            issues.append(finding("dynamic dims", f"{value.name} has dynamic dimensions other than {what}: {dynamic}"))
    issues += resize_issues(model)
    count = sum(1 for n in model.graph.node if n.op_type == "LayerNormalization")
    if count == 0:
        issues.append(
            finding("layernorm", "no LayerNormalization node: LayerNorm was decomposed (export with opset >= 17)")
        )
    elif layernorms is not None and count != layernorms:
        issues.append(
            finding(
                "layernorm",
                f"{count} LayerNormalization nodes, expected {layernorms} (some LayerNorms were decomposed)",
            )
        )
    return LintResult(opset, tuple(ops), tuple(issues))
