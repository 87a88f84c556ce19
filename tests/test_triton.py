"""``flexiexport triton``: configs checked with Triton's own protobuf schema (tritonclient)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from exporter.bundle import read_manifest
from exporter.errors import UsageError
from exporter.triton import check_config, config_text, triton_schema

from conftest import one_line_error, run_cli

SCHEMA = triton_schema()
pytestmark = pytest.mark.skipif(SCHEMA is None, reason="tritonclient is in the dev extra")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("t") / "b"
    result = run_cli("build", "-p", "8", "16", "--shared-weights", "--profile", "t4", "--out", str(out), "-q")
    assert result.exit_code == 0, result.output + result.stderr
    return out


def test_onnx_repository(bundle, tmp_path):
    repo = tmp_path / "repo"
    result = run_cli("triton", str(bundle), "--out", str(repo))
    assert result.exit_code == 0, result.output + result.stderr
    assert "parsed with Triton's model_config schema" in result.stdout
    for label in ("p8", "p16"):
        model = repo / f"flexivit_demo_{label}"
        assert (model / "1" / "model.onnx").is_file() and (model / "1" / "shared_weights.bin").is_file()
        config = check_config((model / "config.pbtxt").read_text(), SCHEMA)
        assert config.platform == "onnxruntime_onnx" and config.max_batch_size == 32  # t4 profile: batch.max 32
        assert list(config.input[0].dims) == [3, 64, 64] and list(config.output[0].dims) == [10]
        assert config.input[0].name == "pixel_values" and config.dynamic_batching.max_queue_delay_microseconds == 100
    result = run_cli("triton", str(bundle), "--out", str(repo))
    assert result.exit_code == 2 and "--force" in one_line_error(result)


def test_onnx_repository_can_serve_the_fp16_file_and_only_checked_files(bundle, tmp_path):
    import shutil

    from exporter.load import sha256_file
    from exporter.reference import random_inputs
    from exporter.validate import ort_runner

    repo = tmp_path / "repo"
    result = run_cli("triton", str(bundle), "--out", str(repo), "--precision", "fp16")
    assert result.exit_code == 0, result.output + result.stderr
    manifest = read_manifest(bundle)
    x = random_inputs((64, 64), 2, 0, (0.5,) * 3, (0.5,) * 3)
    for record in manifest.variants:
        served = repo / f"flexivit_demo_{record.label}" / "1" / "model.onnx"
        assert sha256_file(served) == record.reduced["sha256"]
        alone = tmp_path / record.label / "model.onnx"  # the version folder must be self-contained
        shutil.copytree(served.parent, alone.parent)
        assert ort_runner(alone)(x).shape == (2, 10)
    result = run_cli("triton", str(bundle), "--out", str(tmp_path / "r8"), "--precision", "int8")
    assert result.exit_code == 2 and "no int8 ONNX for p8" in one_line_error(result)

    failed = tmp_path / "failed"
    shutil.copytree(bundle, failed)
    data = json.loads((failed / "manifest.json").read_text())
    data["variants"][1]["reduced"]["parity"]["failures"] = ["cosine 0.9 < 0.999"]
    (failed / "manifest.json").write_text(json.dumps(data))
    result = run_cli("triton", str(failed), "--out", str(tmp_path / "r16"), "--precision", "fp16")
    error = one_line_error(result)
    assert result.exit_code == 2 and "p16's fp16 ONNX failed its parity check (cosine 0.9 < 0.999)" in error
    assert not (tmp_path / "r16").exists()
    assert run_cli("triton", str(failed), "--out", str(tmp_path / "r32")).exit_code == 0  # fp32 files passed


def test_tensorrt_backend_needs_built_engines(bundle, tmp_path):
    result = run_cli("triton", str(bundle), "--out", str(tmp_path / "r"), "--backend", "tensorrt")
    assert result.exit_code == 2 and "no built TensorRT engine" in one_line_error(result)
    assert not (tmp_path / "r").exists()


def test_plan_config_per_compute_capability_and_static_batch(bundle):
    record = read_manifest(bundle).variants[0]
    text = config_text("m", record, "tensorrt_plan", 16, {"8.7": "model_sm87.plan", "7.5": "model_sm75.plan"})
    config = check_config(text, SCHEMA)
    assert dict(config.cc_model_filenames) == {"8.7": "model_sm87.plan", "7.5": "model_sm75.plan"}
    assert config.platform == "tensorrt_plan"
    static = json.loads(json.dumps(record.onnx))
    static["inputs"][0]["shape"][0] = 4
    static["outputs"][0]["shape"][0] = 4
    from dataclasses import replace

    config = check_config(config_text("s", replace(record, onnx=static), "onnxruntime_onnx", 8), SCHEMA)
    assert config.max_batch_size == 0 and list(config.input[0].dims) == [4, 3, 64, 64]


def test_schema_rejects_unknown_fields_and_wrong_types():
    with pytest.raises(UsageError, match="no field named"):
        check_config('name: "x"\nmax_batch: 3\n', SCHEMA)
    with pytest.raises(UsageError, match="parse"):
        check_config('name: "x"\nmax_batch_size: "many"\n', SCHEMA)
