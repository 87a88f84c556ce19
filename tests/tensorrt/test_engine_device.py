"""The engine stage on the device, against the stand-ins of ``fake_device`` (no GPU, no TensorRT
here): the CUDA calls, the builder's version switches, the runner's checks, the timing cache,
the engine bench picks, and the whole ``flexiexport engine`` path where torch, timm, onnx and
onnxruntime cannot be imported (which is how the README's device install list was found)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import fake_device
import numpy as np
import pytest

from exporter.core.errors import BundleError, EnvironmentMissing, UsageError
from exporter.tensorrt.profile import load_profile, profile_from_dict
from exporter.tensorrt.versions import EngineShapes, trt_logger

from conftest import FP16_L4, INT8, ORIN_FP32, built, run_cli

SHAPES = EngineShapes((1, 3, 64, 64), (2, 3, 64, 64), (4, 3, 64, 64))
TESTS = Path(__file__).resolve().parent


@pytest.fixture
def device(monkeypatch):
    """Install both stand-ins; ``device(version=..., dtype=..., devices=..., cc=...)`` re-installs."""

    def install(version: str = "10.3.0.30", dtype: str = "float32", **gpu):
        monkeypatch.setitem(sys.modules, "tensorrt", fake_device.make_tensorrt(version, dtype))
        monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", fake_device.make_cudart(**gpu))
        trt_logger.cache_clear()
        fake_device.CALLS.clear()
        return sys.modules["tensorrt"]

    install()
    yield install
    trt_logger.cache_clear()


def test_gpu_identity_problem_and_errors_come_from_cudart(device):
    from exporter.tensorrt.gpu import gpu_identity, gpu_problem

    assert gpu_problem() is None
    assert gpu_identity() == gpu_identity(0) and gpu_identity().name == "Fake Orin"
    assert gpu_identity().compute_capability == "8.7"
    device(devices=0)
    assert gpu_problem() == "no CUDA GPU is visible (cudaGetDeviceCount found 0 devices)"
    device(devices=-1)
    assert (
        gpu_problem() == "no CUDA GPU is usable: CUDA cudaGetDeviceCount failed: cudaErrorNoDevice (a fake CUDA error)"
    )


def test_tensorrt_problem_needs_no_torch_and_refuses_tensorrt_8(device):
    from exporter.tensorrt.versions import tensorrt_problem

    assert tensorrt_problem() is None
    device(version="8.6.1")
    assert "TensorRT 8.6.1 is older than 10.0" in str(tensorrt_problem())
    device(devices=0)
    assert tensorrt_problem() == "no CUDA GPU is visible (cudaGetDeviceCount found 0 devices)"


def test_the_real_cuda_bindings_without_a_gpu_say_why():
    """Where cuda-python is installed (it comes with torch here) but no GPU or driver is."""
    from exporter.tensorrt.gpu import gpu_problem

    problem = gpu_problem()
    assert problem is None or problem.startswith(("no CUDA GPU is usable", "no CUDA GPU is visible"))


def test_stream_copies_and_buffers_are_checked(device):
    from exporter.tensorrt.gpu import DeviceBuffer, Stream

    stream, buffer = Stream(), DeviceBuffer(16)
    assert stream.handle == 0x5EED  # cudaStreamCreate's stream, never the default stream (0)
    x = np.arange(4, dtype=np.float32)
    out = np.empty(4, dtype=np.float32)
    stream.to_device(buffer, x)
    stream.to_host(out, buffer)
    stream.synchronize()
    assert np.array_equal(out, x)
    with pytest.raises(ValueError, match="cannot copy 32 bytes"):
        stream.to_device(buffer, np.zeros(8, dtype=np.float32))
    buffer.free()
    buffer.ptr = 12345  # a pointer cudaFree does not know
    with pytest.raises(EnvironmentMissing, match="CUDA cudaFree failed: cudaErrorInvalidValue"):
        buffer.free()


def build(tmp_path: Path, profile, shapes=SHAPES, **cache):
    from exporter.tensorrt.builder import build_engine

    onnx = tmp_path / "model_p8.onnx"
    onnx.write_bytes(b"not parsed by the stand-in")
    return build_engine(onnx, tmp_path / "model_p8.engine", profile, shapes, **cache)


@pytest.mark.parametrize(
    ("version", "network_flags", "builder_flags"),
    [
        ("10.3.0.30", 0, ["FP16", "INT8", "OBEY_PRECISION_CONSTRAINTS"]),
        ("10.13.3.9", 1 << 5, []),  # STRONGLY_TYPED
        ("11.1.0.106", 0, []),  # strongly typed by default: the flag is a deprecated no-op
    ],
)
def test_the_builder_switches_by_version(device, tmp_path, version, network_flags, builder_flags):
    device(version=version)
    profile = profile_from_dict("q", {"precision": "int8", "calibration": "demo", "timing_cache": False})
    info = build(tmp_path, profile)
    (built,) = [c for c in fake_device.CALLS if c[0] == "build"]
    assert built[1] == network_flags and built[2] == builder_flags
    (layers,) = [c[1] for c in fake_device.CALLS if c[0] == "layers"]
    pinned = [la for la in layers if la[1] == "float32"]
    assert pinned == ([("NORMALIZATION", "float32", {0: "float32"})] if builder_flags else [])
    assert info.typing == ("weak" if version.startswith("10.3") else "strong") and info.gpu == "Fake Orin"
    sidecar = json.loads((tmp_path / "model_p8.engine.json").read_text())
    assert sidecar["compute_capability"] == "8.7" and sidecar["tensorrt"] == version
    assert [c for c in fake_device.CALLS if c[0] == "Logger"] == [("Logger", 2)]  # one logger


def test_same_compute_capability_on_tensorrt_10_3_is_refused_not_an_attribute_error(device, tmp_path):
    profile = profile_from_dict("s", {"precision": "fp32", "hardware_compatibility": "same_compute_capability"})
    with pytest.raises(EnvironmentMissing, match=r"needs TensorRT >= 10\.9"):
        build(tmp_path, profile)
    device(version="10.9.0.34")
    build(tmp_path, profile)
    (built,) = [c for c in fake_device.CALLS if c[0] == "build"]
    assert built[3] == 2  # HardwareCompatibilityLevel.SAME_COMPUTE_CAPABILITY


def test_a_static_engine_has_no_optimisation_profile(device, tmp_path):
    from exporter.tensorrt.runner import engine_runner

    static = EngineShapes((2, 3, 64, 64), (2, 3, 64, 64), (2, 3, 64, 64), static=True)
    build(tmp_path, load_profile("jetson-orin-nano"), static)
    assert json.loads((tmp_path / "model_p8.engine").read_bytes())["shapes"] is None
    assert engine_runner(tmp_path / "model_p8.engine").batch_range == (2, 2)


def test_the_timing_cache_is_read_from_one_place_and_written_to_another(device, tmp_path, caplog):
    profile = load_profile("jetson-orin-nano")
    saved, out = tmp_path / "saved.cache", tmp_path / "out" / "new.cache"
    saved.write_bytes(b"timing-cache:10.3.0.30")
    info = build(tmp_path, profile, cache_in=saved, cache_out=out)
    assert out.read_bytes() == b"timing-cache:10.3.0.30" and info.timing_cache == "new.cache"
    assert "refused" not in caplog.text
    for foreign in (b"timing-cache:10.13.3.9", b"damaged"):  # another TensorRT's cache, or garbage
        saved.write_bytes(foreign)
        build(tmp_path, profile, cache_in=saved, cache_out=out)
        assert "TensorRT refused the timing cache" in caplog.text and out.read_bytes() == b"timing-cache:10.3.0.30"
        caplog.clear()


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_the_runner_checks_shapes_and_reads_the_engines_output_dtype(device, tmp_path, dtype):
    from exporter.tensorrt.runner import engine_runner

    device(dtype=dtype)
    build(tmp_path, load_profile("jetson-orin-nano"))
    runner = engine_runner(tmp_path / "model_p8.engine")
    assert runner.batch_range == (1, 4) and runner.output_dtype == np.dtype(dtype)
    x = np.random.default_rng(0).standard_normal((3, 3, 64, 64), dtype=np.float32)
    logits = runner(x)
    expected = np.resize(x.mean(axis=(2, 3)), (3, 10)).astype(dtype).astype(np.float32)
    assert logits.dtype == np.float32 and np.array_equal(logits, expected)
    assert ("execute_async_v3", 0x5EED) in fake_device.CALLS
    with pytest.raises(UsageError, match=r"batch 8 is outside model_p8.engine's optimisation profile \(1\.\.4\)"):
        runner(np.zeros((8, 3, 64, 64), dtype=np.float32))
    runner.batch_range = (1, 16)  # the engine itself still refuses: set_input_shape's False is not ignored
    with pytest.raises(UsageError, match=r"TensorRT refused input shape \[8, 3, 64, 64\]"):
        runner(np.zeros((8, 3, 64, 64), dtype=np.float32))


def test_an_engine_of_another_tensorrt_is_a_load_error(device, tmp_path):
    from exporter.core.errors import EngineLoadError
    from exporter.tensorrt.runner import engine_runner

    build(tmp_path, load_profile("jetson-orin-nano"))
    device(version="10.13.3.9")
    with pytest.raises(EngineLoadError, match="could not load model_p8.engine"):
        engine_runner(tmp_path / "model_p8.engine")


@pytest.fixture(scope="module")
def orin_bundle(tmp_path_factory) -> Path:
    return built(tmp_path_factory, *ORIN_FP32).path


def test_layernorm_names_are_read_without_onnx(orin_bundle, int8_and_fp16_files, tmp_path):
    import onnx

    from exporter.tensorrt.stage import layernorm_node_names

    for path in [orin_bundle / "onnx" / "model_p8.onnx", *int8_and_fp16_files]:
        model = onnx.load(str(path), load_external_data=False)
        expected = tuple(n.name for n in model.graph.node if n.op_type == "LayerNormalization")
        assert layernorm_node_names(path) == expected and expected, path.name
    damaged = tmp_path / "damaged.onnx"
    damaged.write_bytes((orin_bundle / "onnx" / "model_p8.onnx").read_bytes()[:5000])
    with pytest.raises(BundleError, match="damaged.onnx is not an ONNX file we can read"):
        layernorm_node_names(damaged)


@pytest.fixture(scope="module")
def int8_and_fp16_files(tmp_path_factory) -> list[Path]:
    """The p16 fp16 and int8 files of the session's reduced demo bundles."""
    files = []
    for args, precision in ((FP16_L4, "fp16"), (INT8, "int8")):
        path = built(tmp_path_factory, *args).path / "onnx" / f"model_p16.{precision}.onnx"
        assert path.is_file(), path
        files.append(path)
    return files


def place_engine(bundle: Path, label: str, plan_version: str, sidecar_version: str) -> Path:
    """An engine the stand-in TensorRT ``plan_version`` can load, as build_<profile>.sh leaves it:
    engine and sidecar, no manifest record."""
    from exporter.core.files import sha256_file

    engine = bundle / "engines" / "jetson-orin-nano" / f"model_{label}.engine"
    engine.parent.mkdir(parents=True, exist_ok=True)
    plan = {"fake": plan_version, "shapes": [[1, 3, 64, 64], [1, 3, 64, 64], [4, 3, 64, 64]], "dtype": "float16"}
    engine.write_text(json.dumps(plan))
    sidecar = {
        "engine": engine.name,
        "engine_sha256": sha256_file(engine),
        "onnx": f"model_{label}.onnx",
        "onnx_sha256": "0" * 64,
        "profile": "jetson-orin-nano",
        "precision": "fp16",
        "typing": "weak",
        "tensorrt": sidecar_version,
        "gpu": "Orin",
        "compute_capability": "8.7",
        "hardware_compatibility": "none",
        "shapes": plan["shapes"],
        "build_seconds": 1,
        "timing_cache": None,
    }
    Path(str(engine) + ".json").write_text(json.dumps(sidecar))
    return engine


def test_bench_picks_the_engine_whose_sidecar_fits_and_passes_over_the_rest(device, orin_bundle, tmp_path):
    from exporter.bundle.door import Bundle
    from exporter.core.errors import Unavailable
    from exporter.tensorrt.select import tensorrt_runner

    bundle = tmp_path / "b"
    shutil.copytree(orin_bundle, bundle)
    engine = place_engine(bundle, "p8", "10.3.0.30", "10.3.0")
    place_engine(bundle, "p16", "10.3.0.30", "10.13.3")  # its sidecar says another TensorRT
    opened = Bundle.open(bundle)
    p8, p16 = opened.manifest.variants
    runner = tensorrt_runner(opened, p8)
    assert runner.batch_range == (1, 4)  # type: ignore[attr-defined]
    with pytest.raises(Unavailable, match="p16: no engine in the bundle runs here .*built with TensorRT 10.13.3"):
        tensorrt_runner(opened, p16)
    engine.write_text(engine.read_text() + " ")  # no longer what its sidecar hashed
    with pytest.raises(Unavailable, match="has changed since the build"):
        tensorrt_runner(Bundle.open(bundle), p8)
    place_engine(bundle, "p8", "10.3.0.29", "10.3.0")  # fits by sidecar, but this TensorRT cannot load it
    with pytest.raises(Unavailable, match="could not load model_p8.engine"):
        tensorrt_runner(Bundle.open(bundle), p8)


def test_bench_skips_batches_outside_the_engines_profile(device, orin_bundle, tmp_path):
    from exporter.bundle.door import Bundle
    from exporter.measure.bench import bench_bundle
    from exporter.measure.options import BenchOptions

    bundle = tmp_path / "b"
    shutil.copytree(orin_bundle, bundle)
    place_engine(bundle, "p8", "10.3.0.30", "10.3.0")
    options = BenchOptions(batch_sizes=(1, 8), backends=("tensorrt",), warmup=0, min_runs=1, min_seconds=0, max_runs=1)
    report = bench_bundle(Bundle.open(bundle), options)
    assert [(t.variant, t.batch) for t in report.timings] == [("p8", 1)]
    reasons = [s.reason for s in report.skipped]
    assert "p8: batch 8 is outside the engine's profile (1..4), skipped" in reasons
    assert any(r.startswith("p16: the bundle has no TensorRT engines") for r in reasons)


def test_a_saved_timing_cache_is_used_only_when_its_hash_matches(orin_bundle, tmp_path, caplog):
    from exporter.bundle.door import Bundle
    from exporter.core.files import sha256_file
    from exporter.tensorrt.stage import saved_timing_cache

    bundle = tmp_path / "b"
    shutil.copytree(orin_bundle, bundle)
    cache = bundle / "engines" / "jetson-orin-nano" / "timing_sm87_trt10.3.0.cache"
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_bytes(b"timing")
    manifest = json.loads((bundle / "manifest.json").read_text())
    record = {"path": "engines/jetson-orin-nano/timing_sm87_trt10.3.0.cache", "sha256": sha256_file(cache)}
    manifest["engines"]["jetson-orin-nano"]["timing_cache"] = record
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    profile = load_profile("jetson-orin-nano")
    assert saved_timing_cache(Bundle.open(bundle), profile) == cache
    cache.write_bytes(b"changed")
    assert saved_timing_cache(Bundle.open(bundle), profile) is None and "not reusing the timing cache" in caplog.text


# Third-party modules the device path may import: this list is the README's Jetson install.
DEVICE_MODULES = {"click", "rich", "pydantic", "pydantic_core", "annotated_types", "typing_extensions", "numpy"}
DEVICE_MODULES |= {"typing_inspection", "tomli", "tensorrt", "cuda"}
PROBE = textwrap.dedent(
    """
    import json, sys
    AT_START = {m.split(".")[0] for m in sys.modules}  # what site's .pth files imported, not our code
    BLOCKED = ("torch", "torchvision", "timm", "onnx", "onnxruntime", "safetensors", "matplotlib", "PIL")
    class Blocker:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{name} is blocked in this test")
            return None
    sys.meta_path.insert(0, Blocker())
    sys.path.insert(0, sys.argv.pop(1))
    import fake_device
    fake_device.install()
    from exporter.cli.app import main
    try:
        main(sys.argv[1:])
    except SystemExit as exc:
        code = exc.code
    found = {m.split(".")[0] for m in sys.modules} - set(sys.stdlib_module_names) - AT_START
    print(json.dumps({"code": code, "modules": sorted(found)}))
    """
)


def test_flexiexport_engine_runs_with_tensorrt_cuda_python_numpy_only(orin_bundle, tmp_path):
    """The whole device path (plan, script, build, sidecars, runner, parity, manifest) with torch,
    timm, onnx and onnxruntime blocked. The stand-in engine's logits are not the model's, so the
    engines fail parity (exit 3): what is under test is what runs and what it imports."""
    bundle = tmp_path / "b"
    shutil.copytree(orin_bundle, bundle)
    for _ in ("first run", "second: the saved timing cache is read"):
        done = subprocess.run(
            [sys.executable, "-c", PROBE, str(TESTS), "engine", str(bundle), "--profile", "jetson-orin-nano"],
            capture_output=True,
            text=True,
            timeout=300,
        )
        result = json.loads(done.stdout.strip().splitlines()[-1])
        assert result["code"] == 3 and "Traceback" not in done.stderr, done.stderr
        assert "failed validation" in done.stderr
        third_party = {m for m in result["modules"] if not m.startswith(("_", "exporter", "fake_device", "cython"))}
        assert third_party <= DEVICE_MODULES, third_party - DEVICE_MODULES
    entry = json.loads((bundle / "manifest.json").read_text())["engines"]["jetson-orin-nano"]
    assert entry["status"] == "failed" and entry["gpu"] == "Fake Orin" and entry["tensorrt"] == "10.3.0.30"
    assert entry["timing_cache"]["path"] == "engines/jetson-orin-nano/timing_sm87_trt10.3.0.cache"
    assert entry["variants"]["p8"]["engine"] == "engines/jetson-orin-nano/model_p8.engine"
    result = run_cli("inspect", str(bundle))  # the bundle door accepts what engine wrote
    assert result.exit_code == 0, result.output + result.stderr


def test_the_runtime_runs_the_engine_that_fits_with_its_batch_limits(device, orin_bundle, tmp_path):
    """``exporter.runtime``'s TensorRT backend: bench's sidecar choice, the profile's batch range
    as the runner's limit, and backend auto preferring TensorRT where it runs (stand-in device)."""
    from exporter.core.errors import EnvironmentMissing, UsageError
    from exporter.runtime import Bundle

    bundle = tmp_path / "b"
    shutil.copytree(orin_bundle, bundle)
    place_engine(bundle, "p8", "10.3.0.30", "10.3.0")
    opened = Bundle.open(bundle)
    runner = opened.runner("p8", "tensorrt")
    assert (runner.backend, runner.max_batch, runner.static_batch) == ("tensorrt", 4, None)
    with pytest.raises(UsageError, match="takes batches up to 4, got 5"):
        runner(np.zeros((5, 3, *opened.record("p8").img_size), dtype=np.float32))
    with pytest.raises(EnvironmentMissing, match="p16: the bundle has no TensorRT engines"):
        opened.runner("p16", "tensorrt")
    assert opened.resolve_backend("auto") == "tensorrt"
