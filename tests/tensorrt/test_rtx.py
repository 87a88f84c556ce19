"""TensorRT's own ONNX parser and builder on the CPU, with TensorRT-RTX from PyPI (the ``rtx`` extra,
in ``dev``): no mocks, the real library parses and builds the demo's files; the preflight of every
build, with and without TensorRT-RTX importable; our ``build_engine`` end to end up to the sidecar."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from exporter.bundle.door import Bundle
from exporter.bundle.engines import NotRunEngines
from exporter.bundle.manifest import PREFLIGHT
from exporter.core.errors import UsageError
from exporter.tensorrt.builder import build_engine
from exporter.tensorrt.library import TENSORRT, TENSORRT_RTX, library_problem
from exporter.tensorrt.preflight import preflight_file, preflight_shapes
from exporter.tensorrt.profile import BatchRange, ProfileError, load_profile, profile_from_dict
from exporter.tensorrt.sidecar import engine_fit, read_sidecar
from exporter.tensorrt.versions import (
    EngineShapes,
    check_precision,
    engine_problem,
    hardware_level_name,
    profile_mismatch,
    typing_mode,
)

from conftest import FP16_L4, HEADLINE, INT8, built, run_cli

# These tests are about the preflight: every build in them runs it on every file (conftest reuses
# the record of a file already preflighted elsewhere in the session).
pytestmark = pytest.mark.usefixtures("real_preflight")
HAVE_RTX = library_problem(TENSORRT_RTX) is None
needs_rtx = pytest.mark.skipif(not HAVE_RTX, reason=f"TensorRT-RTX: {library_problem(TENSORRT_RTX)}")
ROOT = Path(__file__).resolve().parents[2]
# A Python prelude that makes TensorRT-RTX's module unimportable, as on a machine without the extra.
BLOCK_RTX = textwrap.dedent(
    """
    import sys
    class _Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("tensorrt_rtx_bindings", "tensorrt_rtx_libs"):
                raise ImportError(f"blocked for a test: {name}")
    sys.meta_path.insert(0, _Block())
    from exporter.cli.app import main
    sys.argv = ["flexiexport", *sys.argv[1:]]
    main()
    """
)


def test_the_differences_live_in_the_library_records():
    assert TENSORRT.module == "tensorrt" and TENSORRT_RTX.module == "tensorrt_rtx_bindings"
    assert typing_mode("1.7.1.116", TENSORRT_RTX) == "strong"  # not "weak" for being "older than 10.12"
    assert typing_mode("10.3.0", TENSORRT) == "weak" and typing_mode("10.12.0", TENSORRT) == "strong"
    assert not TENSORRT_RTX.weak_flags((1, 7)) and TENSORRT.weak_flags((10, 3))
    assert not TENSORRT_RTX.passes_strong_flag((1, 7))
    assert hardware_level_name("none", (1, 7), TENSORRT_RTX) is None
    assert set(TENSORRT_RTX.compute_targets) >= {"8.6", "8.9", "12.0"} and "8.7" not in TENSORRT_RTX.compute_targets
    with pytest.raises(UsageError, match="builds strongly typed networks"):  # fp16 from an fp32 ONNX
        check_precision("1.7.1.116", "fp16", "fp32", ("fp32",), TENSORRT_RTX)


def test_rtx_profiles_and_what_they_refuse():
    for name, cc in (("rtx-ampere", "8.6"), ("rtx-ada", "8.9"), ("rtx-blackwell", "12.0")):
        profile = load_profile(name)
        assert profile.library == "tensorrt-rtx" and profile.compute_capability == cc
        assert profile_mismatch(profile, "1.7.1.116", None) is None  # RTX's own version numbers
        assert "TensorRT-RTX >=1.7,<2" in (profile_mismatch(profile, "2.0.0", None) or "")
    base = {"library": "tensorrt-rtx", "timing_cache": False}
    for extra, words in (
        ({"dla_core": 0, "compute_capability": "8.7"}, "DLA"),  # (also no 8.7 target)
        ({"timing_cache": True}, "timing caches are no-ops"),
        ({"hardware_compatibility": "ampere_plus"}, "hardware compatibility"),
        ({"compute_capability": "7.5"}, "builds for compute capability"),
        ({"precision": "bf16"}, "strongly typed"),
        ({"library": "tensorrt-rtx-2"}, "library must be one of"),
    ):
        with pytest.raises(ProfileError, match=words):
            profile_from_dict("x", {**base, **extra})
    assert profile_from_dict("x", base).tensorrt == ">=1.7,<2"  # the library's own default range


def antialiased_resize(path: Path) -> Path:
    """One antialiased Resize (what exporting timm's dynamic_img_size produces), valid ONNX."""
    scales = helper.make_tensor("scales", TensorProto.FLOAT, [4], [1, 1, 0.5, 0.5])
    node = helper.make_node(
        "Resize", ["pixel_values", "", "scales"], ["logits"], mode="linear", antialias=1, name="/pos_embed/Resize_aa"
    )
    graph = helper.make_graph(
        [node],
        "hostile",
        [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, ["batch", 3, 64, 64])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3, 32, 32])],
        [scales],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


SHAPES = EngineShapes((1, 3, 64, 64), (1, 3, 64, 64), (8, 3, 64, 64))


@needs_rtx
def test_antialiased_resize_is_refused_naming_the_node(tmp_path):
    result = preflight_file(antialiased_resize(tmp_path / "aa.onnx"), SHAPES).to_dict()
    assert result["ok"] is False and result["stage"] == "parse" and result["library"] == "TensorRT-RTX"
    (error,) = result["errors"]
    assert error["node"] == "/pos_embed/Resize_aa" and error["op"] == "Resize"
    assert "Antialiasing is not supported" in error["message"] and error["code"] == "UNSUPPORTED_NODE_ATTR"


@needs_rtx
def test_not_onnx_and_missing_file_are_refused_with_the_parsers_words(tmp_path):
    (tmp_path / "junk.onnx").write_bytes(b"\x00not onnx")
    for path in (tmp_path / "junk.onnx", tmp_path / "absent.onnx"):
        result = preflight_file(path, SHAPES).to_dict()
        assert result["ok"] is False and result["errors"] and result["errors"][0]["message"]


def preflights(bundle: Path) -> list[tuple[str, dict]]:
    manifest = Bundle.open(bundle).manifest
    return [(f"{v.label} {path}", p.to_dict()) for v in manifest.variants for path, p in v.preflights()]


@needs_rtx
@pytest.mark.parametrize("args", [HEADLINE + ("--quiet",), INT8, FP16_L4], ids=["fp32", "int8", "fp16-l4"])
def test_every_file_of_the_demo_is_parsed_and_built(tmp_path_factory, args):
    bundle = built(tmp_path_factory, *args).path
    found = preflights(bundle)
    reduced = "--precision" in args
    assert len(found) == (6 if reduced else 3), found
    for where, p in found:
        assert p["ok"] is True and p["stage"] == "built", (where, p)
        assert p["library"] == "TensorRT-RTX" and p["layers"] > 100 and p["engine_bytes"] > 100_000, where
        assert p["version"] == TENSORRT_RTX_version()
    b = load_profile("l4").batch if "l4" in args else BatchRange(1, 1, 8)  # the profile's, else the default
    batch = (b.min, b.opt, b.max)
    assert [found[0][1]["shapes"][k][0] for k in ("min", "opt", "max")] == list(batch)


def TENSORRT_RTX_version() -> str:
    import tensorrt_rtx_bindings

    return tensorrt_rtx_bindings.__version__


@needs_rtx
def test_dynamic_shared_weights_fp16_build_shows_the_column(tmp_path):
    out = tmp_path / "dyn"
    args = ("-p", "16", "--img-size", "dynamic:32-64", "--precision", "fp16", "--shared-weights", "--wide")
    result = run_cli("build", *args, "--out", str(out))
    assert result.exit_code == 0, result.output + result.stderr
    found = preflights(out)
    assert len(found) == 2 and all(p["ok"] for _, p in found), found
    shapes = found[0][1]["shapes"]
    assert shapes["min"][2:] == [32, 32] and shapes["max"][2:] == [64, 64]  # the image range too
    assert "trt" in result.output and "parsed and built 2 of 2 ONNX files" in result.output
    report = (out / "report.md").read_text()
    assert "parsed and built 2 of 2" in report and "| trt |" in report


@needs_rtx
def test_a_refused_file_is_exit_3_in_inspect_and_validate(tmp_path_factory, tmp_path):
    bundle = Path(shutil.copytree(built(tmp_path_factory, *HEADLINE, "--quiet").path, tmp_path / "b"))
    data = json.loads((bundle / "manifest.json").read_text())
    data["variants"][0]["onnx"][PREFLIGHT] = preflight_file(antialiased_resize(tmp_path / "aa.onnx"), SHAPES).to_dict()
    (bundle / "manifest.json").write_text(json.dumps(data))
    shown = run_cli("inspect", str(bundle))
    assert "/pos_embed/Resize_aa" in shown.output and "FAILED" in shown.output
    assert all(len(line) <= 80 for line in shown.output.splitlines() if "│" in line)
    checked = run_cli("validate", str(bundle))
    assert checked.exit_code == 3 and "Antialiasing is not supported" in checked.output


def test_build_without_tensorrt_rtx_says_it_was_skipped(tmp_path):
    out = tmp_path / "b"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", BLOCK_RTX, "build", "-p", "16", "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "TensorRT preflight skipped: TensorRT-RTX is not installed" in done.stdout
    assert "flexiexport[rtx]" in done.stdout
    ((_, p),) = preflights(out)
    assert "skipped" in p
    assert "–" in done.stdout  # the trt column's "not checked"


@needs_rtx
@pytest.mark.parametrize(
    ("args", "precision"), [(INT8, "fp32"), (FP16_L4, "fp16"), (INT8, "int8")], ids=["fp32", "fp16", "int8"]
)
def test_build_engine_runs_end_to_end_with_tensorrt_rtx(tmp_path_factory, tmp_path, args, precision):
    from exporter.tensorrt.stage import engine_plan

    opened = Bundle.open(built(tmp_path_factory, *args).path)
    extra = {"calibration": "demo"} if precision == "int8" else {}
    profile = profile_from_dict(
        "rtx-test", {"library": "tensorrt-rtx", "precision": precision, "timing_cache": False, **extra}
    )
    profile = profile_from_dict("rtx-test", {**_fields(profile), "compute_capability": "8.6"})
    assert engine_problem(profile) is None  # no GPU needed to build
    item = engine_plan(opened.root, opened.manifest, profile)[0]
    assert item.onnx.endswith(f".{precision}.onnx" if precision != "fp32" else f"{item.label}.onnx")
    engine = tmp_path / "model.engine"
    info = build_engine(opened.root / item.onnx, engine, profile, item.shapes)
    assert engine.stat().st_size > 100_000 and info.library == "TensorRT-RTX" and info.typing == "strong"
    sidecar = read_sidecar(tmp_path / "model.engine.json")
    assert isinstance(sidecar, dict) and sidecar["compute_capability"] == "8.6"
    assert sidecar["library"] == "TensorRT-RTX" and sidecar["timing_cache"] is None
    # a TensorRT runtime never takes it, nor TensorRT-RTX of another version
    assert engine_fit(sidecar, "10.13.0", "8.6", "GPU")[0] == -1
    assert engine_fit(sidecar, sidecar["tensorrt"], "8.6", "GPU", "TensorRT-RTX")[0] >= 0


def _fields(profile) -> dict:
    skip = {"name", "path", "batch"}
    data = {k: v for k, v in vars(profile).items() if k not in skip and v is not None}
    return data | {"batch": vars(profile.batch)}


@needs_rtx
def test_engine_command_builds_rtx_engines_on_the_cpu(tmp_path_factory, tmp_path):
    bundle = Path(shutil.copytree(built(tmp_path_factory, *FP16_L4).path, tmp_path / "b"))
    result = run_cli("engine", str(bundle), "--profile", "rtx-ampere", "-q")
    assert result.exit_code == 0, result.output + result.stderr
    entry = Bundle.open(bundle).manifest.engines["rtx-ampere"]
    assert isinstance(entry, NotRunEngines)
    assert entry.status == "built (not run)" and entry.library == "TensorRT-RTX"
    for label, v in entry.variants.items():
        assert (bundle / v.engine).is_file() and (bundle / (v.engine + ".json")).is_file(), label
        assert v.onnx.endswith(".fp16.onnx")
    assert not (bundle / "engines" / "build_rtx-ampere.sh").exists()  # no trtexec for TensorRT-RTX


def test_preflight_shapes_follow_the_record():
    class Record:
        static_batch = None
        img_size = (64, 64)
        img_range = ((32, 32), (128, 128))

    shapes = preflight_shapes(Record(), BatchRange(1, 8, 32))  # type: ignore[arg-type]
    assert shapes == EngineShapes((1, 3, 32, 32), (8, 3, 64, 64), (32, 3, 128, 128))
