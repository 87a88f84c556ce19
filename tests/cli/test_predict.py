"""``flexiexport predict`` as a new user meets it: no flags runs the most accurate variant and says
which, a patch size names its variant, errors speak in flags, a precision the bundle lacks is one
line saying what to build (``serve`` too)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import build_demo, copy_into, one_line_error, refused, run_cli

DIGIT = Path(__file__).resolve().parents[2] / "docs" / "digit.png"  # a held-out demo 3, white on black


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    return copy_into(build_demo(tmp_path_factory), tmp_path_factory.mktemp("predict"))


def test_no_variant_and_no_budget_runs_the_most_accurate_and_says_which(demo, tmp_path):
    result = run_cli("predict", str(demo), str(DIGIT))
    assert result.exit_code == 0, result.output + result.stderr
    # No eval.json: ranked by tokens, as the Triton entry model ranks them.
    assert result.stderr.strip() == "no --variant or --budget-ms: p8 (most tokens; no eval.json to rank by accuracy)"
    assert result.stdout.startswith("p8 on ") and f"{DIGIT}: 3 (" in result.stdout

    measured = copy_into(demo, tmp_path)
    top1 = {"p8": 0.9, "p16": 0.95, "p32": 0.99}
    rows = [{"backend": "onnxruntime", "variant": k, "top1": v} for k, v in top1.items()]
    (measured / "eval.json").write_text(json.dumps({"results": rows}))
    result = run_cli("predict", str(measured), str(DIGIT), "--json")
    assert result.exit_code == 0, result.output + result.stderr
    assert json.loads(result.stdout)["variant"] == "p32"
    assert result.stderr.strip() == "no --variant or --budget-ms: p32 (most accurate in eval.json)"


@pytest.mark.parametrize("given", ["16", "16x16", "p16x16", "p16"])
def test_a_patch_size_names_its_variant(demo, given):
    result = run_cli("predict", str(demo), str(DIGIT), "--variant", given)
    assert result.exit_code == 0, result.output + result.stderr
    assert result.stdout.startswith("p16 on ") and result.stderr == ""


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ("--variant", "p8", "--budget-ms", "3"),
            "give either --variant (e.g. --variant p16) or --budget-ms MS, not both",
        ),
        (("--budget-ms", "-1"), "--budget-ms must be a positive number of milliseconds, got -1"),
        (("--batch", "0", "--budget-ms", "5"), "--batch must be at least 1, got 0"),
        (("--variant", "7"), "no variant '7' in the bundle; it has p8, p16, p32"),
    ],
)
def test_errors_speak_in_flags(demo, args, message):
    assert refused(run_cli("predict", str(demo), str(DIGIT), *args)) == f"error: {message}"


def test_a_precision_the_bundle_lacks_is_exit_2_saying_what_to_build(demo):
    wanted = "error: build with --precision fp16: the bundle has no fp16 ONNX (it has fp32)"
    for args in ((), ("--variant", "p16"), ("--backend", "ort-cpu")):
        result = run_cli("predict", str(demo), str(DIGIT), "--precision", "fp16", *args)
        assert result.exit_code == 2 and one_line_error(result) == wanted, result.stderr
    result = run_cli("serve", str(demo), "--precision", "fp16")  # refused before any server starts
    assert result.exit_code == 2 and one_line_error(result) == wanted, result.stderr
