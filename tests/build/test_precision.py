"""FP16 and INT8 ONNX variants of the demo, checked on the CPU with onnxruntime."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from conftest import FP16_L4, INT8, QUICK_BENCH, built, copy_into, one_line_error, random_photos, run_cli


def build(out: Path, *args: str) -> dict:
    result = run_cli("build", "-p", "8", "16", "32", "--out", str(out), "--quiet", *args)
    assert result.exit_code == 0, result.output + result.stderr
    return json.loads((out / "manifest.json").read_text())


@pytest.fixture(scope="module")
def fp16_bundle(tmp_path_factory) -> Path:
    """This module's own copy of the session's fp16 demo: the engine script and bench write into it."""
    return copy_into(built(tmp_path_factory, *FP16_L4).path, tmp_path_factory.mktemp("fp16"))


@pytest.fixture(scope="module")
def int8_bundle(tmp_path_factory) -> Path:
    """This module's own copy of the session's int8 demo: evaluate and bench write into it."""
    return copy_into(built(tmp_path_factory, *INT8).path, tmp_path_factory.mktemp("int8"))


def test_fp16_keeps_the_overflow_prone_ops_in_fp32(fp16_bundle):
    manifest = json.loads((fp16_bundle / "manifest.json").read_text())
    for v in manifest["variants"]:
        r = v["reduced"]
        assert r["precision"] == "fp16" and r["status"] == "passed" and r["path"].endswith(".fp16.onnx")
        assert r["parity"]["min_cosine"] >= 0.999 and r["parity"]["top1_agreement"] >= 0.99
        assert r["bytes"] < 0.6 * v["onnx"]["size_bytes"]
        model = onnx.load(str(fp16_bundle / r["path"]))
        assert {"/Add", "/head/Gemm"} <= set(r["fp32_nodes"])  # pos-embed add and logits
        inits = {i.name: i.data_type for i in model.graph.initializer}
        for node in model.graph.node:
            if node.op_type == "LayerNormalization":  # scale and bias stay float32
                assert all(inits.get(i, onnx.TensorProto.FLOAT) == onnx.TensorProto.FLOAT for i in node.input[1:])
        assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
        assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
        assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in model.graph.initializer)


def test_fp16_bundle_validates_and_feeds_the_strongly_typed_engine_script(fp16_bundle, tmp_path):
    result = run_cli("validate", str(fp16_bundle), "--quiet")
    assert result.exit_code == 0, result.output + result.stderr
    assert re.search(r"│ ✓ │ p8 fp16 +│", result.stdout), result.stdout  # the fp16 file's check, a row of its own
    fake = tmp_path / "trtexec"
    fake.write_text(
        f'#!/usr/bin/env bash\n[ "$1" = --help ] && {{ echo "[TensorRT v101300]"; exit 0; }}\n'
        f'echo "$@" >> {tmp_path}/calls.log\n'
        'for a in "$@"; do case "$a" in --saveEngine=*) echo engine > "${a#--saveEngine=}";; esac; done\n'
    )
    fake.chmod(0o755)
    done = subprocess.run(
        ["bash", str(fp16_bundle / "engines" / "build_l4.sh")],
        capture_output=True,
        text=True,
        env={**os.environ, "TRTEXEC": str(fake)},
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    calls = (tmp_path / "calls.log").read_text().splitlines()
    assert calls[0].startswith("--onnx=onnx/model_p8.fp16.onnx") and "--stronglyTyped" in calls[0]
    assert "--fp16" not in calls[0]


def test_int8_is_symmetric_per_channel_qdq_around_matmuls_only(int8_bundle):
    manifest = json.loads((int8_bundle / "manifest.json").read_text())
    r = manifest["variants"][1]["reduced"]
    assert r["status"] == "passed" and r["parity"]["min_cosine"] >= 0.99
    model = onnx.load(str(int8_bundle / r["path"]))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    consumers = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node.op_type)
    dq = [n for n in model.graph.node if n.op_type == "DequantizeLinear"]
    assert dq
    per_channel = 0
    for node in dq:
        zero_point = inits.get(node.input[2]) if len(node.input) > 2 else None
        assert zero_point is None or (zero_point.dtype == np.int8 and not zero_point.any())  # symmetric int8
        per_channel += inits[node.input[1]].ndim == 1 and inits[node.input[1]].size > 1
        assert set(consumers.get(node.output[0], [])) <= {"MatMul", "Gemm", "Conv"}
    assert per_channel > 0
    assert set(inits) <= set(consumers)  # no scale or zero point left behind by a removed Q/DQ pair


def test_validate_judges_the_int8_file_on_the_images_the_build_did(int8_bundle):
    from exporter.build.recheck import recheck_bundle

    manifest = json.loads((int8_bundle / "manifest.json").read_text())
    for result, v in zip(recheck_bundle(int8_bundle), manifest["variants"]):
        assert result.reduced is not None
        assert result.reduced.samples == v["reduced"]["parity"]["samples"] == 16  # the held-out digits only
        assert result.reduced.top1_agreement == v["reduced"]["parity"]["top1_agreement"]
    result = run_cli("validate", str(int8_bundle), "--quiet")
    assert result.exit_code == 0, result.output + result.stderr


def test_int8_accuracy_change_is_within_one_point(int8_bundle):
    result = run_cli("evaluate", str(int8_bundle), "--quiet")
    assert result.exit_code == 0, result.output + result.stderr
    rows = {(r["variant"], r["backend"]): r for r in json.loads((int8_bundle / "eval.json").read_text())["results"]}
    for p in ("p8", "p16", "p32"):
        int8, fp32 = rows[(p, "onnxruntime int8")], rows[(p, "pytorch")]
        assert int8["delta_top1"] == pytest.approx(int8["top1"] - fp32["top1"])
        assert int8["max_drop"] == 0.01 and int8["passed"] and abs(int8["delta_top1"]) <= 0.01


def test_evaluate_fails_an_int8_file_that_loses_more_accuracy_than_allowed(int8_bundle, tmp_path):
    import shutil

    bundle = tmp_path / "b"
    shutil.copytree(int8_bundle, bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    for v in manifest["variants"]:
        v["reduced"]["tolerance"]["max_accuracy_drop"] = 0.0  # no loss allowed at all
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    result = run_cli("evaluate", str(bundle), "--quiet")
    rows = json.loads((bundle / "eval.json").read_text())["results"]
    drops = {r["variant"]: r["delta_top1"] for r in rows if r["backend"] == "onnxruntime int8"}
    losing = [p for p, d in drops.items() if d < 0]
    assert losing, drops  # the demo's int8 files lose a little at some patch size
    assert result.exit_code == 3
    error = one_line_error(result)
    assert all(f"{p} onnxruntime int8: top-1" in error for p in losing)
    assert all(f"{p} onnxruntime int8" not in error for p in drops if p not in losing)


def test_int8_needs_calibration_images(tiny_flexivit, tmp_path):
    result = run_cli(
        "build", "-p", "16", "--weights", str(tiny_flexivit), "--precision", "int8", "--out", str(tmp_path / "b")
    )
    assert result.exit_code == 2 and "--calib-dir" in one_line_error(result)
    assert not (tmp_path / "b").exists()


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    return random_photos(tmp_path_factory.mktemp("photos"), 6)


@pytest.fixture(scope="module")
def tiny_int8(tiny_flexivit, photos, tmp_path_factory) -> Path:
    """The tiny flexivit_small at 240: p8 has 901 tokens, p16 226."""
    out = tmp_path_factory.mktemp("tiny_int8") / "b"
    args = ("-p", "8", "16", "--weights", str(tiny_flexivit), "--precision", "int8", "--calib-dir", str(photos))
    result = run_cli("build", *args, "--parity-samples", "2", "--out", str(out), "-q")
    assert result.exit_code in (0, 3), result.output + result.stderr  # random weights: judged elsewhere
    return out


def test_int8_is_checked_on_images_it_was_not_calibrated_on(tiny_int8, tiny_flexivit, photos, tmp_path):
    from exporter.build.precision import int8_float_nodes, to_int8
    from exporter.runtime.images import load_images
    from exporter.source.load import load_source
    from exporter.source.model import SourceSpec

    r = json.loads((tiny_int8 / "manifest.json").read_text())["variants"][1]["reduced"]
    assert r["parity"]["samples"] == 2  # the first two (sorted) images only
    assert r["calibration"] == f"4 images from {photos} (after the 2 used for the check)"
    # Calibrating on images 2..5 ourselves gives exactly the bundle's activation scales.
    source = load_source(SourceSpec(weights=tiny_flexivit))
    again = tmp_path / "again.onnx"
    images = load_images(photos, (240, 240), source.preprocessing, skip=2)
    fp32 = tiny_int8 / "onnx" / "model_p16.onnx"
    to_int8(fp32, again, images, exclude=int8_float_nodes(fp32))
    scales = [
        {i.name: numpy_helper.to_array(i).tobytes() for i in onnx.load(str(f)).graph.initializer if "scale" in i.name}
        for f in (tiny_int8 / r["path"], again)
    ]
    assert scales[0] and scales[0] == scales[1]


def test_report_says_why_a_reduced_file_failed(tiny_int8):
    from exporter.bundle.report import render_report
    from exporter.bundle.schema import parse_manifest

    manifest = parse_manifest((tiny_int8 / "manifest.json").read_text())
    first = manifest.variants[0]
    assert first.reduced is not None
    parity = first.reduced.parity.but(failures=["top-1 agreement 50.0% < 97.0%"])
    failed = first.but(status="failed", reduced=first.reduced.but(status="failed", parity=parity))
    report = render_report(manifest.but(variants=(failed, *manifest.variants[1:])))
    assert "**p8 failed:** int8: top-1 agreement 50.0% < 97.0%" in report
    assert "| ✗ | p8 | int8 |" in report and "Overall: FAILED" in report


def test_int8_needs_more_images_than_the_check_uses(tiny_flexivit, photos, tmp_path):
    args = ("-p", "16", "--weights", str(tiny_flexivit), "--precision", "int8", "--calib-dir", str(photos))
    result = run_cli("build", *args, "--parity-samples", "6", "--out", str(tmp_path / "c"))
    assert result.exit_code == 2
    assert "has 6 images; int8 needs more than --parity-samples (6)" in one_line_error(result)
    assert not (tmp_path / "c").exists()


def test_int8_keeps_attention_matmuls_and_fc2_float_at_every_token_count(tiny_int8):
    from exporter.build.precision import attention_matmuls

    for v in json.loads((tiny_int8 / "manifest.json").read_text())["variants"]:  # p8: 901 tokens, p16: 226
        fp32 = onnx.load(str(tiny_int8 / v["onnx"]["path"]))
        attention = attention_matmuls(fp32)
        assert len(attention) == 2 * 2  # Q·Kᵀ and P·V in each of the 2 blocks
        fc2 = [n.name for n in fp32.graph.node if n.op_type == "MatMul" and "/mlp/fc2/" in n.name]
        assert len(fc2) == 2
        assert sorted(v["reduced"]["fp32_nodes"]) == sorted(attention + fc2)
        model = onnx.load(str(tiny_int8 / v["reduced"]["path"]))
        producers = {o: n.op_type for n in model.graph.node for o in n.output}
        quantised = {n.name for n in model.graph.node if any(producers.get(i) == "DequantizeLinear" for i in n.input)}
        assert not quantised & set(attention + fc2)
        for layer in ("attn/qkv", "attn/proj", "mlp/fc1"):  # the other weight matmuls are quantised
            assert sum(f"/{layer}/" in n for n in quantised) == 2, (layer, quantised)


def test_resume_keeps_the_reduced_file(fp16_bundle, tmp_path):
    import shutil

    out = tmp_path / "b"
    shutil.copytree(fp16_bundle, out)
    manifest = build(out, "--precision", "fp16", "--profile", "l4", "--resume")
    assert all(v["resumed"] for v in manifest["variants"])
    assert all((out / v["reduced"]["path"]).is_file() for v in manifest["variants"])


def test_bench_times_the_reduced_onnx_too(int8_bundle):
    result = run_cli(
        "bench",
        str(int8_bundle),
        "--backends",
        "ort-cpu",
        "--batch-sizes",
        "1",
        *QUICK_BENCH,
    )
    assert result.exit_code == 0, result.output + result.stderr
    timings = json.loads((int8_bundle / "bench.json").read_text())["timings"]
    assert {t["backend"] for t in timings} == {"ort-cpu", "ort-cpu int8"}
    # Each row against the ceiling of its own precision: int8 rows against the int8 MatMulInteger one.
    ceiling = json.loads((int8_bundle / "bench.json").read_text())["ceiling"]
    for t in timings:
        roof = ceiling["int8_matmul_gops"] if t["backend"] == "ort-cpu int8" else ceiling["ort_matmul_gflops"]
        assert t["fraction_of_ceiling"] == pytest.approx(t["achieved_gflops"] / roof)


def test_precision_is_one_enum_used_by_the_cli_and_the_pipeline():
    """The allowed values were written out in the CLI (twice), precision.py and the pipeline."""
    from exporter.build.options import BuildOptions
    from exporter.cli.build import build
    from exporter.cli.triton import triton
    from exporter.core.errors import UsageError
    from exporter.core.precision import PRECISIONS, Precision

    assert PRECISIONS == ("fp32", "fp16", "int8")
    for command in (build, triton):
        option = next(p for p in command.params if p.name == "precision")
        assert tuple(option.type.choices) == PRECISIONS
    options = BuildOptions(patch_sizes=((16, 16),), precision="int8")  # type: ignore[arg-type]
    assert options.precision is Precision.INT8 and f"model.{options.precision}.onnx" == "model.int8.onnx"
    with pytest.raises(UsageError, match="one of fp32, fp16, int8, got 'fp8'"):
        BuildOptions(patch_sizes=((16, 16),), precision="fp8")  # type: ignore[arg-type]


@pytest.mark.parametrize("gelu", ["Gelu", "Erf"])
def test_fc2_is_the_weight_matmul_reading_gelus_output(gelu):
    """Found by the graph (Gelu at opset 20, or the Erf of its opset-17 decomposition), not by timm's names."""
    from onnx import TensorProto, helper

    from exporter.build.precision import mlp_output_matmuls

    w = [numpy_helper.from_array(np.ones((4, 4), np.float32), f"w{i}") for i in (1, 2)]
    half = numpy_helper.from_array(np.array(0.5, np.float32), "half")
    if gelu == "Gelu":
        act = [helper.make_node("Gelu", ["h"], ["g"], name="act")]
    else:  # x·0.5·(1 + erf(x/√2)), as torch writes nn.GELU at opset 17
        act = [
            helper.make_node("Mul", ["h", "half"], ["s"], name="scale"),
            helper.make_node("Erf", ["s"], ["e"], name="erf"),
            helper.make_node("Add", ["e", "half"], ["e1"], name="add"),
            helper.make_node("Mul", ["h", "e1"], ["g0"], name="mul"),
            helper.make_node("Mul", ["g0", "half"], ["g"], name="mul1"),
        ]
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
        *act,
        helper.make_node("MatMul", ["g", "w2"], ["y"], name="fc2"),
        helper.make_node("MatMul", ["y", "w1"], ["z"], name="after"),
    ]
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 4]) for n in ("x", "z")]
    graph = helper.make_graph(nodes, "mlp", io[:1], io[1:], initializer=[*w, half])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    assert mlp_output_matmuls(model) == ["fc2"]
