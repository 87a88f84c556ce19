"""Issue 22, class 7: the same limits in every command. ``predict`` caps --threads at the cores
and checks its budget batch against the memory estimate; bench's --runs, --warmup and
--min-seconds are bounded; tolerances are finite; a file onnxruntime or OpenVINO refuses is one
``error:`` line (exit 2); and ``serve`` works beside a Triton install that already holds a Python
backend stub (an installation we did not make is data too)."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import shutil
from pathlib import Path

import pytest
from PIL import Image

from exporter.core.machine import available_cores

from conftest import build_demo, refused, run_cli

HAS_OPENVINO = importlib.util.find_spec("openvino") is not None


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    return build_demo(tmp_path_factory, "limits")


@pytest.fixture()
def image(tmp_path) -> Path:
    path = tmp_path / "d.png"
    Image.new("RGB", (64, 64), (120, 30, 200)).save(path)
    return path


def test_predict_caps_threads_at_the_cores(demo, image, caplog):
    more = available_cores() + 1
    with caplog.at_level(logging.WARNING, "exporter.bundle.limits"):
        result = run_cli("predict", str(demo), str(image), "--variant", "p32", "--threads", str(more))
    assert result.exit_code == 0, result.output + result.stderr
    assert f"--threads {more} is more than the {available_cores()} cores available" in caplog.text


def test_predict_checks_its_budget_batch_against_the_memory_estimate(demo, image):
    result = run_cli("predict", str(demo), str(image), "--budget-ms", "5", "--batch", "100000000")
    refused(result, "batch 100000000", "needs about", "use a smaller --batch")


@pytest.mark.parametrize(
    ("option", "value", "words"),
    [
        ("--min-seconds", "inf", ("--min-seconds", "inf")),
        ("--min-seconds", "nan", ("--min-seconds", "nan")),
        ("--min-seconds", "-1", ("--min-seconds",)),
        ("--runs", "1000000000", ("--runs", "1000000000")),
        ("--runs", "0", ("--runs",)),
        ("--warmup", "1000000000", ("--warmup",)),
    ],
)
def test_bench_bounds_its_counts_and_seconds(demo, option, value, words):
    refused(run_cli("bench", str(demo), "--backends", "ort-cpu", option, value, "--quiet"), *words)


@pytest.mark.parametrize("value", ["inf", "nan", "1e9"])
def test_serve_waits_a_bounded_time_for_its_models(demo, value):
    refused(run_cli("serve", str(demo), "--port", "0", "--ready-timeout", value), "--ready-timeout", "86400")


@pytest.mark.parametrize("command", ["triton", "serve"])
def test_the_repository_batch_is_bounded(demo, tmp_path, command):
    out = ("--out", str(tmp_path / "repo")) if command == "triton" else ("--port", "0")
    refused(run_cli(command, str(demo), *out, "--max-batch", "1000000000"), "--max-batch", "4096")
    assert not (tmp_path / "repo").exists()


@pytest.mark.parametrize("value", ["nan", "inf"])
def test_tolerances_are_finite(tmp_path, value):
    refused(run_cli("build", "-p", "32", "--atol", value, "--out", str(tmp_path / "o")), "--atol", value)
    assert not (tmp_path / "o").exists()


@pytest.fixture()
def escaping(demo, tmp_path) -> Path:
    """The demo with p32's ONNX reading external data from outside its folder (sha256 updated:
    a bundle made that way on purpose), which both runtimes rightly refuse."""
    import onnx
    from onnx import TensorProto

    bundle = Path(shutil.copytree(demo, tmp_path / "b"))
    path = bundle / "onnx" / "model_p32.onnx"
    model = onnx.load(str(path))
    tensor = max(model.graph.initializer, key=lambda t: len(t.raw_data))
    size = len(tensor.raw_data)
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", "../../outside.bin"), ("offset", "0"), ("length", str(size))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    (tmp_path / "outside.bin").write_bytes(b"\0" * size)
    onnx.save(model, str(path))
    data = json.loads((bundle / "manifest.json").read_text())
    record = next(v for v in data["variants"] if v["label"] == "p32")
    record["onnx"]["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    (bundle / "manifest.json").write_text(json.dumps(data))
    return bundle


@pytest.mark.parametrize(
    "backend", ["ort-cpu", pytest.param("openvino", marks=pytest.mark.skipif(not HAS_OPENVINO, reason="no OpenVINO"))]
)
def test_a_file_the_runtime_refuses_is_one_error_line(escaping, image, backend):
    result = run_cli("predict", str(escaping), str(image), "--variant", "p32", "--backend", backend)
    line = refused(result, "model_p32.onnx", "outside")
    assert ("onnxruntime refuses" if backend == "ort-cpu" else "OpenVINO refuses") in line


def test_validate_names_the_refused_file_in_one_line(escaping):
    refused(run_cli("validate", str(escaping), "--quiet"), "onnxruntime refuses", "model_p32.onnx")


def pytriton_tree(tmp_path: Path) -> Path:
    """A copy of nvidia-pytriton's ``tritonserver`` layout (its Python backend and this Python's
    stub), with a ``triton_python_backend_stub`` in ``backends/python/`` as Triton's own set-up
    leaves it."""
    import sys

    from exporter.deploy.server import pytriton_root

    root = pytriton_root()
    if root is None or not (root / "tritonserver" / "backends" / "python").is_dir():
        pytest.skip("nvidia-pytriton is not installed")
    home = tmp_path / "tritonserver"
    shutil.copytree(root / "tritonserver" / "backends" / "python", home / "backends" / "python")
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = root / "tritonserver" / "python_backend_stubs" / version / "triton_python_backend_stub"
    (home / "python_backend_stubs" / version).mkdir(parents=True)
    shutil.copy2(stub, home / "python_backend_stubs" / version / stub.name)
    shutil.copy2(stub, home / "backends" / "python" / stub.name)  # where Triton's set-up puts one
    (home / "bin").mkdir()
    shutil.copy2(root / "tritonserver" / "bin" / "tritonserver", home / "bin" / "tritonserver")
    return home


def test_serve_prepares_its_backends_beside_an_install_that_holds_a_stub(tmp_path):
    from exporter.deploy.server import prepare_backends, wheel_install

    home = pytriton_tree(tmp_path)
    install = wheel_install(home / "bin" / "tritonserver")
    folder = prepare_backends(install, tmp_path / "work" / "backends")  # before: FileExistsError
    assert folder is not None
    linked = folder / "python" / "triton_python_backend_stub"
    assert linked.resolve() == install.stub.resolve()  # this Python's stub, not the install's
    assert (folder / "python" / "libtriton_python.so").resolve() == (
        home / "backends" / "python" / "libtriton_python.so"
    ).resolve()
