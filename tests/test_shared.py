"""``--shared-weights``: one external-data file for the weights every variant shares."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from exporter.validate import ort_runner

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
