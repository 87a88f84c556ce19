"""Issue 22, class 6: a manifest's values are checked at the door (``parse_manifest``), not only
their types: finite mean, std, tolerances and passed statistics; ``img_size`` against the ONNX
input and the grid; a dynamic range that is ordered, made of multiples of the patch, checked once
at each end and run inside itself. ``inspect --json`` writes strict JSON."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from conftest import DYNAMIC, build_demo, built, edit_manifest, refused, run_cli

NAN, INF = float("nan"), float("inf")


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    return build_demo(tmp_path_factory, "values")


@pytest.fixture(scope="module")
def dynamic(tmp_path_factory) -> Path:
    return built(tmp_path_factory, *DYNAMIC, name="dynamic").path


def changed(bundle: Path, where: Path, change) -> Path:
    copy = Path(shutil.copytree(bundle, where))
    edit_manifest(copy, change)
    return copy


def set_in(path: tuple, value):
    def change(m: dict) -> None:
        node = m
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value

    return change


STATIC_CASES = [
    (("preprocessing", "mean"), [NAN, 0.5, 0.5], "preprocessing.mean"),
    (("preprocessing", "std"), [0.5, INF, 0.5], "preprocessing.std"),
    (("preprocessing", "crop_pct"), 1e-9, "preprocessing.crop_pct"),
    (("variants", 0, "parity", "max_abs"), NAN, "variants[0].parity"),
    (("variants", 1, "parity", "min_cosine"), NAN, "variants[1].parity"),
    (("variants", 0, "onnx", "tolerance", "atol"), INF, "variants[0].onnx.tolerance.atol"),
    (("variants", 0, "img_size"), [128, 128], "variants[0].grid"),
    (("variants", 2, "tokens"), 100000, "variants[2].tokens"),
]


@pytest.mark.parametrize(("path", "value", "named"), STATIC_CASES)
def test_values_that_contradict_are_refused_at_the_door(demo, tmp_path, path, value, named):
    bundle = changed(demo, tmp_path / "b", set_in(path, value))
    for command in (("inspect", str(bundle)), ("validate", str(bundle))):
        refused(run_cli(*command), named, "malformed")


def test_img_size_must_be_the_onnx_input_size(demo, tmp_path):
    def change(m: dict) -> None:
        m["variants"][0].update(img_size=[128, 128], grid=[16, 16], tokens=16 * 16 + 1)

    bundle = changed(demo, tmp_path / "b", change)
    refused(run_cli("predict", str(bundle), str(tmp_path), "--variant", "p8"), "variants[0].img_size", "64, 64")


def test_a_failed_check_may_record_its_nan_and_inspect_json_stays_strict(demo, tmp_path):
    def change(m: dict) -> None:
        m["variants"][0]["status"] = "failed"
        m["variants"][0]["parity"].update(passed=False, max_abs=NAN, p99_abs=INF)

    bundle = changed(demo, tmp_path / "b", change)
    result = run_cli("inspect", str(bundle), "--json")
    assert result.exit_code == 0, result.output + result.stderr

    def no_constants(token: str):
        raise AssertionError(f"not strict JSON: {token}")

    data = json.loads(result.stdout, parse_constant=no_constants)
    assert data["variants"][0]["parity"]["max_abs"] is None and data["variants"][0]["parity"]["p99_abs"] is None
    assert math.isclose(
        data["variants"][1]["parity"]["max_abs"],
        json.loads((demo / "manifest.json").read_text())["variants"][1]["parity"]["max_abs"],
    )


def dyn(key: str, value):
    return set_in(("variants", 0, "dynamic", key), value)


def test_predict_does_not_run_a_size_outside_the_range(dynamic, tmp_path):
    def change(m: dict) -> None:
        v = m["variants"][0]
        v.update(img_size=[512, 512], grid=[32, 32], tokens=32 * 32 + 1)
        v["dynamic"]["opt"] = [512, 512]

    bundle = changed(dynamic, tmp_path / "b", change)
    refused(run_cli("predict", str(bundle), str(tmp_path), "--variant", "p16"), "min <= opt <= max", "512")


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (dyn("min", [128, 128]), "min <= opt <= max"),
        (dyn("max", [72, 72]), "dynamic.max: [72, 72] is not a multiple"),
        (dyn("multiple_of", [8, 8]), "multiple_of"),
    ],
)
def test_validate_refuses_a_range_that_contradicts_itself(dynamic, tmp_path, change, named):
    bundle = changed(dynamic, tmp_path / "b", change)
    result = run_cli("validate", str(bundle))
    refused(result, named)
    assert "passed" not in result.stdout


def test_duplicate_check_sizes_are_refused_not_a_stopiteration(dynamic, tmp_path):
    bundle = changed(dynamic, tmp_path / "b", lambda m: m["variants"][0]["dynamic"]["checks"][1].update(size="min"))
    refused(run_cli("validate", str(bundle)), "one check at min and one at max")


def test_a_check_at_a_size_the_range_does_not_end_at_is_refused(dynamic, tmp_path):
    bundle = changed(
        dynamic, tmp_path / "b", lambda m: m["variants"][0]["dynamic"]["checks"][0].update(img_size=[48, 48])
    )
    refused(run_cli("validate", str(bundle)), "checks[0].img_size")


def test_the_sound_bundles_still_open(demo, dynamic):
    for bundle in (demo, dynamic):
        result = run_cli("validate", str(bundle))
        assert result.exit_code == 0, result.output + result.stderr
