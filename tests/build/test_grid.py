"""A grid of variants (patch x image size) and the accuracy/latency frontier (issue #15)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from exporter.build.variant import plan_grid
from exporter.core.errors import ImageSizeError
from exporter.core.machine import machine_key
from exporter.measure.frontier import Point, frontier
from exporter.runtime.measurements import accuracies

from conftest import GRID, QUICK_BENCH, built, one_line_error, run_cli


def test_a_grid_keeps_the_pairs_that_can_exist_and_names_the_others():
    plan = plan_grid(((8, 8), (16, 16), (32, 32)), ((48, 48), (64, 64), (96, 96)))
    assert len(plan.pairs) == 8 and ((32, 32), (48, 48)) not in plan.pairs
    assert plan.impossible == ("p32_48: patch 32 does not tile image 48 (sizes that fit it: 32 or 64)",)
    with pytest.raises(ImageSizeError, match="no .* pair can exist: p32_48: .*; p32_20: .*sizes that fit it: 32"):
        plan_grid(((32, 32),), ((48, 48), (20, 20)))


def test_the_frontier_marks_non_dominated_variants_and_their_costs():
    points = [Point("a", 0.90, 1.0), Point("b", 0.95, 2.0), Point("c", 0.80, 1.5), Point("d", 0.95, 3.0)]
    rows = {r.point.variant: r for r in frontier(points)}
    assert [r.point.variant for r in frontier(points)] == ["a", "c", "b", "d"]  # fastest first
    assert rows["a"].on_frontier and rows["b"].on_frontier
    assert not rows["c"].on_frontier and rows["c"].cost() == "dominated by a"
    assert not rows["d"].on_frontier and rows["d"].dominated_by == "b"  # as accurate, slower
    assert rows["a"].cost() == "fastest"
    assert rows["b"].cost() == "+1 ms (+100%) for +5.0 pt over a"


def test_accuracy_for_a_bench_backend_comes_from_its_own_rows_else_onnxruntime():
    rows = [
        {"backend": "pytorch", "variant": "p8", "top1": 0.5},
        {"backend": "onnxruntime", "variant": "p8", "top1": 0.6},
        {"backend": "openvino", "variant": "p8", "top1": 0.7},
        {"backend": "pytorch", "variant": "p16", "top1": 0.4},
    ]
    assert accuracies({"results": rows}, "ort-cpu") == {"p8": 0.6, "p16": 0.4}
    assert accuracies({"results": rows}, "openvino") == {"p8": 0.7, "p16": 0.4}
    assert accuracies(None, "ort-cpu") == {} and accuracies({"results": "x"}, "ort-cpu") == {}


@pytest.fixture(scope="module")
def grid(tmp_path_factory) -> tuple[Path, str]:
    """The session's grid demo (shared with test_80_columns: never changed here) and its build's stderr."""
    grid = built(tmp_path_factory, *GRID, name="grid")
    return grid.path, grid.result.stderr


def test_the_demo_builds_the_grid_that_can_exist(grid):
    out, stderr = grid
    manifest = json.loads((out / "manifest.json").read_text())
    labels = [v["label"] for v in manifest["variants"]]
    assert labels == ["p16_48", "p16_64", "p32_64"]
    assert [v["img_size"] for v in manifest["variants"]] == [[48, 48], [64, 64], [64, 64]]
    assert all(v["status"] == "passed" for v in manifest["variants"])
    assert sorted(p.name for p in (out / "onnx").iterdir()) == [f"model_{x}.onnx" for x in sorted(labels)]
    assert manifest["options"]["img_size_policy"] == [[48, 48], [64, 64]]
    assert manifest["options"]["impossible_variants"] == [
        "p32_48: patch 32 does not tile image 48 (sizes that fit it: 32 or 64)"
    ]
    assert "left out p32_48: patch 32 does not tile image 48" in stderr
    assert run_cli("validate", str(out)).exit_code == 0  # the bundle door and parity take the new labels


def test_one_image_size_keeps_todays_labels(tmp_path):
    from exporter.build.options import BuildOptions

    options = BuildOptions(patch_sizes=((16, 16),), img_sizes=((64, 64),))
    assert options.img_size == (64, 64) and options.img_sizes == ()


def test_a_grid_with_no_possible_pair_is_refused_before_loading(tmp_path):
    result = run_cli("build", "-p", "32", "--img-size", "48", "40", "--out", str(tmp_path / "x"))
    assert result.exit_code == 2
    assert "no (patch, image size) pair can exist: p32_48" in one_line_error(result)
    result = run_cli("build", "-p", "16", "--img-size", "48", "auto", "--out", str(tmp_path / "x"))
    assert result.exit_code == 2 and "several image sizes must all be N or HxW" in result.stderr


def test_evaluate_and_bench_give_the_frontier_and_the_budget_picks_from_it(grid, tmp_path):
    copy = tmp_path / "b"
    shutil.copytree(grid[0], copy)
    result = run_cli("evaluate", str(copy), "--limit", "40", "-q")
    assert result.exit_code == 0, result.output + result.stderr
    result = run_cli("bench", str(copy), "--backends", "ort-cpu", "--batch-sizes", "1", *QUICK_BENCH)
    assert result.exit_code == 0, result.output + result.stderr
    assert "frontier on ort-cpu, batch 1" in result.stdout and "★" in result.stdout
    assert (copy / "tradeoff.png").stat().st_size > 0

    # measured numbers decide, not tokens: p32_64 (5 tokens) is the most accurate here
    evaluation = {
        "results": [
            {"backend": "onnxruntime", "variant": v, "top1": a}
            for v, a in (("p16_48", 0.5), ("p16_64", 0.9), ("p32_64", 0.95))
        ]
    }
    (copy / "eval.json").write_text(json.dumps(evaluation))
    timings = [
        {"backend": "ort-cpu", "variant": v, "batch": 1, "p50_ms": ms / 2, "p99_ms": ms}
        for v, ms in (("p16_48", 1.0), ("p16_64", 2.0), ("p32_64", 3.0))
    ]
    (copy / "bench.json").write_text(json.dumps({"machine": {"cpu": machine_key()["cpu"]}, "timings": timings}))
    from exporter.runtime import Bundle

    bundle = Bundle.open(copy)
    assert bundle.ranked("ort-cpu") == ["p32_64", "p16_64", "p16_48"]
    for budget, expected in ((5.0, "p32_64"), (2.5, "p16_64"), (1.5, "p16_48")):
        assert bundle.model(budget_ms=budget, backend="ort-cpu").variant == expected
