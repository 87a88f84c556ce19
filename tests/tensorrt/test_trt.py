"""The TensorRT stage's decisions, tested without TensorRT; real engines behind markers.

The generated trtexec script runs under bash with a stand-in trtexec that reports a version
(10.3: JetPack 6; 10.9: sameComputeCapability; 10.13: strongly typed; 11.1: typing flags gone).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from exporter.core.errors import EnvironmentMissing, UsageError
from exporter.tensorrt.profile import load_profile, profile_from_dict, version_in_range
from exporter.tensorrt.runner import profile_batch_range
from exporter.tensorrt.script import trtexec_command, version_tests
from exporter.tensorrt.sidecar import SIDECAR_KEYS, engine_fit, read_sidecar
from exporter.tensorrt.versions import (
    EngineShapes,
    check_precision,
    engine_shapes,
    hardware_level_name,
    import_tensorrt,
    profile_mismatch,
    tensorrt_problem,
    timing_cache_name,
    typing_mode,
)

from conftest import ORIN_FP32, built, one_line_error, run_cli

HAVE_TRT = tensorrt_problem() is None
SHAPES = EngineShapes((1, 3, 64, 64), (4, 3, 64, 64), (16, 3, 64, 64))
VERSIONS = {"10.3": "100300", "10.9": "100900", "10.13": "101300", "11.1": "110100"}


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
    # a bundle with an int8 ONNX is not called "fp32 only"
    with pytest.raises(UsageError, match="it has fp32 and int8 ONNX only"):
        check_precision("10.13.0", "fp16", "fp32", ("fp32", "int8"))


@pytest.mark.parametrize("version", ["10.3.0", "10.13.0"])
def test_int8_needs_the_qdq_onnx_under_either_typing(version):
    check_precision(version, "int8", "int8")
    wanted = r"int8 needs the bundle's int8 \(Q/DQ\) ONNX.*build it with precision int8 calib_dir DIR"
    with pytest.raises(UsageError, match=wanted):
        check_precision(version, "int8", "fp32")


LAYERNORMS = ("/blocks.0/norm1/LayerNormalization", "/norm/LayerNormalization")


def test_trtexec_command_weak_fp16_pins_layernorm_precision_and_output_type():
    profile = load_profile("jetson-agx-orin")
    cmd = trtexec_command("onnx/model_p8.onnx", "engines/x/model_p8.engine", profile, SHAPES, (10, 3), LAYERNORMS)
    assert cmd == [
        "trtexec",
        "--onnx=onnx/model_p8.onnx",
        "--saveEngine=engines/x/model_p8.engine",
        "--skipInference",
        "--minShapes=pixel_values:1x3x64x64",
        "--optShapes=pixel_values:4x3x64x64",
        "--maxShapes=pixel_values:16x3x64x64",
        "--memPoolSize=workspace:4096M",
        "--builderOptimizationLevel=3",
        "--fp16",
        "--layerPrecisions=/blocks.0/norm1/LayerNormalization:fp32,/norm/LayerNormalization:fp32",
        "--layerOutputTypes=/blocks.0/norm1/LayerNormalization:fp32,/norm/LayerNormalization:fp32",
        "--precisionConstraints=obey",
    ]


@pytest.mark.parametrize(
    ("version", "typing_flags"),
    [((10, 3), ["--int8", "--fp16"]), ((10, 13), ["--stronglyTyped"]), ((11, 1), [])],
)
def test_typing_flags_by_version(version, typing_flags):
    """Weak int8 also enables FP16 (unquantised layers would run FP32); 10.12-10.x passes
    --stronglyTyped; 11 is strongly typed by default and has no --stronglyTyped, --fp16 or --int8."""
    profile = profile_from_dict("q", {"precision": "int8", "calibration": "demo"})
    cmd = trtexec_command("a.onnx", "a.engine", profile, SHAPES, version, LAYERNORMS)
    flags = [c for c in cmd if c in ("--int8", "--fp16", "--stronglyTyped")]
    assert flags == typing_flags
    assert any(c.startswith("--layerPrecisions") for c in cmd) == (version < (10, 12))


def test_trtexec_command_fp32_dla_and_hardware_compatibility():
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
    cmd = trtexec_command("a.onnx", "a.engine", profile, SHAPES, (10, 13), ("ln",), "t.cache")
    assert cmd[7:] == [
        "--memPoolSize=workspace:512M",
        "--builderOptimizationLevel=5",
        "--stronglyTyped",
        "--noTF32",
        "--hardwareCompatibilityLevel=ampere+",
    ]
    dla = profile_from_dict("d", {"dla_core": 1, "compute_capability": "8.7"})
    assert trtexec_command("a.onnx", "a.engine", dla, SHAPES, (10, 3))[-3:] == [
        "--fp16",
        "--useDLACore=1",
        "--allowGPUFallback",
    ]


def test_hardware_compatibility_names_per_version():
    """sampleOptions.cpp: 'ampere+' from 8.6, 'sameComputeCapability' only from 10.9."""
    assert hardware_level_name("none", (10, 3)) is None
    assert hardware_level_name("ampere_plus", (10, 3)) == "ampere+"
    assert hardware_level_name("same_compute_capability", (10, 9)) == "sameComputeCapability"
    with pytest.raises(EnvironmentMissing, match=r"needs TensorRT >= 10\.9"):
        hardware_level_name("same_compute_capability", (10, 3))


def test_a_static_batch_engine_gets_no_shapes():
    """trtexec: "Static model does not take explicit shapes"."""
    shapes = engine_shapes(load_profile("t4"), (64, 64), static_batch=2)
    assert shapes.static and shapes.min == shapes.max == (2, 3, 64, 64)
    cmd = trtexec_command("a.onnx", "a.engine", load_profile("t4"), shapes, (10, 3))
    assert not [c for c in cmd if "Shapes=" in c]


def test_engine_shapes_follow_profile_or_static_batch():
    profile = load_profile("t4")
    assert engine_shapes(profile, (224, 224)) == EngineShapes((1, 3, 224, 224), (8, 3, 224, 224), (32, 3, 224, 224))
    assert engine_shapes(profile, (224, 224), static_batch=2).max == (2, 3, 224, 224)
    assert timing_cache_name("8.7", "10.3.0") == "timing_sm87_trt10.3.0.cache"
    assert timing_cache_name("8.7", "10.3.0.30") == "timing_sm87_trt10.3.0.cache"  # the script's name too


def test_the_profile_is_checked_against_the_real_tensorrt_and_gpu():
    orin = load_profile("jetson-orin-nano")
    assert profile_mismatch(orin, "10.3.0.30", "8.7") is None
    assert profile_mismatch(orin, "10.3.0.30", None) is None  # unknown: not checked
    assert profile_mismatch(orin, "8.6.1", "8.7") == (
        "TensorRT 8.6.1 is older than 10.0: flexiexport builds and runs engines with TensorRT 10 or newer"
    )
    assert profile_mismatch(orin, "10.13.3.9", "8.7") is None
    assert profile_mismatch(orin, "11.1.0", "8.7") == (
        "profile 'jetson-orin-nano' is for TensorRT >=10.3,<11, and this is TensorRT 11.1.0"
    )
    assert profile_mismatch(orin, "10.3.0", "7.5", "Tesla T4") == (
        "profile 'jetson-orin-nano' is for compute capability 8.7, and Tesla T4 is compute capability 7.5"
    )
    same = profile_from_dict("s", {"hardware_compatibility": "same_compute_capability"})
    assert "needs TensorRT >= 10.9" in str(profile_mismatch(same, "10.3.0", "8.7"))
    assert profile_mismatch(same, "10.9.0", "7.5") is None
    assert "compute capability >= 7.5" in str(profile_mismatch(same, "10.9.0", "7.0", "V100"))
    ampere = profile_from_dict("a", {"hardware_compatibility": "ampere_plus", "compute_capability": "8.0"})
    assert profile_mismatch(ampere, "10.3.0", "8.6") is None  # built anywhere Ampere+, runs on all of them
    assert "compute capability >= 8.0" in str(profile_mismatch(ampere, "10.3.0", "7.5"))


@pytest.mark.parametrize("spec", [">=10.3,<11", ">=10.0,<12", "<=10.9", "==10.13", ">10.3", ">=10.3.1", "<10.12.1"])
def test_the_scripts_version_tests_agree_with_version_in_range(spec):
    tests = " && ".join(version_tests(spec))
    for version in ("10.0.0", "10.3.0", "10.3.1", "10.9.2", "10.12.0", "10.13.3", "10.99.0", "11.0.0", "11.1.0"):
        major, minor, patch = map(int, version.split("."))
        code = major * 10000 + minor * 100 + patch
        done = subprocess.run(["bash", "-c", f"version={code}; {tests}"], capture_output=True)
        assert (done.returncode == 0) is version_in_range(version, spec), (spec, version)


def test_profile_batch_range_reads_the_engine():
    assert profile_batch_range((-1, 3, 64, 64), [(1, 3, 64, 64), (4, 3, 64, 64), (16, 3, 64, 64)]) == (1, 16)
    assert profile_batch_range((2, 3, 64, 64), []) == (2, 2)  # a static engine


def test_engines_are_ranked_by_their_sidecar():
    info = {"tensorrt": "10.3.0", "compute_capability": "8.7", "gpu": "Orin", "hardware_compatibility": "none"}
    assert engine_fit(info, "10.3.0.30", "8.7", "Orin") == (0, "")
    assert engine_fit(info, "10.3.0.30", "8.7", "Orin (nano)") == (1, "")
    assert engine_fit(info, "10.13.3", "8.7", "Orin") == (
        -1,
        "built with TensorRT 10.3.0, and this is TensorRT 10.13.3",
    )
    assert engine_fit(info, "10.3.0", "9.0", "H200") == (-1, "built for compute capability 8.7, and H200 is 9.0")
    assert engine_fit({**info, "hardware_compatibility": "ampere_plus"}, "10.3.0", "9.0", "H200") == (2, "")
    assert engine_fit({**info, "compute_capability": "unknown"}, "10.3.0", "9.0", "H200") == (3, "")


@pytest.mark.skipif(HAVE_TRT, reason="TensorRT is installed here")
def test_without_tensorrt_import_is_an_environment_error():
    # With tensorrt-stubs installed, `import tensorrt` succeeds as an empty namespace package:
    # the check must look for tensorrt.Builder, not trust the import.
    with pytest.raises(EnvironmentMissing, match="TensorRT"):
        import_tensorrt()


@pytest.fixture(scope="module")
def demo_with_profile(tmp_path_factory) -> Path:
    # --precision fp32: an fp32-only bundle, so the strongly typed branch must refuse fp16.
    return built(tmp_path_factory, *ORIN_FP32).path


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


def fake_trtexec(tmp_path: Path, version: str, banner: bool = True) -> Path:
    """A stand-in trtexec that reports ``version``, logs its arguments and writes the engine it is
    asked to save: the script under test is real bash."""
    fake = tmp_path / f"trtexec-{version}"
    help_line = f"&&&& RUNNING TensorRT.trtexec [TensorRT v{version}] # trtexec --help" if banner else "usage"
    fake.write_text(
        f'#!/usr/bin/env bash\nif [ "$1" = --help ]; then echo "{help_line}"; exit 0; fi\n'
        f'echo "$@" >> "{tmp_path}/calls.log"\n'
        'for a in "$@"; do case "$a" in --saveEngine=*) echo engine > "${a#--saveEngine=}";; esac; done\n'
    )
    fake.chmod(0o755)
    return fake


def fake_nvidia_smi(tmp_path: Path, line: str) -> str:
    """A folder holding a stand-in nvidia-smi printing ``line`` (name, compute_cap), for PATH."""
    folder = tmp_path / "smi"
    folder.mkdir(exist_ok=True)
    smi = folder / "nvidia-smi"
    smi.write_text(f'#!/usr/bin/env bash\necho "{line}"\n')
    smi.chmod(0o755)
    return f"{folder}:{os.environ['PATH']}"


def copy_bundle(bundle: Path, tmp_path: Path) -> Path:
    """A copy of a module fixture's bundle: the scripts write engines into the bundle they run in."""
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    return copy


def run_script(script: Path, tmp_path: Path, version: str | None, **env: str) -> subprocess.CompletedProcess[str]:
    """Run ``script`` (a module fixture's is copied first) with a stand-in trtexec of ``version``."""
    if not script.is_relative_to(tmp_path):
        script = copy_bundle(script.parent.parent, tmp_path) / "engines" / script.name
    if version is not None:
        env.setdefault("TRTEXEC", str(fake_trtexec(tmp_path, version)))
    return subprocess.run(
        ["bash", str(script)], capture_output=True, text=True, env={**os.environ, **env}, cwd=tmp_path, timeout=60
    )


def calls(tmp_path: Path) -> list[str]:
    log = tmp_path / "calls.log"
    return log.read_text().splitlines() if log.exists() else []


@pytest.mark.parametrize(("version", "code"), [("10.3", 0), ("10.9", 0), ("10.13", 4), ("11.1", 4)])
def test_build_script_picks_flags_by_the_device_version(demo_with_profile, tmp_path, version, code):
    script = demo_with_profile / "engines" / "build_jetson-orin-nano.sh"
    done = run_script(script, tmp_path, VERSIONS[version])
    assert done.returncode == code, done.stderr
    if code == 0:
        made = calls(tmp_path)
        assert len(made) == 2 and made[0].startswith("--onnx=onnx/model_p8.onnx --saveEngine=")
        first = made[0].split()
        assert "--fp16" in first and "--precisionConstraints=obey" in first and "--stronglyTyped" not in first
        assert "--skipInference" in first and "/norm/LayerNormalization:fp32" in made[0]
        assert any(w.startswith("--layerOutputTypes=") and "/norm/LayerNormalization:fp32" in w for w in first)
        # no nvidia-smi here: compute capability unknown, said so, and the cache name says only the version
        assert "nvidia-smi gave none here, not checked" in done.stderr
        assert f"--timingCacheFile=engines/jetson-orin-nano/timing_trt{version}.0.cache" in first
    elif version == "10.13":
        assert "needs an fp16 ONNX, and this bundle has fp32 ONNX only (p8, p16)" in done.stderr
        assert not calls(tmp_path)
    else:  # the profile is for TensorRT < 11
        assert "profile 'jetson-orin-nano' is for TensorRT >=10.3,<11, and this is TensorRT 11.1.0" in done.stderr


def test_the_script_writes_a_sidecar_the_runner_can_read(demo_with_profile, tmp_path):
    bundle = copy_bundle(demo_with_profile, tmp_path)
    done = run_script(
        bundle / "engines" / "build_jetson-orin-nano.sh",
        tmp_path,
        "100300",
        PATH=fake_nvidia_smi(tmp_path, "Orin, 8.7"),
    )
    assert done.returncode == 0, done.stderr
    assert "TensorRT 10.3.0 (trtexec at" in done.stdout and "GPU: Orin, compute capability: 8.7" in done.stdout
    engine = bundle / "engines" / "jetson-orin-nano" / "model_p8.engine"
    sidecar = read_sidecar(Path(str(engine) + ".json"))
    assert isinstance(sidecar, dict), sidecar
    assert set(sidecar) == {*SIDECAR_KEYS, "library"}  # library: since issue 24 (optional when read)
    assert sidecar["tensorrt"] == "10.3.0" and sidecar["gpu"] == "Orin" and sidecar["compute_capability"] == "8.7"
    from exporter.core.files import sha256_file

    assert sidecar["engine_sha256"] == sha256_file(engine)
    assert sidecar["onnx_sha256"] == sha256_file(bundle / "onnx" / "model_p8.onnx")
    assert sidecar["typing"] == "weak" and sidecar["timing_cache"] == "timing_sm87_trt10.3.0.cache"
    assert sidecar["shapes"] == {"min": [1, 3, 64, 64], "opt": [1, 3, 64, 64], "max": [4, 3, 64, 64]}
    assert engine_fit(sidecar, "10.3.0.30", "8.7", "Orin") == (0, "")


def test_the_script_refuses_a_gpu_the_profile_is_not_for(demo_with_profile, tmp_path):
    script = demo_with_profile / "engines" / "build_jetson-orin-nano.sh"
    done = run_script(script, tmp_path, "100300", PATH=fake_nvidia_smi(tmp_path, "Tesla T4, 7.5"))
    assert done.returncode == 4 and not calls(tmp_path)
    assert "profile 'jetson-orin-nano' is for compute capability 8.7, and Tesla T4 is compute capability 7.5" in (
        done.stderr
    )


def test_the_scripts_version_probe_says_what_it_looked_for(demo_with_profile, tmp_path):
    script = copy_bundle(demo_with_profile, tmp_path) / "engines" / "build_jetson-orin-nano.sh"
    done = run_script(script, tmp_path, None, TRTEXEC=str(tmp_path / "nowhere" / "trtexec"))
    assert done.returncode == 4 and "no trtexec at" in done.stderr and "TRTEXEC=/path/to/trtexec" in done.stderr
    silent = str(fake_trtexec(tmp_path, "0", banner=False))
    done = run_script(script, tmp_path, None, TRTEXEC=silent)
    assert done.returncode == 4 and "'TensorRT v<number>'" in done.stderr and "TENSORRT_VERSION=10.3.0" in done.stderr
    done = run_script(script, tmp_path, None, TRTEXEC=silent, TENSORRT_VERSION="10.3.0")
    assert done.returncode == 0, done.stderr
    assert "TensorRT 10.3.0" in done.stdout and len(calls(tmp_path)) == 2
    done = run_script(script, tmp_path, "8601")  # TensorRT 8.6.1 prints v8601
    assert done.returncode == 4 and "older than 10.0" in done.stderr


SAME_CC_PROFILE = 'precision = "fp32"\nhardware_compatibility = "same_compute_capability"\n'


@pytest.mark.parametrize(("version", "code"), [("10.3", 4), ("10.9", 0), ("10.13", 0), ("11.1", 0)])
def test_same_compute_capability_needs_tensorrt_10_9(demo_with_profile, tmp_path, version, code):
    from exporter.bundle.door import read_manifest
    from exporter.tensorrt.script import build_script
    from exporter.tensorrt.stage import engine_plan

    (tmp_path / "same.toml").write_text(SAME_CC_PROFILE)
    profile = load_profile(tmp_path / "same.toml")
    bundle = copy_bundle(demo_with_profile, tmp_path)
    script = bundle / "engines" / "build.sh"
    script.write_text(build_script(profile, engine_plan(bundle, read_manifest(bundle), profile)))
    done = run_script(script, tmp_path, VERSIONS[version])
    assert done.returncode == code, done.stderr
    if code:
        assert "hardware_compatibility = 'same_compute_capability' needs TensorRT >= 10.9" in done.stderr
        assert "(this is TensorRT 10.3.0)" in done.stderr and not calls(tmp_path)
    else:
        first = calls(tmp_path)[0].split()
        assert "--hardwareCompatibilityLevel=sameComputeCapability" in first
        assert ("--stronglyTyped" in first) is (version == "10.13")


INT8_PROFILE = """description = "t4, int8"
precision = "int8"
calibration = "demo"
compute_capability = "7.5"
[batch]
min = 1
opt = 4
max = 8
"""


@pytest.fixture(scope="module")
def int8_bundle(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("int8")
    (tmp / "t4-int8.toml").write_text(INT8_PROFILE)
    out = tmp / "b"
    result = run_cli("build", "-p", "16", "--profile", str(tmp / "t4-int8.toml"), "--out", str(out), "-q")
    assert result.exit_code == 0, result.output + result.stderr
    return out


@pytest.mark.parametrize(
    ("version", "flags"), [("10.3", ["--int8", "--fp16"]), ("10.13", ["--stronglyTyped"]), ("11.1", [])]
)
def test_int8_engines_are_built_from_the_qdq_onnx_under_either_typing(int8_bundle, tmp_path, version, flags):
    done = run_script(int8_bundle / "engines" / "build_t4-int8.sh", tmp_path, VERSIONS[version])
    assert done.returncode == 0, done.stderr
    (call,) = calls(tmp_path)
    assert call.startswith("--onnx=onnx/model_p16.int8.onnx")
    assert [w for w in call.split() if w in ("--int8", "--fp16", "--stronglyTyped")] == flags
    # the LayerNorm names pinned to FP32 are those of the int8 ONNX the engine is built from
    from exporter.tensorrt.stage import layernorm_node_names

    names = layernorm_node_names(int8_bundle / "onnx" / "model_p16.int8.onnx")
    assert names and (f"{names[-1]}:fp32" in call) is (version == "10.3")


def test_an_fp16_script_names_the_int8_onnx_the_bundle_has(int8_bundle, tmp_path):
    from exporter.bundle.door import read_manifest
    from exporter.tensorrt.script import build_script
    from exporter.tensorrt.stage import engine_plan

    profile = load_profile("t4")  # fp16: strongly typed TensorRT needs an fp16 ONNX
    script = tmp_path / "build.sh"
    script.write_text(build_script(profile, engine_plan(int8_bundle, read_manifest(int8_bundle), profile)))
    done = run_script(script, tmp_path, "101300")
    assert done.returncode == 4 and "this bundle has fp32 and int8 ONNX only (p16)" in done.stderr


def test_int8_script_refuses_a_float_only_bundle_under_either_typing(demo_with_profile, tmp_path):
    from exporter.bundle.door import read_manifest
    from exporter.tensorrt.script import build_script
    from exporter.tensorrt.stage import engine_plan

    (tmp_path / "t4-int8.toml").write_text(INT8_PROFILE)
    profile = load_profile(tmp_path / "t4-int8.toml")
    script = tmp_path / "build.sh"
    script.write_text(build_script(profile, engine_plan(demo_with_profile, read_manifest(demo_with_profile), profile)))
    for version in ("100300", "101300", "110100"):
        done = run_script(script, tmp_path, version)
        assert done.returncode == 4 and "precision int8 needs an int8 ONNX" in done.stderr
    assert not calls(tmp_path)


def test_a_static_batch_bundle_script_passes_no_shapes(tmp_path):
    out = tmp_path / "b"
    result = run_cli(
        "build", "-p", "16", "--batch", "2", "--profile", "t4", "--precision", "fp32", "--out", str(out), "-q"
    )
    assert result.exit_code == 0, result.output + result.stderr
    done = run_script(out / "engines" / "build_t4.sh", tmp_path, "100300")
    assert done.returncode == 0, done.stderr
    (call,) = calls(tmp_path)
    assert "Shapes=" not in call and "--onnx=onnx/model_p16.onnx" in call


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
