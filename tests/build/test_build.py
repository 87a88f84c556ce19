"""``flexiexport build`` on the shipped demo: the bundle, inspect, validate, resume and refusals."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest

from exporter.source.demo import DEMO_WEIGHTS
from exporter.source.load import sha256_file

from conftest import HEADLINE, built, edit_manifest, markdown_tables, one_line_error, run_cli


def tree_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): sha256_file(p) for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def demo_bundle(tmp_path_factory) -> Path:
    demo = built(tmp_path_factory, *HEADLINE, "--quiet")
    assert demo.result.stdout.startswith("✓ flexivit-demo: 3 of 3 variants passed; bundle written to")
    return demo.path


def test_headline_bundle_layout_and_manifest(demo_bundle):
    manifest = json.loads((demo_bundle / "manifest.json").read_text())
    assert manifest["schema_version"] == 1 and manifest["name"] == "flexivit-demo"
    assert set(manifest["versions"]) >= {"flexiexport", "torch", "timm", "onnx", "onnxruntime"}
    src = manifest["source"]
    assert src["sha256"] == sha256_file(DEMO_WEIGHTS) and src["architecture"]["kernel_size"] == [32, 32]
    assert src["architecture"]["pos_grid"] == [8, 8] and src["architecture"]["family"] == "flexivit"
    assert manifest["preprocessing"]["mean"] == [0.5, 0.5, 0.5] and manifest["preprocessing"]["crop_pct"] == 1.0
    assert "held-out demo digits" in manifest["options"]["parity_inputs"]
    assert [v["label"] for v in manifest["variants"]] == ["p8", "p16", "p32"]
    for v, grid in zip(manifest["variants"], (8, 4, 2)):
        assert v["status"] == "passed" and v["img_size"] == [64, 64] and v["grid"] == [grid, grid]
        assert v["tokens"] == grid * grid + 1 and v["gflops"] > 0
        assert (v["patch_resize"], v["pos_resize"]) == ("bilinear", "bilinear+antialias")
        onnx_file = demo_bundle / v["onnx"]["path"]
        assert sha256_file(onnx_file) == v["onnx"]["sha256"] and v["onnx"]["opset"] == 17
        assert v["onnx"]["inputs"] == [{"name": "pixel_values", "dtype": "float32", "shape": ["batch", 3, 64, 64]}]
        assert v["onnx"]["outputs"] == [{"name": "logits", "dtype": "float32", "shape": ["batch", 10]}]
        assert v["onnx"]["op_counts"]["LayerNormalization"] == 2 * 4 + 1
        p = v["parity"]
        assert p["passed"] and p["samples"] == 32 and p["max_abs"] <= 1e-4 and p["min_cosine"] >= 0.99999
        assert p["top1_agreement"] == 1.0 and {"p99_abs", "mean_rel", "top5_agreement"} <= set(p)
    assert not list(demo_bundle.parent.glob(".*tmp-*"))


def test_report_has_the_same_table(demo_bundle):
    report = (demo_bundle / "report.md").read_text()
    assert "| ✓ | p8 | 64 | 8x8 | 65 |" in report and "| ✓ | p32 | 64 | 2x2 | 5 |" in report
    assert "Overall: PASSED" in report


def test_quiet_prints_one_summary_line(tmp_path):
    """``-q`` used to print the whole table."""
    result = run_cli("build", "-p", "16", "--parity-samples", "2", "--out", str(tmp_path / "b"), "-q")
    assert result.exit_code == 0, result.output + result.stderr
    assert result.stdout.splitlines() == [
        f"✓ flexivit-demo: 1 of 1 variants passed; bundle written to {tmp_path / 'b'} in "
        + result.stdout.split(" in ")[-1].strip()
    ]
    assert result.stderr == ""


def test_the_variant_table_is_readable_at_80_columns(demo_bundle):
    """At 80 (or 100) columns Rich cut every number of the 13-column table to '…'."""
    from rich.console import Console

    from exporter.bundle.report import TABLE_HEADER, shown_columns, variant_rows
    from exporter.bundle.schema import parse_manifest
    from exporter.cli.render import print_table

    manifest = parse_manifest((demo_bundle / "manifest.json").read_text())
    out = Console(width=80, record=True)
    print_table(manifest, f"{manifest.name} → {demo_bundle}", out=out)
    text = out.export_text()
    assert "…" not in text, text
    assert max(len(line) for line in text.splitlines()) <= 80
    rows = variant_rows(manifest)
    shown = [TABLE_HEADER[i] for i in shown_columns(manifest, rows)]
    assert {"variant", "cosine", "top-1", "native"} <= set(shown), shown  # what a column of its own must not push out
    for row in rows:
        for header, cell in zip(TABLE_HEADER, row):
            assert cell in text or header not in shown, (header, cell)
    assert "p99|Δ|" not in text and "model_p8.onnx" not in text
    wide = Console(width=200, record=True)
    print_table(manifest, "variants", wide=True, out=wide)
    wide_text = wide.export_text()
    missing = [cell for row in variant_rows(manifest) for cell in row[1:] if cell not in wide_text]
    assert not missing, missing


def test_inspect_wide_and_piped_tables_are_whole(demo_bundle):
    result = run_cli("inspect", str(demo_bundle), "--wide")
    assert result.exit_code == 0
    assert "p99|Δ|" in result.stdout and "model_p8.onnx" in result.stdout
    table = result.stdout[result.stdout.index("variants") :]
    assert "…" not in table, table


def test_report_tables_render_as_tables(demo_bundle):
    """``max|Δ|`` in a header used to split the cell: GitHub showed the report's table as text."""

    from exporter.bundle.report import TABLE_HEADER, render_report
    from exporter.bundle.schema import parse_manifest

    report = (demo_bundle / "report.md").read_text()
    assert markdown_tables(report) == [[len(TABLE_HEADER)] * 4]
    manifest = parse_manifest((demo_bundle / "manifest.json").read_text())
    first = manifest.variants[0]  # a label and path the door refuses: the report escapes them all the same
    odd = first.model_copy(update={"label": "p8|x", "onnx": first.onnx.model_copy(update={"path": "onnx/a|b.onnx"})})
    rendered = render_report(manifest.model_copy(update={"variants": (odd,)}))
    assert markdown_tables(rendered) == [[len(TABLE_HEADER)] * 2]
    assert "p8\\|x" in rendered


def test_exported_graphs_are_checked_and_reproduce_demo_accuracy(demo_bundle):
    """The ONNX variants classify the held-out digits as well as the model card says."""
    from exporter.build.runners import ort_runner
    from exporter.parity.compare import run_batched
    from exporter.source.demo import digits_to_pixels, load_demo_digits

    card = json.loads(DEMO_WEIGHTS.with_suffix(".json").read_text())["training"]["heldout_top1"]
    digits, labels = load_demo_digits("test")
    pixels = digits_to_pixels(digits)
    for p in (8, 16, 32):
        path = demo_bundle / "onnx" / f"model_p{p}.onnx"
        onnx.checker.check_model(str(path), full_check=True)
        accuracy = float(np.mean(run_batched(ort_runner(path), pixels, 64).argmax(1) == labels))
        assert accuracy == pytest.approx(card[str(p)], abs=0.006)
        assert accuracy >= 0.90


def test_inspect(demo_bundle):
    result = run_cli("inspect", str(demo_bundle))
    assert result.exit_code == 0
    assert "flexivit-demo" in result.stdout and "p16" in result.stdout and "passed" in result.stdout
    raw = run_cli("inspect", str(demo_bundle), "--json")
    assert json.loads(raw.stdout)["name"] == "flexivit-demo"


def test_validate_passes_then_catches_a_tampered_file(demo_bundle, tmp_path):
    result = run_cli("validate", str(demo_bundle), "--quiet")
    assert result.exit_code == 0, result.output + result.stderr
    assert "all 3 variants passed" in result.stdout
    copy = tmp_path / "copy"
    shutil.copytree(demo_bundle, copy)
    with open(copy / "onnx" / "model_p16.onnx", "ab") as handle:
        handle.write(b"\0")
    result = run_cli("validate", str(copy), "--quiet")
    assert result.exit_code == 3
    assert re.search(r"│ ✗ │ p16 +│ MISMATCH │", result.stdout) and "p16" in one_line_error(result)


def test_failed_parity_writes_the_report_and_exits_3(tmp_path):
    out = tmp_path / "strict"
    result = run_cli("build", "-p", "16", "--out", str(out), "--atol", "0", "--rtol", "0", "--quiet")
    assert result.exit_code == 3, result.output + result.stderr
    assert "failed validation" in one_line_error(result) and "report.md" in result.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["variants"][0]["status"] == "failed"
    assert "exceeds atol 0" in manifest["variants"][0]["parity"]["failures"][0]
    assert "**p16 failed:**" in (out / "report.md").read_text()


def test_existing_bundle_needs_force_and_resume_reuses(demo_bundle, tmp_path):
    out = tmp_path / "b"
    shutil.copytree(demo_bundle, out)
    before = tree_digest(out)
    result = run_cli(*HEADLINE, "--out", str(out), "--quiet")
    assert result.exit_code == 2 and "--force" in one_line_error(result)
    assert tree_digest(out) == before
    with open(out / "onnx" / "model_p32.onnx", "ab") as handle:
        handle.write(b"\0")
    result = run_cli(*HEADLINE, "--out", str(out), "--resume")
    assert result.exit_code == 0, result.output + result.stderr
    variants = json.loads((out / "manifest.json").read_text())["variants"]
    assert [v["resumed"] for v in variants] == [True, True, False]
    assert "resumed" in result.stderr
    assert sha256_file(out / "onnx" / "model_p32.onnx") == variants[2]["onnx"]["sha256"]
    result = run_cli(*HEADLINE, "--out", str(out), "--force", "--quiet")
    assert result.exit_code == 0
    assert not any(v["resumed"] for v in json.loads((out / "manifest.json").read_text())["variants"])


def test_resume_keeps_the_measurements_of_unchanged_variants_and_names_what_it_drops(demo_bundle, tmp_path, caplog):
    """bench.json, eval.json and tradeoff.png vanished on every --resume, in silence."""
    out = tmp_path / "b"
    shutil.copytree(demo_bundle, out)
    measured = {
        "bench.json": b'{"machine": {"cpu": "x"}, "timings": []}',
        "eval.json": b'{"results": [{"backend": "onnxruntime", "variant": "p32", "top1": 1.0}]}',
        "tradeoff.png": b"\x89PNG\r\n\x1a\n",
        "latency.json": b'{"machine": {"cpu": "x"}, "rows": []}',
    }
    for name, data in measured.items():
        (out / name).write_bytes(data)
    with caplog.at_level("WARNING", logger="exporter.build.pipeline"):  # the CLI's stderr
        result = run_cli(*HEADLINE, "--out", str(out), "--resume", "--quiet")
        assert result.exit_code == 0, result.output + result.stderr
        assert {name: (out / name).read_bytes() for name in measured} == measured
        assert "dropped" not in caplog.text
        result = run_cli("build", "-p", "8", "16", "--out", str(out), "--resume", "--quiet")  # p32 is not built
    assert result.exit_code == 0, result.output + result.stderr
    assert not any((out / name).exists() for name in measured)
    assert (
        "--resume: dropped bench.json, eval.json, tradeoff.png, latency.json of the previous bundle "
        "(p32 no longer built): measure again" in caplog.text
    )


def test_patch_sizes_forms(tmp_path):
    result = run_cli(
        "build",
        "--patch-sizes",
        "8,16",
        "-p",
        "32",
        "--out",
        str(tmp_path / "b"),
        "--quiet",
        "--batch",
        "4",
        "--parity-samples",
        "3",
    )
    assert result.exit_code == 0, result.output + result.stderr
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest["options"]["patch_sizes"] == ["8", "16", "32"]
    assert manifest["variants"][0]["onnx"]["inputs"][0]["shape"] == [4, 3, 64, 64]


def test_calib_dir_images_join_the_parity_inputs(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(5):
        Image.fromarray(rng.integers(0, 255, (80, 100, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    (tmp_path / "notes.txt").write_text("ignored")
    out = tmp_path / "b"
    result = run_cli(
        "build", "-p", "16", "--calib-dir", str(tmp_path), "--parity-samples", "4", "--out", str(out), "-q"
    )
    assert result.exit_code == 0, result.output + result.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["options"]["parity_inputs"] == f"4 seeded random images + 4 images from {tmp_path}"
    assert manifest["variants"][0]["parity"]["samples"] == 8
    result = run_cli("build", "-p", "16", "--calib-dir", str(tmp_path / "none"), "--out", str(tmp_path / "c"))
    assert result.exit_code == 2 and "does not exist" in one_line_error(result)


def test_resume_rebuilds_when_a_calibration_image_changes(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(1)
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (70, 70, 3), dtype=np.uint8)).save(photos / f"{i}.png")
    out = tmp_path / "b"
    args = ("build", "-p", "16", "32", "--calib-dir", str(photos), "--parity-samples", "2", "--out", str(out), "-q")
    assert run_cli(*args).exit_code == 0
    assert run_cli(*args, "--resume").exit_code == 0
    assert all(v["resumed"] for v in json.loads((out / "manifest.json").read_text())["variants"])
    (photos / "2.png").write_bytes(b"")  # past the ones parity reads: no effect
    assert run_cli(*args, "--resume").exit_code == 0
    assert all(v["resumed"] for v in json.loads((out / "manifest.json").read_text())["variants"])
    Image.fromarray(rng.integers(0, 255, (70, 70, 3), dtype=np.uint8)).save(photos / "1.png")  # same name
    assert run_cli(*args, "--resume").exit_code == 0
    assert not any(v["resumed"] for v in json.loads((out / "manifest.json").read_text())["variants"])


@pytest.fixture()
def broken_files(tmp_path, tiny_flexivit) -> dict[str, Path]:
    import torch

    (tmp_path / "truncated.pt").write_bytes(tiny_flexivit.read_bytes()[:1000])
    (tmp_path / "text.pt").write_text("not a checkpoint")
    torch.save({"head.weight": torch.zeros(2, 2)}, tmp_path / "nopatch.pt")
    (tmp_path / "afile").write_text("x")
    return {p.stem: p for p in tmp_path.iterdir()}


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--weights", "{missing}"], 2, "does not exist"),
        (["--weights", "{truncated}"], 2, "truncated"),
        (["--weights", "{text}"], 2, "not a PyTorch checkpoint"),
        (["--weights", "{nopatch}"], 2, "no patch embedding"),
        (["-p", "0"], 2, "positive integer, got 0"),
        (["-p", "-8"], 2, "positive integer, got -8"),
        (["-p", "sixteen"], 2, "got 'sixteen'"),
        (["-p", "128"], 2, "larger than the image 64"),
        (["-p", "24"], 2, "does not divide image size 64"),
        (["--out", "{afile}"], 2, "is a file"),
        (["--out", "{afile}/bundle"], 2, "cannot create the folder"),
        (["--out", "/proc/flexiexport-test/bundle"], 2, "cannot create the folder"),
        (["--img-size", "big"], 2, "'native' or 'auto'"),
        (["--batch", "0"], 2, "'dynamic' or a positive integer"),
        (["--opset", "9"], 2, "between 14 and 20"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, broken_files, args, code, message):
    args = [a.format(missing=tmp_path / "missing.pt", **broken_files) for a in args]
    if "-p" not in args:
        args += ["-p", "16"]
    if "--out" not in args:
        args += ["--out", str(tmp_path / "out")]
    before = sorted(p.name for p in tmp_path.iterdir())
    result = run_cli("build", *args)
    assert result.exit_code == code, result.output + result.stderr
    assert message in one_line_error(result)
    assert sorted(p.name for p in tmp_path.iterdir()) == before


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-p", "7"], "does not divide image size 64"),  # the demo's config states 64
        (["-p", "8", "128", "--img-size", "auto"], "larger than the image 64"),
        (["-p", "7", "--weights", "{tiny}", "--img-size", "64"], "does not divide image size 64"),
        (["-p", "7", "--weights", "{tiny_240}"], "does not divide image size 240"),  # its config states 240
    ],
)
def test_a_patch_size_that_cannot_fit_is_refused_before_loading(tmp_path, tiny_flexivit, monkeypatch, args, message):
    """``build -p 7`` used to load the checkpoint before refusing the patch size."""
    import exporter.build.pipeline

    tiny_240 = tmp_path / "tiny_240.pt"
    shutil.copy(tiny_flexivit, tiny_240)
    config = json.loads(tiny_flexivit.with_suffix(".json").read_text())
    tiny_240.with_suffix(".json").write_text(json.dumps({**config, "img_size": 240}))

    def no_loading(spec):
        raise AssertionError("the checkpoint was loaded")

    monkeypatch.setattr(exporter.build.pipeline, "load_source", no_loading)  # where the build looks it up
    args = [a.format(tiny=tiny_flexivit, tiny_240=tiny_240) for a in args]
    result = run_cli("build", *args, "--out", str(tmp_path / "b"))
    assert result.exit_code == 2, result.output + result.stderr
    assert message in one_line_error(result)
    assert not (tmp_path / "b").exists()


def test_debug_shows_the_traceback(tmp_path):
    from exporter.core.errors import CheckpointError

    with pytest.raises(CheckpointError):
        run_cli("build", "-p", "16", "--weights", str(tmp_path / "nope.pt"), "--debug")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_an_interrupt_leaves_the_old_bundle_intact(demo_bundle, tmp_path, sig):
    """Ctrl-C, and SIGTERM/SIGHUP (docker stop, CI time-outs, a closed terminal) alike."""
    out = tmp_path / "b"
    shutil.copytree(demo_bundle, out)
    before = tree_digest(out)
    # Many parity samples keep the build busy for seconds after its staging folder appears,
    # so the interrupt lands mid-build even on a loaded machine.
    proc = subprocess.Popen(
        [sys.executable, "-m", "exporter.cli", *HEADLINE, "--out", str(out), "--force", "--parity-samples", "400"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".b.tmp-*")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    assert proc.poll() is None, "build finished before it could be interrupted"
    os.kill(proc.pid, sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, err
    assert f"interrupted ({sig.name}); nothing was written" in err and "Traceback" not in err
    assert tree_digest(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]


def test_every_demo_variant_agrees_with_the_native_patch_on_the_held_out_digits(demo_bundle):
    """The demo's kernel is 32 at 64 pixels: p32 is native; p8 and p16 agree with it on most digits."""
    manifest = json.loads((demo_bundle / "manifest.json").read_text())
    assert manifest["source"]["architecture"]["kernel_size"] == [32, 32]
    found = {v["label"]: v["native_agreement"] for v in manifest["variants"]}
    assert found["p32"]["native"] and found["p32"]["top1_agreement"] == found["p32"]["min_cosine"] == 1.0
    for label in ("p8", "p16"):
        n = found[label]
        assert n["against"] == "p32 at 64" and n["images"] == 16 and n["from"] == "held-out demo digits"
        assert not n["native"] and 0.75 <= n["top1_agreement"] < 1.0, n  # 16 digits: 1/16 steps
        assert 0.0 < n["min_cosine"] <= n["mean_cosine"] < 1.0, n
    report = (demo_bundle / "report.md").read_text()
    assert "| native | native cos |" in report and "against p32 at 64" in report
    assert f"| {found['p8']['top1_agreement']:.1%} | {found['p8']['min_cosine']:.3f}/" in report
    result = run_cli("inspect", str(demo_bundle))
    assert "native" in result.stdout and f"{found['p16']['top1_agreement']:.1%}" in result.stdout


def test_the_accuracy_plot_shows_the_native_agreement_beside_accuracy(demo_bundle):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from exporter.bundle.door import read_manifest
    from exporter.measure.plot import _accuracy, native_series

    native = native_series(read_manifest(demo_bundle))
    assert native is not None and native.what == "top-1 agreement with p32 at 64 (no labels)"
    evaluation = {
        "data": "digits",
        "samples": 3,
        "results": [{"backend": "pytorch", "patch_size": [p, p], "img_size": [64, 64], "top1": 0.9} for p in (8, 16)],
    }
    fig, ax = plt.subplots()
    _accuracy(ax, evaluation, native)
    lines = {line.get_label(): line for line in ax.get_lines()}
    plt.close(fig)
    assert list(lines[native.what].get_xdata()) == [8, 16, 32] and list(lines[native.what].get_ydata())[-1] == 1.0
    assert "pytorch" in lines


def test_a_bundle_built_before_native_agreement_still_opens(demo_bundle, tmp_path):
    import shutil

    old = tmp_path / "old"
    shutil.copytree(demo_bundle, old)
    edit_manifest(old, lambda data: [v.pop("native_agreement") for v in data["variants"]])
    result = run_cli("inspect", str(old))
    assert result.exit_code == 0, result.output + result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith("│ ✓ │ p")]
    assert len(rows) == 3 and all(" — │" in row for row in rows), rows  # native: not measured
    assert "against p32" not in result.stdout
    assert run_cli("validate", str(old)).exit_code == 0
