"""``exporter.runtime``: preprocessing equal to timm's, one runner per backend, the variant chosen
by a latency budget, ``flexiexport predict``, and no torch on the device."""

from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from exporter.core.errors import UsageError
from exporter.core.machine import machine_key
from exporter.runtime import Bundle, Preprocess
from exporter.runtime.budget import Latency, choose_variant
from exporter.source.demo import load_demo_digits

from conftest import build_demo, copy_into, run_cli

HAS_OPENVINO = __import__("importlib").util.find_spec("openvino") is not None


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    """This module's own copy of the demo bundle: predict with a budget records its latency probe
    in the bundle."""
    return copy_into(build_demo(tmp_path_factory), tmp_path_factory.mktemp("runtime"))


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> list[tuple[Path, int]]:
    """Held-out demo digits saved as 64x64 PNG files (rendered as the demo was trained), with labels."""
    from exporter.source.demo import digits_to_uint8

    folder = tmp_path_factory.mktemp("digits")
    images, labels = load_demo_digits("test")
    files = []
    for i, pixels in enumerate(digits_to_uint8(images[:6], 64)):
        path = folder / f"digit_{i}.png"
        Image.fromarray(pixels).save(path)
        files.append((path, int(labels[i])))
    return files


def photo_crops() -> list[Image.Image]:
    """Real photographs (scikit-learn's two), cropped to odd, non-square sizes."""
    from sklearn.datasets import load_sample_images

    photos = [Image.fromarray(a) for a in load_sample_images().images]
    boxes = [(0, 0, 640, 427), (13, 7, 313, 207), (100, 50, 273, 307), (5, 5, 96, 96), (200, 100, 201 + 255, 100 + 64)]
    return [photo.crop(box) for photo in photos for box in boxes]


TRANSFORMS = [
    ((224, 224), "bicubic", 0.875, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "center"),
    ((240, 240), "bilinear", 1.0, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "center"),
    ((64, 64), "bilinear", 1.0, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "center"),
    ((192, 256), "bicubic", 0.9, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "center"),
    ((97, 97), "bicubic", 0.95, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "center"),
    # transformers' ViT image processor: straight to the model's size (timm's squash at crop_pct 1)
    ((224, 224), "bilinear", 1.0, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "squash"),
    ((192, 256), "bicubic", 0.9, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "squash"),
]


@pytest.mark.parametrize("size,interpolation,crop_pct,mean,std,crop_mode", TRANSFORMS)
def test_preprocessing_equals_timms_eval_transform(digits, size, interpolation, crop_pct, mean, std, crop_mode):
    from timm.data import create_transform

    timm_transform = create_transform(
        input_size=(3, *size), interpolation=interpolation, mean=mean, std=std, crop_pct=crop_pct, crop_mode=crop_mode
    )
    ours = Preprocess(size, mean, std, interpolation, crop_pct, crop_mode)
    images = photo_crops() + [Image.open(p).convert("RGB") for p, _ in digits]
    for image in images:
        expected = timm_transform(image).numpy()
        got = ours([image])[0]
        assert got.shape == expected.shape == (3, *size)
        assert np.abs(got - expected).max() <= 1e-6, image.size


def test_preprocessing_takes_paths_pil_images_and_arrays(digits):
    pre = Preprocess((64, 64), (0.5,) * 3, (0.5,) * 3, "bilinear", 1.0)
    path = digits[0][0]
    image = Image.open(path).convert("RGB")
    from_path, from_image = pre(path), pre(image)
    from_array = pre(np.asarray(image))
    assert np.array_equal(from_path, from_image) and np.array_equal(from_path, from_array)
    assert np.array_equal(pre(from_path), from_path)  # float32 pixel_values pass through
    with pytest.raises(UsageError, match="uint8 RGB"):
        pre(np.zeros((2, 64, 64), dtype=np.float64))


def test_the_python_api_runs_a_variant_like_validate_does(demo, digits):
    from exporter.build.runners import ort_runner

    bundle = Bundle.open(demo)
    assert bundle.variants == ["p8", "p16", "p32"] and bundle.labels == [str(d) for d in range(10)]
    model = bundle.model(variant="p8", backend="ort-cpu")
    paths = [p for p, _ in digits]
    logits = model(paths)
    x = bundle.preprocess("p8")(paths)
    assert np.array_equal(logits, ort_runner(demo / "onnx" / "model_p8.onnx")(x))
    predictions = model.predict(paths, top_k=3)
    assert [p[0].label for p in predictions] == [str(i) for i in logits.argmax(axis=1)]
    assert sum(p[0].label == str(label) for p, (_, label) in zip(predictions, digits)) >= 5  # p8: 97.8 % held out
    assert all(0 < p[0].probability <= 1 and p[0].probability >= p[1].probability for p in predictions)
    assert model.variant == "p8" and model.backend == "ort-cpu"


def test_the_budget_picks_the_most_accurate_variant_that_fits():
    latencies = {"p8": Latency(0.8, 1.2), "p16": Latency(0.3, 0.5), "p32": Latency(0.2, 0.3)}
    order = ["p8", "p16", "p32"]
    assert choose_variant(order, latencies, 2.0) == "p8"
    assert choose_variant(order, latencies, 1.2) == "p8"
    assert choose_variant(order, latencies, 1.19) == "p16"
    assert choose_variant(order, latencies, 0.4) == "p32"
    with pytest.raises(UsageError, match="no variant fits a budget of 0.1 ms: the fastest, p32, has p99 0.3 ms"):
        choose_variant(order, latencies, 0.1)


def write_bench(bundle: Path, rows: dict[str, float], cpu: str | None = None) -> None:
    timings = [{"backend": "ort-cpu", "variant": k, "batch": 1, "p50_ms": v / 2, "p99_ms": v} for k, v in rows.items()]
    data = {"machine": {"cpu": cpu or machine_key()["cpu"]}, "timings": timings}
    (bundle / "bench.json").write_text(json.dumps(data))


def test_predict_uses_bench_json_measured_on_this_machine(demo, digits, tmp_path):
    copy = tmp_path / "b"
    shutil.copytree(demo, copy)
    write_bench(copy, {"p8": 5.0, "p16": 2.0, "p32": 1.0})
    for budget, expected in (("10", "p8"), ("3", "p16"), ("1.5", "p32")):
        result = run_cli("predict", str(copy), str(digits[1][0]), "--budget-ms", budget, "--backend", "ort-cpu")
        assert result.exit_code == 0, result.output + result.stderr
        assert result.stdout.startswith(f"{expected} on ort-cpu (fp32)")
        assert f"{digits[1][0]}: {digits[1][1]} (" in result.stdout
    result = run_cli("predict", str(copy), str(digits[0][0]), "--budget-ms", "0.5", "--backend", "ort-cpu")
    assert result.exit_code == 2 and "no variant fits a budget of 0.5 ms" in result.stderr
    assert not (copy / "latency.json").exists()  # no probe: bench.json had every variant


def test_bench_rows_from_another_machine_are_not_used_and_a_probe_is_recorded(demo, digits, tmp_path, caplog):
    copy = tmp_path / "b"
    shutil.copytree(demo, copy)
    write_bench(copy, {"p8": 0.001, "p16": 0.001, "p32": 0.001}, cpu="Some Other CPU")
    bundle = Bundle.open(copy)
    with caplog.at_level(logging.INFO, logger="exporter.runtime"):
        model = bundle.model(budget_ms=10_000, backend="ort-cpu")
    assert model.variant == "p8" and "probing p8 on ort-cpu" in caplog.text
    # the routine probe is progress, not a warning (issue 25): INFO, printed plainly by the CLI
    assert {r.levelname for r in caplog.records if r.name == "exporter.runtime.budget"} == {"INFO"}
    recorded = json.loads((copy / "latency.json").read_text())
    assert recorded["machine"]["cpu"] == machine_key()["cpu"]
    assert {r["variant"] for r in recorded["rows"]} == {"p8", "p16", "p32"}
    assert all(r["p99_ms"] >= r["p50_ms"] > 0 for r in recorded["rows"])
    again = Bundle.open(copy).latencies("ort-cpu", "fp32", 1)  # read back, not probed again
    assert set(again) == {"p8", "p16", "p32"}


def test_adaptive_mode_steps_down_under_load_and_back(demo, caplog):
    bundle = Bundle.open(demo)
    model = bundle.model(variant="p8", backend="ort-cpu")
    model.budget_ms, model.adaptive = 2.0, True
    model.latencies = {"p8": Latency(1.0, 1.5), "p16": Latency(0.4, 0.6), "p32": Latency(0.2, 0.3)}
    with caplog.at_level(logging.INFO, logger="exporter.runtime"):
        for _ in range(5):  # a decision needs 5 observations of the running variant
            model._observe(model.variant, 4.5)  # three times slower than measured
        assert model.variant == "p16"  # 0.6 x 3 = 1.8 ms fits 2 ms; p8's 4.5 does not
        for _ in range(5):
            model._observe(model.variant, 0.6)  # the load lifted
        assert model.variant == "p8"
    assert [s[:2] for s in model.switches] == [("p8", "p16"), ("p16", "p8")]
    assert "adaptive: p8 -> p16" in caplog.text and "adaptive: p16 -> p8" in caplog.text


def test_predict_reports_good_images_and_names_a_bad_one(demo, digits, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_text("not an image")
    result = run_cli("predict", str(demo), str(digits[1][0]), str(bad), "--variant", "p32", "--json")
    assert result.exit_code == 2
    data = json.loads(result.stdout)
    assert data["variant"] == "p32" and data["backend"] == "ort-cpu"
    assert data["results"][0]["top"][0]["label"] == str(digits[1][1])
    assert "broken.png" in data["results"][1]["error"]
    assert result.stderr.count("error:") == 1 and "broken.png" in result.stderr


@pytest.mark.parametrize(
    "args,message",
    [
        (("--variant", "p7"), "no variant 'p7' in the bundle; it has p8, p16, p32"),
        (("--variant", "p8", "--budget-ms", "3"), "give either --variant (e.g. --variant p16) or --budget-ms MS"),
        (("--budget-ms", "-1"), "--budget-ms must be a positive number"),
        (("--variant", "p8", "--backend", "cuda"), "unknown backend 'cuda'"),
        (("--variant", "p8", "--precision", "int8"), "has no int8 ONNX"),
        (("--variant", "p8", "--top-k", "0"), "--top-k must be at least 1"),
    ],
)
def test_predict_bad_usage_is_one_line(demo, digits, args, message):
    from conftest import one_line_error

    result = run_cli("predict", str(demo), str(digits[0][0]), *args)
    assert result.exit_code == 2, result.output + result.stderr
    assert message in one_line_error(result)


@pytest.mark.skipif(not HAS_OPENVINO, reason="OpenVINO is not installed")
def test_openvino_gives_the_onnxruntime_answer(demo, digits):
    bundle = Bundle.open(demo)
    paths = [p for p, _ in digits]
    ort = bundle.model(variant="p8", backend="ort-cpu")(paths)
    ov = bundle.model(variant="p8", backend="openvino")(paths)
    assert np.abs(ort - ov).max() < 1e-4 and np.array_equal(ort.argmax(1), ov.argmax(1))
    result = run_cli("predict", str(demo), str(paths[0]), "--budget-ms", "1000", "--backend", "openvino")
    assert result.exit_code == 0 and result.stdout.startswith("p8 on openvino (fp32)")


OPENVINO_THEN_CTRL_C = """
import gc, os, signal, sys, time
import numpy as np
from exporter.runtime.backends.openvino import OpenVinoRunner
x = np.ones((2, 3, 64, 64), np.float32)
first = OpenVinoRunner(sys.argv[1])
for _ in range(3):  # as bench's resample cost does: a second model alive beside the first, in turn
    second = OpenVinoRunner(sys.argv[1])
    first(x), second(x), first(x), second(x)
del first, second
gc.collect()
try:
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(1)
except KeyboardInterrupt:
    print("interrupt handled")
"""


@pytest.mark.skipif(not HAS_OPENVINO, reason="OpenVINO is not installed")
def test_ctrl_c_after_openvino_models_are_gone_is_still_handled(demo):
    """With one openvino.Core per model this process died of SIGSEGV (exit 139) on the signal:
    OpenVINO's CPU plugin left an alternate signal stack registered in memory it had freed."""
    onnx = demo / "onnx" / "model_p16.onnx"
    result = subprocess.run(
        [sys.executable, "-c", OPENVINO_THEN_CTRL_C, str(onnx)], capture_output=True, text=True, timeout=300
    )
    assert (result.returncode, result.stdout.strip()) == (0, "interrupt handled"), result.stderr[-2000:]


def test_the_runtime_imports_no_torch_timm_or_onnx(demo, digits):
    from tests.bundle.test_reference import NO_TORCH

    result = subprocess.run(
        [sys.executable, "-c", NO_TORCH, "predict", str(demo), str(digits[2][0]), "--variant", "p16", "--json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["results"][0]["top"][0]["label"] == str(digits[2][1])


def test_bench_and_the_cli_list_the_same_backends():
    # one list (exporter.core.backends): bench's --help default names every backend bench runs
    from exporter.cli.app import cli
    from exporter.measure.options import BenchOptions

    default = next(p.default for p in cli.commands["bench"].params if p.name == "backends")
    assert tuple(default.split(",")) == BenchOptions().backends


@pytest.mark.skipif(not HAS_OPENVINO, reason="OpenVINO is not installed")
def test_validate_runs_the_onnx_files_on_openvino_too(demo):
    result = run_cli("validate", str(demo), "--backends", "ort-cpu,openvino", "-q")
    assert result.exit_code == 0, result.output + result.stderr
    assert re.search(r"│ ✓ │ p8 openvino +│ ok +│", result.stdout) and "all 6 variants passed" in result.stdout


@pytest.mark.skipif(not HAS_OPENVINO, reason="OpenVINO is not installed")
def test_evaluate_runs_openvino_beside_onnxruntime(demo, tmp_path):
    copy = tmp_path / "b"
    shutil.copytree(demo, copy)
    result = run_cli("evaluate", str(copy), "--limit", "40", "--backends", "openvino", "-q")
    assert result.exit_code == 0, result.output + result.stderr
    rows = json.loads((copy / "eval.json").read_text())["results"]
    by = {(r["variant"], r["backend"]): r["top1"] for r in rows}
    assert all(by[(v, "openvino")] == by[(v, "onnxruntime")] for v in ("p8", "p16", "p32"))


@pytest.mark.skipif(not HAS_OPENVINO, reason="OpenVINO is not installed")
def test_bench_names_the_fastest_backend_that_keeps_its_tolerance(demo, tmp_path):
    copy = tmp_path / "b"
    shutil.copytree(demo, copy)
    quick = ("--batch-sizes", "1", "--runs", "2", "--min-seconds", "0", "--warmup", "1", "-q")
    result = run_cli("bench", str(copy), "--backends", "ort-cpu,openvino", *quick)
    assert result.exit_code == 0, result.output + result.stderr
    lines = [line for line in result.stdout.splitlines() if "fastest deployable backend within its tolerance" in line]
    assert [line.split(":")[0] for line in lines] == ["p8", "p16", "p32"]
    rows = json.loads((copy / "bench.json").read_text())["timings"]
    for line in lines:  # the named backend is the faster of the two (both keep fp32 parity on the demo)
        label, backend = line.split(":")[0], line.split(": ")[-1].split(" (")[0]
        p50 = {r["backend"]: r["p50_ms"] for r in rows if r["variant"] == label and r["batch"] == 1}
        assert backend == min(p50, key=p50.get)


def test_a_precision_no_bundle_can_have_is_refused_by_every_entry(demo):
    """``load_all(precision="fp64")`` said "build with --precision fp64", a flag build does not take."""
    from exporter.core.errors import UsageError
    from exporter.runtime import Bundle

    opened = Bundle.open(demo)
    for call in (lambda: opened.load_all(precision="fp64"), lambda: opened.model("p16", precision="fp64")):
        with pytest.raises(UsageError, match="precision must be one of fp32, fp16, int8, got 'fp64'"):
            call()
