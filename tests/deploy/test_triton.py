"""``flexiexport triton``: configs checked with Triton's own protobuf schema (tritonclient)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from exporter.bundle.door import read_manifest
from exporter.core.errors import UsageError
from exporter.deploy.repository import check_config, config_text, triton_schema

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

    from exporter.build.runners import ort_runner
    from exporter.bundle.reference import random_inputs
    from exporter.source.load import sha256_file

    repo = tmp_path / "repo"
    result = run_cli("triton", str(bundle), "--out", str(repo), "--precision", "fp16")
    assert result.exit_code == 0, result.output + result.stderr
    manifest = read_manifest(bundle)
    x = random_inputs((64, 64), 2, 0, (0.5,) * 3, (0.5,) * 3)
    for record in manifest.variants:
        served = repo / f"flexivit_demo_{record.label}" / "1" / "model.onnx"
        assert record.reduced is not None and sha256_file(served) == record.reduced.sha256
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
    static = record.onnx.to_dict()
    static["inputs"][0]["shape"][0] = 4
    static["outputs"][0]["shape"][0] = 4
    static_record = record.but(onnx=record.onnx.model_validate_json(json.dumps(static)))
    config = check_config(config_text("s", static_record, "onnxruntime_onnx", 8), SCHEMA)
    assert config.max_batch_size == 0 and list(config.input[0].dims) == [4, 3, 64, 64]


def test_schema_rejects_unknown_fields_and_wrong_types():
    with pytest.raises(UsageError, match="no field named"):
        check_config('name: "x"\nmax_batch: 3\n', SCHEMA)
    with pytest.raises(UsageError, match="parse"):
        check_config('name: "x"\nmax_batch_size: "many"\n', SCHEMA)


def test_python_repository_holds_the_serving_files_and_an_entry_model(bundle, tmp_path):
    repo = tmp_path / "repo"
    (bundle / "bench.json").write_text('{"machine": {"cpu": "elsewhere"}, "timings": []}')
    try:
        result = run_cli(
            "triton", str(bundle), "--out", str(repo), "--backend", "python", "--runtime-backend", "ort-cpu"
        )
    finally:
        (bundle / "bench.json").unlink()
    assert result.exit_code == 0, result.output + result.stderr
    assert "wrote 3 models" in result.stdout and "flexivit_demo_p8, flexivit_demo_p16, flexivit" in result.stdout
    manifest = read_manifest(bundle)
    inodes = set()
    for name in ("flexivit_demo_p8", "flexivit_demo_p16", "flexivit"):
        copy = repo / name / "1" / "bundle"
        files = sorted(p.relative_to(copy).as_posix() for p in copy.rglob("*") if p.is_file())
        # no reference outputs, no report: only what serving reads
        assert files == [
            "bench.json",
            "manifest.json",
            "onnx/model_p16.onnx",
            "onnx/model_p8.onnx",
            "onnx/shared_weights.bin",
        ]
        inodes.add((copy / "onnx" / "model_p8.onnx").stat().st_ino)
        assert "exporter.deploy.triton_models import" in (repo / name / "1" / "model.py").read_text()
    assert len(inodes) == 1  # hard links: one copy on disk
    variant = check_config((repo / "flexivit_demo_p16" / "config.pbtxt").read_text(), SCHEMA)
    assert variant.backend == "python" and variant.max_batch_size == 32 and list(variant.input[0].dims) == [3, 64, 64]
    assert variant.dynamic_batching.max_queue_delay_microseconds == 100
    assert variant.parameters["variant"].string_value == "p16"
    assert variant.parameters["runtime_backend"].string_value == "ort-cpu"
    entry = check_config((repo / "flexivit" / "config.pbtxt").read_text(), SCHEMA)
    assert [(i.name, list(i.dims), i.optional) for i in entry.input] == [
        ("images", [-1, -1, 3], True),
        ("pixel_values", [3, 64, 64], True),  # one image size for every variant: checked by Triton
    ]
    assert [o.name for o in entry.output] == ["logits", "variant"] and list(entry.output[0].dims) == [10]
    assert json.loads(entry.parameters["variants"].string_value) == {
        v.label: f"flexivit_demo_{v.label}" for v in manifest.variants
    }

    # What the Python backend leaves behind does not stop --force; anything else does.
    (repo / "flexivit" / "1" / "__pycache__").mkdir()
    (repo / "flexivit" / "1" / "__pycache__" / "model.cpython-311.pyc").write_bytes(b"")
    (repo / "flexivit" / "1" / "bundle" / "latency.json").write_text("{}")
    assert run_cli("triton", str(bundle), "--out", str(repo), "--backend", "python", "--force").exit_code == 0
    (repo / "flexivit" / "1" / "bundle" / "notes.txt").write_text("mine")
    result = run_cli("triton", str(bundle), "--out", str(repo), "--backend", "python", "--force")
    assert result.exit_code == 2 and "flexivit/1/bundle/notes.txt" in one_line_error(result)


def test_python_repository_refuses_what_it_cannot_serve(bundle, tmp_path):
    result = run_cli(
        "triton", str(bundle), "--out", str(tmp_path / "a"), "--backend", "python", "--runtime-backend", "cuda"
    )
    assert result.exit_code == 2 and "auto or one of tensorrt, ort-tensorrt" in one_line_error(result)
    result = run_cli(
        "triton", str(bundle), "--out", str(tmp_path / "b"), "--backend", "python", "--runtime-backend", "tensorrt"
    )
    assert result.exit_code == 2 and "no built TensorRT engine for p8" in one_line_error(result)
    result = run_cli("triton", str(bundle), "--out", str(tmp_path / "c"), "--backend", "python", "--precision", "int8")
    assert result.exit_code == 2 and "no int8 ONNX for p8" in one_line_error(result)
    assert not any(tmp_path.iterdir())


def test_the_triton_models_import_without_torch_timm_or_onnx():
    import subprocess
    import sys

    from tests.bundle.test_reference import BLOCKED

    probe = (
        "import sys\n"
        "class Blocker:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        f"        if name.split('.')[0] in {BLOCKED!r}: raise ImportError(name)\n"
        "sys.meta_path.insert(0, Blocker())\n"
        "import exporter.deploy.triton_models, exporter.deploy.server\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_a_probe_that_cannot_be_recorded_is_still_used(bundle, tmp_path, monkeypatch, caplog):
    """A read-only model repository: the entry model measures the variants and goes on serving."""
    import shutil

    from exporter.runtime import Bundle as RuntimeBundle

    copy = tmp_path / "copy"
    shutil.copytree(bundle, copy)

    def read_only(path, text):
        raise PermissionError(13, "Read-only file system", str(path))

    monkeypatch.setattr("exporter.runtime.measurements.write_atomic", read_only)
    with caplog.at_level("WARNING", logger="exporter.runtime"):
        found = RuntimeBundle.open(copy).latencies("ort-cpu", "fp32", 1)
    assert set(found) == {"p8", "p16"} and not (copy / "latency.json").exists()
    assert "latencies measured but not recorded" in caplog.text
