"""INT8's calibration screen: a weight matmul whose input per-tensor int8 cannot hold stays float.

A tiny real flexivit_small given DINOv2-S/14's pattern (README "Real weights"): one token carries a
massive value in one residual channel, which block 0's LayerNorm before the MLP scales up (gain 60
on that channel, which is near zero in every other token). fc1's input range is then set by one
element of 7,000; at its MinMax scale the other tokens round to a few steps.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from conftest import TINY, random_photos, run_cli, save_with_config, tiny_model

FC1 = "/blocks/blocks.0/mlp/fc1/MatMul"


@pytest.fixture(scope="module")
def outlier_model(tmp_path_factory) -> Path:
    model = tiny_model(num_classes=10)
    channel, token = 3, 5
    with torch.no_grad():  # the channel is 0 in the residual stream, but for one token's position slot
        model.patch_embed.proj.weight[channel] = 0
        model.patch_embed.proj.bias[channel] = 0
        model.blocks[0].attn.proj.weight[channel] = 0
        model.blocks[0].attn.proj.bias[channel] = 0
        model.pos_embed[..., channel] = 0
        model.pos_embed[0, token, channel] = 50.0
        model.blocks[0].norm2.weight[channel] = 60.0
    path = tmp_path_factory.mktemp("outlier") / "outlier.pt"
    return save_with_config(model, path, "flexivit_small", **TINY, num_classes=10)


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    return random_photos(tmp_path_factory.mktemp("photos"), 10)


@pytest.fixture(scope="module")
def bundle(outlier_model, photos, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("screen") / "b"
    args = ("-p", "16", "--weights", str(outlier_model), "--precision", "int8")
    result = run_cli("build", *args, "--calib-dir", str(photos), "--parity-samples", "2", "--out", str(out), "-q")
    assert result.exit_code in (0, 3), result.output + result.stderr  # random weights: judged elsewhere
    return out


def quantised_nodes(path: Path) -> set[str]:
    model = onnx.load(str(path))
    producers = {o: n.op_type for n in model.graph.node for o in n.output}
    return {n.name for n in model.graph.node if any(producers.get(i) == "DequantizeLinear" for i in n.input)}


def test_the_screen_finds_the_outlier_input_and_only_it(bundle, photos):
    from exporter.build.precision import MAX_INPUT_ERROR, attention_matmuls, input_errors, int8_float_nodes
    from exporter.bundle.manifest import Preprocessing
    from exporter.runtime.images import load_images

    fp32 = bundle / "onnx" / "model_p16.onnx"
    images = load_images(photos, (240, 240), Preprocessing(), skip=2)
    errors = input_errors(fp32, images, 4, int8_float_nodes(fp32))
    assert errors[FC1] > MAX_INPUT_ERROR, errors
    others = {node: error for node, error in errors.items() if node != FC1}
    assert len(others) == 7  # the patch Conv, qkv and proj of both blocks, block 1's fc1, the head
    assert max(others.values()) < MAX_INPUT_ERROR, others
    assert not set(errors) & set(attention_matmuls(onnx.load(str(fp32))))  # already float: not screened


def test_the_build_keeps_it_float_and_records_it(bundle):
    from exporter.build.precision import int8_float_nodes

    reduced = json.loads((bundle / "manifest.json").read_text())["variants"][0]["reduced"]
    fp32 = bundle / "onnx" / "model_p16.onnx"
    assert reduced["fp32_nodes"] == [*int8_float_nodes(fp32), FC1]
    quantised = quantised_nodes(bundle / reduced["path"])
    assert FC1 not in quantised
    assert "/blocks/blocks.1/mlp/fc1/MatMul" in quantised and "/blocks/blocks.0/attn/qkv/MatMul" in quantised


def test_without_the_screen_the_outlier_input_costs_agreement(bundle, photos, tmp_path):
    """The mechanism: the same recipe with fc1 quantised is further from fp32 on held-out images."""
    import onnxruntime as ort

    from exporter.build.precision import int8_float_nodes, to_int8
    from exporter.bundle.manifest import Preprocessing
    from exporter.runtime.images import load_images

    fp32 = bundle / "onnx" / "model_p16.onnx"
    calibration = load_images(photos, (240, 240), Preprocessing(), skip=2)
    check = load_images(photos, (240, 240), Preprocessing(), limit=2)
    screened, unscreened = tmp_path / "screened.onnx", tmp_path / "unscreened.onnx"
    assert FC1 in to_int8(fp32, screened, calibration, exclude=int8_float_nodes(fp32))
    assert FC1 not in to_int8(fp32, unscreened, calibration, exclude=int8_float_nodes(fp32), max_input_error=None)
    assert FC1 in quantised_nodes(unscreened)

    def run(path: Path) -> np.ndarray:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run(None, {session.get_inputs()[0].name: check})[0]

    def worst_cosine(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.min((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)))

    reference = run(fp32)
    assert worst_cosine(run(screened), reference) > worst_cosine(run(unscreened), reference)
