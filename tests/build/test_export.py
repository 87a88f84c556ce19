"""ONNX export of a variant with both exporters; the graph is checked and I/O described."""

from __future__ import annotations

import numpy as np
import pytest

from exporter.build.export import ExportOptions, export_onnx
from exporter.build.runners import ort_runner, torch_runner
from exporter.core.errors import UsageError
from exporter.parity.compare import compare_outputs

from conftest import tiny_model


@pytest.mark.parametrize(("exporter", "opset"), [("torchscript", 17), ("dynamo", 18)])
def test_export_is_checked_and_matches_pytorch(tmp_path, exporter, opset):
    model = tiny_model(num_classes=5, img_size=64, patch_size=16)
    info = export_onnx(model, (64, 64), tmp_path / "m.onnx", ExportOptions(opset=opset, exporter=exporter))
    assert info.opset == opset and info.exporter == exporter and len(info.sha256) == 64
    assert [(i.name, i.dtype, i.shape) for i in info.inputs] == [("pixel_values", "float32", ("batch", 3, 64, 64))]
    assert [(o.name, o.shape) for o in info.outputs] == [("logits", ("batch", 5))]
    assert dict(info.op_counts)["LayerNormalization"] == 2 * 2 + 1  # LayerNorm stays one node
    x = np.random.default_rng(0).normal(size=(3, 3, 64, 64)).astype(np.float32)  # batch 3: dynamic axis works
    assert compare_outputs(torch_runner(model)(x), ort_runner(tmp_path / "m.onnx")(x))


def test_static_batch(tmp_path):
    model = tiny_model(num_classes=5, img_size=32, patch_size=16)
    info = export_onnx(model, (32, 32), tmp_path / "m.onnx", ExportOptions(batch=4))
    assert info.inputs[0].shape == (4, 3, 32, 32) and info.outputs[0].shape == (4, 5)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"opset": 13}, "between 14 and 20"),
        ({"batch": 0}, "'dynamic' or a positive integer"),
        ({"exporter": "tf2onnx"}, "torchscript, dynamo"),
    ],
)
def test_bad_options(kwargs, message):
    with pytest.raises(UsageError, match=message):
        ExportOptions(**kwargs)
