"""The TensorRT stage's decisions, tested without TensorRT; real engines behind markers."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from exporter.errors import EnvironmentMissing, UsageError
from exporter.profile import load_profile, profile_from_dict
from exporter.trt import (
    EngineShapes,
    check_precision,
    engine_shapes,
    import_tensorrt,
    tensorrt_problem,
    timing_cache_name,
    trtexec_command,
    typing_mode,
)

from conftest import one_line_error, run_cli

HAVE_TRT = tensorrt_problem() is None
SHAPES = EngineShapes((1, 3, 64, 64), (4, 3, 64, 64), (16, 3, 64, 64))


@pytest.mark.parametrize(
    ("version", "mode"),
    [
        ("10.3.0.26", "weak"),
        ("10.11.0", "weak"),
        ("10.12.0.36", "strong"),
        ("10.13.3.9", "strong"),
        ("11.0.0", "strong"),
        ("8.6.1", "weak"),
    ],
)
def test_typing_mode_by_version(version, mode):
    assert typing_mode(version) == mode


def test_strong_typing_needs_a_reduced_precision_onnx():
    check_precision("10.3.0", "fp16", "fp32")  # weak typing: builder flags do it
    check_precision("11.0.0", "fp32", "fp32")
    check_precision("11.0.0", "fp16", "fp16")
    with pytest.raises(UsageError, match="strongly typed.*needs an fp16 ONNX"):
        check_precision("10.12.0", "fp16", "fp32")


@pytest.mark.parametrize("version", ["10.3.0", "10.13.0"])
def test_int8_needs_the_qdq_onnx_under_either_typing(version):
    check_precision(version, "int8", "int8")
    with pytest.raises(UsageError, match=r"int8 needs the bundle's int8 \(Q/DQ\) ONNX.*--precision int8"):
        check_precision(version, "int8", "fp32")


def test_trtexec_command_weak_fp16_with_layernorm_in_fp32():
    profile = load_profile("jetson-agx-orin")
    cmd = trtexec_command(
        "onnx/model_p8.onnx",
        "engines/x/model_p8.engine",
        profile,
        SHAPES,
        "weak",
        ("/blocks.0/norm1/LayerNormalization", "/norm/LayerNormalization"),
        "engines/x/t.cache",
    )
    assert cmd == [
        "trtexec",
        "--onnx=onnx/model_p8.onnx",
        "--saveEngine=engines/x/model_p8.engine",
        "--minShapes=pixel_values:1x3x64x64",
        "--optShapes=pixel_values:4x3x64x64",
        "--maxShapes=pixel_values:16x3x64x64",
        "--memPoolSize=workspace:4096M",
        "--builderOptimizationLevel=3",
        "--fp16",
        "--layerPrecisions=/blocks.0/norm1/LayerNormalization:fp32,/norm/LayerNormalization:fp32",
        "--precisionConstraints=obey",
        "--timingCacheFile=engines/x/t.cache",
    ]


def test_trtexec_command_strong_fp32_dla_and_hardware_compatibility():
    profile = profile_from_dict(
        "x",
        {
            "precision": "fp32",
            "timing_cache": False,
            "workspace_mib": 512,
            "builder_optimization_level": 5,
            "hardware_compatibility": "ampere_plus",
        },
    )
    cmd = trtexec_command("a.onnx", "a.engine", profile, SHAPES, "strong", ("ln",), "t.cache")
    assert cmd[6:] == [
        "--memPoolSize=workspace:512M",
        "--builderOptimizationLevel=5",
        "--stronglyTyped",
        "--noTF32",
        "--hardwareCompatibilityLevel=ampere+",
    ]
    dla = profile_from_dict("d", {"dla_core": 1, "compute_capability": "8.7"})
    assert trtexec_command("a.onnx", "a.engine", dla, SHAPES, "weak")[-3:] == [
        "--fp16",
        "--useDLACore=1",
        "--allowGPUFallback",
    ]


def test_engine_shapes_follow_profile_or_static_batch():
    profile = load_profile("t4")
    assert engine_shapes(profile, (224, 224)) == EngineShapes((1, 3, 224, 224), (8, 3, 224, 224), (32, 3, 224, 224))
    assert engine_shapes(profile, (224, 224), static_batch=2).max == (2, 3, 224, 224)
    assert timing_cache_name("8.7", "10.3.0") == "timing_sm87_trt10.3.0.cache"


@pytest.mark.skipif(HAVE_TRT, reason="TensorRT is installed here")
def test_without_tensorrt_import_is_an_environment_error():
    # With tensorrt-stubs installed, `import tensorrt` succeeds as an empty namespace package:
    # the check must look for tensorrt.Builder, not trust the import.
    with pytest.raises(EnvironmentMissing, match="TensorRT"):
        import_tensorrt()


@pytest.fixture(scope="module")
def demo_with_profile(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("trt") / "demo"
    # --precision fp32: an fp32-only bundle, so the strongly typed branch must refuse fp16.
    result = run_cli(
        "build", "-p", "8", "16", "--profile", "jetson-orin-nano", "--precision", "fp32", "--out", str(out), "--quiet"
    )
    assert result.exit_code == 0, result.output + result.stderr
    return out


@pytest.mark.skipif(HAVE_TRT, reason="TensorRT is installed here: engines get built instead")
def test_build_without_tensorrt_leaves_engines_pending_and_writes_the_script(demo_with_profile):
    manifest = json.loads((demo_with_profile / "manifest.json").read_text())
    entry = manifest["engines"]["jetson-orin-nano"]
    assert entry["status"] == "pending (build on target)" and "TensorRT" in entry["reason"]
    assert entry["command"] == f"flexiexport engine {demo_with_profile} --profile jetson-orin-nano"
    script = demo_with_profile / "engines" / "build_jetson-orin-nano.sh"
    assert os.access(script, os.X_OK) and "pending (build on target)" in (demo_with_profile / "report.md").read_text()
    for v in manifest["variants"]:
        assert v["trt_lint"]["passed"] and v["trt_lint"]["opset"] == 17


def fake_trtexec(tmp_path: Path, version: str) -> Path:
    """A stand-in trtexec that reports ``version`` and logs its arguments: the script under test is real bash."""
    fake = tmp_path / f"trtexec-{version}"
    fake.write_text(
        f'#!/usr/bin/env bash\nif [ "$1" = --help ]; then echo "&&&& RUNNING TensorRT.trtexec '
        f'[TensorRT v{version}] # trtexec --help"; exit 0; fi\necho "$@" >> "{tmp_path}/calls.log"\n'
    )
    fake.chmod(0o755)
    return fake


@pytest.mark.parametrize(("version", "code"), [("100300", 0), ("101300", 4)])
def test_build_script_picks_typing_by_the_device_version(demo_with_profile, tmp_path, version, code):
    script = demo_with_profile / "engines" / "build_jetson-orin-nano.sh"
    env = {**os.environ, "TRTEXEC": str(fake_trtexec(tmp_path, version))}
    done = subprocess.run(["bash", str(script)], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == code, done.stderr
    if code == 0:
        calls = (tmp_path / "calls.log").read_text().splitlines()
        assert len(calls) == 2 and calls[0].startswith("--onnx=onnx/model_p8.onnx")
        assert "--fp16" in calls[0] and "--precisionConstraints=obey" in calls[0] and "--stronglyTyped" not in calls[0]
        assert "/norm/LayerNormalization:fp32" in calls[0]
    else:
        assert "needs an fp16 ONNX" in done.stderr and not (tmp_path / "calls.log").exists()


INT8_PROFILE = """description = "t4, int8"
precision = "int8"
calibration = "demo"
compute_capability = "7.5"
[batch]
min = 1
opt = 4
max = 8
"""


@pytest.mark.parametrize(("version", "flag"), [("100300", "--int8"), ("101300", "--stronglyTyped")])
def test_int8_engines_are_built_from_the_qdq_onnx_under_either_typing(tmp_path, version, flag):
    (tmp_path / "t4-int8.toml").write_text(INT8_PROFILE)
    out = tmp_path / "b"
    result = run_cli("build", "-p", "16", "--profile", str(tmp_path / "t4-int8.toml"), "--out", str(out), "-q")
    assert result.exit_code == 0, result.output + result.stderr
    env = {**os.environ, "TRTEXEC": str(fake_trtexec(tmp_path, version))}
    done = subprocess.run(["bash", str(out / "engines" / "build_t4-int8.sh")], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    (call,) = (tmp_path / "calls.log").read_text().splitlines()
    assert call.startswith("--onnx=onnx/model_p16.int8.onnx") and flag in call.split()


def test_int8_script_refuses_a_float_only_bundle_under_either_typing(demo_with_profile, tmp_path):
    from exporter.bundle import read_manifest
    from exporter.engine import engine_plan
    from exporter.trt import build_script

    (tmp_path / "t4-int8.toml").write_text(INT8_PROFILE)
    profile = load_profile(tmp_path / "t4-int8.toml")
    script = tmp_path / "build.sh"
    script.write_text(build_script(profile, engine_plan(demo_with_profile, read_manifest(demo_with_profile), profile)))
    for version in ("100300", "101300"):
        env = {**os.environ, "TRTEXEC": str(fake_trtexec(tmp_path, version))}
        done = subprocess.run(["bash", str(script)], capture_output=True, text=True, env=env, cwd=tmp_path)
        assert done.returncode == 4 and "precision int8 needs an int8 ONNX" in done.stderr
    assert not (tmp_path / "calls.log").exists()


@pytest.mark.skipif(HAVE_TRT, reason="TensorRT is installed here")
def test_engines_required_without_tensorrt_is_exit_4_before_any_work(tmp_path):
    result = run_cli("build", "-p", "16", "--profile", "t4", "--engines", "required", "--out", str(tmp_path / "b"))
    assert result.exit_code == 4 and "--engines required" in one_line_error(result)
    assert not list(tmp_path.iterdir())
    result = run_cli("build", "-p", "16", "--engines", "required", "--out", str(tmp_path / "b"))
    assert result.exit_code == 2 and "needs --profile" in one_line_error(result)


@pytest.mark.skipif(HAVE_TRT, reason="TensorRT is installed here")
def test_engine_command_without_tensorrt_is_exit_4(demo_with_profile):
    before = (demo_with_profile / "manifest.json").read_bytes()
    result = run_cli("engine", str(demo_with_profile), "--profile", "jetson-orin-nano")
    assert result.exit_code == 4 and "build_jetson-orin-nano.sh" in one_line_error(result)
    assert (demo_with_profile / "manifest.json").read_bytes() == before


@pytest.mark.tensorrt
@pytest.mark.skipif(not HAVE_TRT, reason="needs TensorRT and a CUDA GPU")
def test_real_engines_build_and_pass_parity(tmp_path):
    """Runs wherever TensorRT exists: fp32 engines from the demo, validated against PyTorch."""
    profile = tmp_path / "fp32.toml"
    profile.write_text('precision = "fp32"\nworkspace_mib = 1024\n[batch]\nmin = 1\nopt = 4\nmax = 8\n')
    result = run_cli(
        "build", "-p", "8", "16", "32", "--profile", str(profile), "--engines", "required", "--out", str(tmp_path / "b")
    )
    assert result.exit_code == 0, result.output + result.stderr
    entry = json.loads((tmp_path / "b" / "manifest.json").read_text())["engines"]["fp32"]
    assert entry["status"] == "built"
    for label, v in entry["variants"].items():
        engine = tmp_path / "b" / "engines" / "fp32" / f"model_{label}.engine"
        assert engine.is_file() and Path(str(engine) + ".json").is_file() and v["parity"]["passed"]


def test_an_fp16_profile_brings_fp16_onnx_unless_precision_is_given(tmp_path):
    result = run_cli("build", "-p", "16", "--profile", "jetson-orin-nano", "--out", str(tmp_path / "b"), "--quiet")
    assert result.exit_code == 0, result.output + result.stderr
    variant = json.loads((tmp_path / "b" / "manifest.json").read_text())["variants"][0]
    assert variant["reduced"]["precision"] == "fp16" and variant["reduced"]["status"] == "passed"
