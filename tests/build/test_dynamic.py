"""``--img-size dynamic:MIN-MAX``: one ONNX per patch size whose position grid is resampled in the
graph, checked at its smallest, opt and largest size against fixed-size PyTorch models built for
exactly those sizes, validated from the stored references, with the min/opt/max shapes in the
engine script (run under bash with a stand-in trtexec) and in the Python builder's plan."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from exporter.build.lint import lint_onnx
from exporter.build.recheck import record_spec
from exporter.build.runners import ort_runner
from exporter.build.variant import fixed_at, make_variant
from exporter.bundle.schema import parse_manifest
from exporter.core.errors import UsageError
from exporter.source.load import load_source
from exporter.source.model import SourceSpec
from exporter.tensorrt.profile import load_profile
from exporter.tensorrt.stage import engine_plan
from exporter.tensorrt.versions import engine_shapes
from tests.tensorrt.test_trt import VERSIONS, calls, run_script

from conftest import refused, run_cli

RANGE = "dynamic:32-128"


@pytest.fixture(scope="module")
def dynamic_bundle(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dynamic") / "demo"
    result = run_cli("build", "-p", "8", "16", "32", "--img-size", RANGE, "--out", str(out), "--profile", "gpu-fp16")
    assert result.exit_code == 0, result.output + result.stderr
    return out


def manifest_of(bundle: Path) -> dict:
    return json.loads((bundle / "manifest.json").read_text())


def test_one_onnx_per_patch_checked_at_three_sizes(dynamic_bundle):
    manifest = manifest_of(dynamic_bundle)
    assert manifest["options"]["img_size_policy"] == RANGE
    assert [v["label"] for v in manifest["variants"]] == ["p8", "p16", "p32"]
    for v in manifest["variants"]:
        assert v["status"] == "passed" and v["parity"]["passed"]
        assert v["onnx"]["inputs"][0]["shape"] == ["batch", 3, "height", "width"]
        dynamic = v["dynamic"]
        assert (dynamic["min"], dynamic["opt"], dynamic["max"]) == ([32, 32], [64, 64], [128, 128])
        assert [c["img_size"] for c in dynamic["checks"]] == [[32, 32], [128, 128]]
        assert all(c["parity"]["passed"] and c["parity"]["samples"] == 32 for c in dynamic["checks"])
        assert v["trt_lint"]["passed"], v["trt_lint"]
    graph = onnx.load(str(dynamic_bundle / "onnx" / "model_p16.onnx"))
    resizes = [n for n in graph.graph.node if n.op_type == "Resize"]
    assert len(resizes) == 1 and helper.get_attribute_value(resizes[0].attribute[2]) == b"cubic"
    table = run_cli("inspect", str(dynamic_bundle))
    assert table.exit_code == 0 and "64 (32-128)" in table.output


def test_any_multiple_in_the_range_matches_a_model_built_for_that_size(dynamic_bundle):
    """Sizes the build did not check (80, 96, and a rectangle) against fixed-size models whose grid
    timm's own resample_abs_pos_embed made offline."""
    source = load_source(SourceSpec())
    manifest = parse_manifest(json.dumps(manifest_of(dynamic_bundle)))
    rng = np.random.default_rng(3)
    for record, size in zip(manifest.variants, [(80, 80), (96, 96), (64, 128)]):
        spec = record_spec(record)
        x = rng.standard_normal((3, 3, *size), dtype=np.float32)
        with torch.no_grad():
            expected = fixed_at(source, spec, size)(torch.from_numpy(x)).numpy()
            eager = make_variant(source, spec).model(torch.from_numpy(x)).numpy()  # the graph's own module
        actual = ort_runner(dynamic_bundle / record.onnx.path)(x)
        assert np.abs(actual - expected).max() < 1e-4 and np.abs(eager - expected).max() < 1e-4, record.label


def test_validate_judges_all_three_sizes_from_the_stored_references(dynamic_bundle, tmp_path):
    result = run_cli("validate", str(dynamic_bundle))
    assert result.exit_code == 0, result.output + result.stderr
    assert "p16 at 32" in result.output and "p16 at 128" in result.output and "all 9 checks" in result.output
    bundle = tmp_path / "b"
    shutil.copytree(dynamic_bundle, bundle)
    with (bundle / "reference" / "model_p16_max.npz").open("r+b") as f:
        f.seek(-3, 2)
        f.write(b"\x00\x01\x02")
    result = run_cli("validate", str(bundle))
    assert result.exit_code == 3 and "model_p16_max.npz" in result.output


def test_the_engine_script_carries_min_opt_max_image_shapes(dynamic_bundle, tmp_path):
    script = dynamic_bundle / "engines" / "build_gpu-fp16.sh"
    for version in ("10.3", "10.13"):
        done = run_script(script, tmp_path / version, VERSIONS[version])
        assert done.returncode == 0, done.stderr
        made = calls(tmp_path / version)
        assert len(made) == 3
        for line in made:
            words = line.split()
            assert "--minShapes=pixel_values:1x3x32x32" in words
            assert "--optShapes=pixel_values:8x3x64x64" in words
            assert "--maxShapes=pixel_values:32x3x128x128" in words
    manifest = parse_manifest(json.dumps(manifest_of(dynamic_bundle)))
    plan = engine_plan(dynamic_bundle, manifest, load_profile("gpu-fp16"))
    shapes = plan[0].shapes  # what the Python builder gives IOptimizationProfile.set_shape
    assert (shapes.min, shapes.opt, shapes.max, shapes.static) == (
        (1, 3, 32, 32),
        (8, 3, 64, 64),
        (32, 3, 128, 128),
        False,
    )


def test_dla_needs_fixed_shapes_and_a_static_batch_keeps_image_shapes():
    profile = load_profile("gpu-fp16")
    shapes = engine_shapes(profile, (64, 64), static_batch=2, img_range=((32, 32), (128, 128)))
    assert (shapes.min, shapes.max, shapes.static) == ((2, 3, 32, 32), (2, 3, 128, 128), False)
    orin = load_profile("jetson-orin-nano")
    dla = replace(orin, dla_core=0, batch=replace(orin.batch, min=1, opt=1, max=1))
    with pytest.raises(UsageError, match="DLA core 0, which needs fixed input shapes"):
        engine_shapes(dla, (64, 64), img_range=((32, 32), (128, 128)))


def test_lint_names_resize_nodes_tensorrt_cannot_import(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 8, 8])
    sizes = helper.make_tensor("sizes", TensorProto.INT64, [4], [1, 1, 8, 8])
    node = helper.make_node("Resize", ["x", "", "", "sizes"], ["y"], name="r", mode="cubic", antialias=1)
    model = helper.make_model(
        helper.make_graph([node], "g", [x], [y], [sizes]), opset_imports=[helper.make_opsetid("", 18)]
    )
    path = tmp_path / "aa.onnx"
    onnx.save(model, str(path))
    issues = lint_onnx(path).issues
    assert any("antialias" in i for i in issues), issues
    resize = model.graph.node[0]  # make_graph copied the node
    resize.ClearField("attribute")
    resize.attribute.extend([helper.make_attribute("mode", "cubic")])
    onnx.save(model, str(path))
    assert not [i for i in lint_onnx(path).issues if "Resize" in i]


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("-p", "16", "--img-size", "dynamic:128-32"), ("must not exceed the largest",)),
        (("-p", "16", "--img-size", "dynamic:abc"), ("dynamic", "MIN-MAX")),
        (("-p", "16", "--img-size", "48", "dynamic:32-64"), ("stands alone",)),
        (("-p", "16", "--img-size", RANGE, "--precision", "int8"), ("int8 is calibrated at one size",)),
        (("-p", "16", "--img-size", RANGE, "--exporter", "dynamo"), ("--exporter torchscript only",)),
        (("-p", "64", "--img-size", "dynamic:32-48"), ("no multiple of patch 64 lies in 32-48",)),
    ],
)
def test_bad_ranges_are_refused_before_any_work(tmp_path, args, words):
    out = tmp_path / "b"
    refused(run_cli("build", *args, "--out", str(out)), *words)
    assert not out.exists()


def test_a_patch_with_no_size_in_the_range_is_left_out_and_named(tmp_path):
    out = tmp_path / "b"
    result = run_cli("build", "-p", "16", "48", "--img-size", "dynamic:32-40", "--out", str(out), "-q")
    assert result.exit_code == 0, result.output + result.stderr
    manifest = manifest_of(out)
    assert [v["label"] for v in manifest["variants"]] == ["p16"]
    assert manifest["variants"][0]["dynamic"]["max"] == [32, 32]
    assert manifest["options"]["impossible_variants"] == ["p48: no multiple of patch 48 lies in 32-40"]


def test_triton_configs_take_any_height_and_width(dynamic_bundle, tmp_path):
    result = run_cli("triton", str(dynamic_bundle), "--out", str(tmp_path / "repo"))
    assert result.exit_code == 0, result.output + result.stderr
    config = (tmp_path / "repo" / "flexivit_demo_p16" / "config.pbtxt").read_text()
    assert "dims: [3, -1, -1]" in config


def test_bench_times_the_in_graph_resample_against_fixed_size_onnx(dynamic_bundle, tmp_path):
    """Each variant at its smallest, opt and largest size, dynamic ONNX against one exported for
    exactly that size, on the same backend; a second backend's run keeps the first one's rows."""
    bundle = tmp_path / "b"
    shutil.copytree(dynamic_bundle, bundle)
    quick = ("--batch-sizes", "2", "--runs", "3", "--min-seconds", "0", "--warmup", "1")
    result = run_cli("bench", str(bundle), "--backends", "ort-cpu", *quick)
    assert result.exit_code == 0, result.output + result.stderr
    assert "in-graph position resample" in result.output
    report = json.loads((bundle / "bench.json").read_text())
    sizes = [[32, 32], [64, 64], [128, 128]]
    rows = report["resample"]
    assert [(r["variant"], r["img_size"]) for r in rows] == [(v, s) for v in ("p8", "p16", "p32") for s in sizes]
    for r in rows:
        assert r["backend"] == "ort-cpu" and r["batch"] == 2
        assert r["dynamic_p50_ms"] > 0 and r["fixed_p50_ms"] > 0
        assert r["extra_ms"] == pytest.approx(r["dynamic_p50_ms"] - r["fixed_p50_ms"])
    fp32 = [t for t in report["timings"] if t["backend"] == "ort-cpu"]
    assert [t["img_size"] for t in fp32] == [[64, 64]] * 3  # the budget's rows stay at opt

    again = run_cli("bench", str(bundle), "--backends", "openvino", *quick)
    assert again.exit_code == 0, again.output + again.stderr
    backends = [r["backend"] for r in json.loads((bundle / "bench.json").read_text())["resample"]]
    assert backends.count("ort-cpu") == 9 and backends.count("openvino") == 9


def test_bench_without_the_checkpoint_says_why_the_resample_is_not_measured(dynamic_bundle, tmp_path):
    bundle = tmp_path / "b"
    shutil.copytree(dynamic_bundle, bundle)
    quick = ("--batch-sizes", "1", "--runs", "2", "--min-seconds", "0", "--warmup", "0")
    result = run_cli("bench", str(bundle), "--backends", "ort-cpu", "--weights", str(tmp_path / "gone.pt"), *quick)
    assert result.exit_code == 0, result.output + result.stderr
    assert "skipped resample cost:" in result.output and "gone.pt" in result.output
    report = json.loads((bundle / "bench.json").read_text())
    assert report["resample"] == [] and len(report["timings"]) == 6  # the ONNX timings need no checkpoint
