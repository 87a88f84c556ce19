"""``--shared-weights``: one external-data file for the weights every variant shares."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from exporter.build.runners import ort_runner

from conftest import run_cli


@pytest.fixture(scope="module")
def shared_bundle(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shared") / "b"
    result = run_cli("build", "-p", "8", "16", "32", "--shared-weights", "--out", str(out))
    assert result.exit_code == 0, result.output + result.stderr
    assert "shared weights: 25 tensors" in result.stdout
    return out


def test_one_copy_of_the_shared_tensors(shared_bundle):
    manifest = json.loads((shared_bundle / "manifest.json").read_text())
    shared = manifest["shared_weights"]
    assert (
        shared["path"] == "onnx/shared_weights.bin"
        and (shared_bundle / shared["path"]).stat().st_size == shared["bytes"]
    )
    assert shared["bundle_onnx_bytes_after"] < 0.55 * shared["bundle_onnx_bytes_before"]
    for v in manifest["variants"]:
        assert v["onnx"]["external_data"] == shared["path"] and v["status"] == "passed"
        model = onnx.load(str(shared_bundle / v["onnx"]["path"]), load_external_data=False)
        external = {t.name for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL}
        inline = {t.name for t in model.graph.initializer} - external
        assert len(external) == shared["tensors"]  # every shared tensor, matmul weights included
        assert any(name.startswith("onnx::MatMul") for name in external)
        assert "patch_embed.proj.weight" in inline and "pos_embed" in inline  # each variant keeps its own


def test_each_file_loads_on_its_own_and_validates(shared_bundle, tmp_path):
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(shared_bundle / "onnx" / "model_p16.onnx", alone)
    shutil.copy(shared_bundle / "onnx" / "shared_weights.bin", alone)
    x = np.zeros((1, 3, 64, 64), dtype=np.float32)
    assert np.array_equal(
        ort_runner(alone / "model_p16.onnx")(x), ort_runner(shared_bundle / "onnx" / "model_p16.onnx")(x)
    )
    result = run_cli("validate", str(shared_bundle), "--quiet")
    assert result.exit_code == 0, result.output + result.stderr


def test_a_changed_shared_file_fails_validation(shared_bundle, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(shared_bundle, copy)
    with open(copy / "onnx" / "shared_weights.bin", "r+b") as handle:
        handle.seek(100)
        handle.write(b"\x7f")
    result = run_cli("validate", str(copy), "--quiet")
    assert result.exit_code == 3 and "shared_weights.bin has changed since the build" in " ".join(result.stdout.split())


def test_the_wire_reader_finds_what_onnx_finds(shared_bundle):
    from exporter.bundle.onnxwire import external_tensors

    for path in sorted((shared_bundle / "onnx").glob("*.onnx")):
        model = onnx.load(str(path), load_external_data=False)
        expected = []
        for t in model.graph.initializer:
            if t.data_location == onnx.TensorProto.EXTERNAL:
                entries = {e.key: e.value for e in t.external_data}
                location, offset, length = entries["location"], int(entries["offset"]), int(entries["length"])
                expected.append((t.name, t.data_type, tuple(t.dims), location, offset, length))
        found = [(t.name, t.data_type, t.dims, t.location, t.offset, t.length) for t in external_tensors(path)]
        assert found == expected and len(found) == 25


def _unshared_without_prepacking(path: Path):  # the session sharing must equal bit for bit
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = 2
    options.add_session_config_entry("session.disable_prepacking", "1")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda x: session.run(None, {session.get_inputs()[0].name: x})[0]


def test_the_runtime_loads_the_shared_tensors_once(shared_bundle):
    from exporter.runtime import Bundle

    shared = Bundle.open(shared_bundle, share_weights=True).load_all("ort-cpu", threads=2)
    plain = Bundle.open(shared_bundle).load_all("ort-cpu", threads=2)
    values = [r.borrowed for r in shared.values()]
    assert all(len(v) == 25 and not plain[k].borrowed for k, v in zip(shared, values))
    assert all(v[name] is values[0][name] for v in values for name in v)  # one OrtValue for all sessions
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 64), dtype=np.float32)
    for label, runner in shared.items():
        unshared = _unshared_without_prepacking(shared_bundle / "onnx" / f"model_{label}.onnx")
        assert np.array_equal(runner(x), unshared(x))
        assert np.abs(runner(x) - plain[label](x)).max() < 1e-5  # prepacking changes the summation order


def test_shared_tensors_outside_the_shared_file_are_refused(shared_bundle, tmp_path):
    from exporter.core.errors import BundleError
    from exporter.runtime.sharing import SharedTensors

    sw = json.loads((shared_bundle / "manifest.json").read_text())["shared_weights"]
    shutil.copy(shared_bundle / sw["path"], tmp_path)
    tensors = SharedTensors(tmp_path / "shared_weights.bin", sw["sha256"])
    for key, value, message in [
        ("location", "../shared_weights.bin", "not the bundle's shared_weights.bin"),
        ("length", "4", "claims 4 bytes"),
        ("offset", str(sw["bytes"]), f"has {sw['bytes']} bytes"),
    ]:
        model = onnx.load(str(shared_bundle / "onnx" / "model_p16.onnx"), load_external_data=False)
        tensor = next(t for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL)
        next(e for e in tensor.external_data if e.key == key).value = value
        onnx.save(model, str(tmp_path / "model_p16.onnx"))
        with pytest.raises(BundleError, match=message):
            tensors.initializers(tmp_path / "model_p16.onnx")
    with pytest.raises(BundleError, match="has changed since the build"):
        SharedTensors(shared_bundle / sw["path"], "0" * 64)


def test_sharing_imports_no_torch_or_onnx(shared_bundle):
    from tests.bundle.test_reference import BLOCKED

    code = f"""
import sys
class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {BLOCKED!r}:
            raise ImportError(name + " is blocked in this test")
sys.meta_path.insert(0, Blocker())
import numpy as np
from exporter.runtime import Bundle
runners = Bundle.open(sys.argv[1], share_weights=True).load_all("ort-cpu", threads=1)
x = np.zeros((1, 3, 64, 64), dtype=np.float32)
print(sorted(k for k, r in runners.items() if r.details["shared_initializers"] == 25 and r(x).shape == (1, 10)))
"""
    result = subprocess.run([sys.executable, "-c", code, str(shared_bundle)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "['p16', 'p32', 'p8']"
