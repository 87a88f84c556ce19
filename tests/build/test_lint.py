"""The TensorRT-compatibility lint on good and deliberately bad graphs."""

from __future__ import annotations

import onnx
from onnx import TensorProto, helper

from exporter.build.export import ExportOptions, export_onnx
from exporter.build.lint import OPS_FILE, lint_onnx, supported_ops
from exporter.build.variant import count_layernorms

from conftest import tiny_model


def graph(path, nodes, opset=17, input_dims=("batch", 3, 8, 8), initializers=()):
    model = helper.make_model(
        helper.make_graph(
            nodes,
            "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(input_dims))],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(input_dims))],
            list(initializers),
        ),
        opset_imports=[helper.make_opsetid("", opset)],
    )
    onnx.save(model, str(path))
    return path


def test_exported_vit_passes(tmp_path):
    model = tiny_model(img_size=32, patch_size=16)
    export_onnx(model, (32, 32), tmp_path / "m.onnx", ExportOptions())
    result = lint_onnx(tmp_path / "m.onnx", layernorms=count_layernorms(model))
    assert result and result.opset == 17 and "LayerNormalization" in result.ops and "MatMul" in result.ops


def test_decomposed_layernorm_at_opset_14_is_flagged(tmp_path):
    model = tiny_model(img_size=32, patch_size=16)
    export_onnx(model, (32, 32), tmp_path / "m.onnx", ExportOptions(opset=14))
    result = lint_onnx(tmp_path / "m.onnx", layernorms=count_layernorms(model))
    assert not result and any("no LayerNormalization node" in i for i in result.issues)


def test_bad_graphs(tmp_path):
    scale = helper.make_tensor("s", TensorProto.FLOAT, [3], [1, 1, 1])
    bias = helper.make_tensor("b", TensorProto.FLOAT, [3], [0, 0, 0])
    ln = helper.make_node("LayerNormalization", ["x", "s", "b"], ["y"], axis=1)
    good = lint_onnx(graph(tmp_path / "ok.onnx", [ln], initializers=[scale, bias]))
    assert good, good.issues
    cases = {
        "unsupported": ([helper.make_node("Unique", ["x"], ["y"]), ln], {}, "does not support: Unique"),
        "opset": ([ln], {"opset": 21}, "opset 21 is outside"),
        "dynamic": ([ln], {"input_dims": ("batch", 3, "h", 8)}, "dynamic dimensions other than the batch: [2]"),
        "custom": ([helper.make_node("Foo", ["x"], ["y"], domain="com.acme"), ln], {}, "com.acme::Foo"),
    }
    for name, (nodes, kwargs, message) in cases.items():
        result = lint_onnx(graph(tmp_path / f"{name}.onnx", nodes, initializers=[scale, bias], **kwargs))
        assert not result and any(message in i for i in result.issues), (name, result.issues)
    assert not lint_onnx(tmp_path / "ok.onnx", layernorms=3)


def test_op_list_is_data_with_its_source():
    assert {"LayerNormalization", "MatMul", "Softmax", "Erf", "Gelu", "Conv"} <= supported_ops()
    # Unique is marked unsupported in onnx-tensorrt's operators.md, NonZero supported (TensorRT >= 8.5)
    assert "Unique" not in supported_ops()
    assert "NonZero" in supported_ops()
    header = OPS_FILE.read_text().splitlines()[:3]
    assert any(line.startswith("# Source: onnx-tensorrt") for line in header), header
