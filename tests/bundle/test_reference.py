"""The bundle carries its PyTorch reference: ``validate`` and ``engine`` need no torch, timm, onnx
or checkpoint, and judge with the same numbers as the full rebuild."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from exporter.build.inputs import InputPlan
from exporter.build.options import BuildOptions
from exporter.build.recheck import recheck_bundle, record_spec
from exporter.bundle.door import Bundle
from exporter.bundle.reference import load_reference, normalize
from exporter.measure.validate import check_bundle
from exporter.source.load import load_source
from exporter.source.model import SourceSpec

from conftest import build_demo, run_cli

BLOCKED = ("torch", "torchvision", "timm", "onnx", "tensorrt")
# Runs the CLI with those imports refused, the way a Jetson with only numpy and onnxruntime is.
NO_TORCH = textwrap.dedent(
    f"""
    import sys
    class Blocker:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {BLOCKED!r}:
                raise ImportError(f"{{name}} is blocked in this test")
            return None
    sys.meta_path.insert(0, Blocker())
    from exporter.cli.app import main
    main(sys.argv[1:])
    """
)


def run_without_torch(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", NO_TORCH, *args], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    return build_demo(tmp_path_factory, "reference")


def test_the_reference_rebuilds_the_build_inputs_bit_for_bit(demo):
    opened = Bundle.open(demo)
    source = load_source(SourceSpec())
    plan = InputPlan.for_build(BuildOptions(patch_sizes=((16, 16),)), source.name).with_source(source)
    for record in opened.manifest.variants:
        reference, pre = record.reference, opened.manifest.preprocessing
        assert reference is not None
        path = opened.file(reference.path, reference.sha256)
        stored, logits = load_reference(path, reference, record.img_size, pre.mean, pre.std)
        planned = plan.parity(record_spec(record))
        assert np.array_equal(stored.arrays(), planned.arrays())
        assert stored.random_count == 16 and len(stored.pixels) == 16 and logits.shape == (32, 10)
        assert reference.real.model_dump(by_alias=True) == {"count": 16, "from": "held-out demo digits"}


def test_the_stored_reference_gives_the_numbers_of_the_full_rebuild(demo):
    stored, rebuilt = check_bundle(demo), recheck_bundle(demo)
    for a, b in zip(stored, rebuilt):
        assert a and b and a.label == b.label
        assert a.comparison is not None and b.comparison is not None
        assert a.comparison.samples == b.comparison.samples == 32
        assert abs(a.comparison.max_abs - b.comparison.max_abs) < 1e-6
        assert abs(a.comparison.min_cosine - b.comparison.min_cosine) < 1e-9


def test_validate_judges_against_the_stored_logits(demo, tmp_path):
    """Wrong logits in the reference (manifest hash updated to match) fail validation: the
    stored numbers are what the ONNX is judged against."""
    copy = tmp_path / "b"
    shutil.copytree(demo, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    record = manifest["variants"][1]
    path = copy / record["reference"]["path"]
    with np.load(path) as data:
        logits, pixels = data["logits"], data["pixels"]
    np.savez(path, logits=logits + 0.01, pixels=pixels)
    from exporter.core.files import sha256_file

    record["reference"]["sha256"] = sha256_file(path)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    result = run_cli("validate", str(copy))
    assert result.exit_code == 3 and "p16" in result.stderr
    assert "max|Δ| 1.00e-02" in result.stdout


def test_a_tampered_reference_is_a_file_problem(demo, tmp_path):
    copy = tmp_path / "b"
    shutil.copytree(demo, copy)
    with open(copy / "reference" / "model_p8.npz", "r+b") as handle:
        handle.seek(-8, 2)
        handle.write(b"\xff" * 8)
    result = run_cli("validate", str(copy))
    assert result.exit_code == 3
    assert re.search(r"│ ✗ │ p8 +│ MISMATCH │", result.stdout), result.stdout
    assert "model_p8.npz has changed" in " ".join(result.stdout.split())


def test_normalize_matches_the_build_preprocessing():
    pixels = np.arange(2 * 4 * 5 * 3, dtype=np.uint8).reshape(2, 4, 5, 3)
    x = normalize(pixels, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    expected = (pixels.transpose(0, 3, 1, 2).astype(np.float32) / 255.0 - 0.456) / 0.224
    assert x.dtype == np.float32 and x.shape == (2, 3, 4, 5)
    assert np.allclose(x[:, 1], expected[:, 1], atol=1e-6)


def test_validate_and_engine_run_where_torch_timm_and_onnx_cannot_be_imported(demo):
    result = run_without_torch("validate", str(demo))
    assert result.returncode == 0, result.stderr
    assert "all 3 variants passed" in result.stdout and "Traceback" not in result.stderr
    result = run_without_torch("engine", str(demo), "--profile", "t4")
    assert result.returncode == 4, result.stderr
    assert "TensorRT is not installed" in result.stderr and "Traceback" not in result.stderr
    result = run_without_torch("validate", str(demo), "--rebuild")
    assert result.returncode == 4 and "validate --rebuild needs PyTorch and timm" in result.stderr


def test_engine_without_tensorrt_points_at_a_script_only_when_there_is_one(demo):
    """The demo was built without --profile: there is no build_t4.sh to run."""
    result = run_cli("engine", str(demo), "--profile", "t4")
    assert result.exit_code == 4
    assert "rebuild the bundle with --profile t4" in result.stderr and "build_t4.sh" not in result.stderr
