"""Issue 22, the third hostile pass: what the second round left.

- the runtime API's images argument: nothing (``[]``, a ``[0, ...]`` array), ``None``, a number,
  bytes or an image with no pixels is a ``UsageError`` naming the problem, never a ``ValueError``,
  ``TypeError``, ``ZeroDivisionError`` or onnxruntime's failure;
- a manifest whose record of a variant's input size or class count is not what its (sha256-checked)
  ONNX file takes and gives is exit 2 naming the variant and the field, when the file is loaded,
  never onnxruntime's INVALID_ARGUMENT or an IndexError past the labels (exit 1);
- ``latency.json``: another machine's section keeps every key it records (its ``threads``, a
  note), not only ``machine`` and ``rows``; an ``other_machines`` that is not a list of sections
  leaves the file as it is (the probe is used, not recorded) instead of being dropped;
- ``bench.json``: one ``bench`` cannot merge into (not valid JSON, over 16 MB, ``other_machines``
  not a list of sections) is refused before any timing, exit 2, left as it is (before: replaced
  by this machine's rows, exit 0); another machine's section that holds only ``resample`` rows is
  kept;
- a ``std`` so small that float32 makes it 0 (1e-300 is finite and > 0) is refused at the door
  naming ``preprocessing``: every pixel was inf, every logit NaN, and ``predict --json`` printed
  a bare ``NaN`` (no JSON); ``predict --json`` now writes strict JSON as ``inspect --json`` does;
- ``eval.json`` is data for the plot too: a result that is ``null``, a list, a ghost variant or a
  top-1 of 1e308 is ignored with one warning (before: ``AttributeError``, exit 1, after timing);
- ``build --calib-dir``: an image file followed by 40 GB (sparse) is refused by its size before
  any export, and the images' digest is streamed (before: ``read_bytes`` of the whole file,
  ``MemoryError``, exit 1);
- ``predict --precision int8`` on a bundle built without int8 is exit 2 (the bundle lacks the
  file, as ``triton`` already says), not exit 4 (the environment lacks something);
- a file Pillow cannot identify is named as such, not as ``<_io.BufferedReader name=6>``;
- the runtime API: ``Bundle.open(None)`` is a ``UsageError`` (was ``TypeError``), and
  ``model(variant=16)`` is refused when the model is made, not at its first call;
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from exporter.core.errors import UsageError

from conftest import TWO_VARIANTS, built, copy_into, edit_manifest, refused, run_cli

# These tests are about the files the latency probe reads and writes, not its numbers: at its floor.
pytestmark = pytest.mark.usefixtures("quick_probe")


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return built(tmp_path_factory, *TWO_VARIANTS).path


# --- the runtime API: images that are no images ----------------------------------------------------


@pytest.mark.parametrize(
    "images",
    [
        [],
        None,
        42,
        b"\x89PNG",
        np.zeros((0, 64, 64, 3), np.uint8),
        "empty-pixel-values",
        Image.new("RGB", (0, 0)),
        np.zeros((0, 5, 3), np.uint8),
        [3.5],
    ],
    ids=["empty-list", "none", "int", "bytes", "empty-uint8", "empty-float32", "pil-0x0", "array-0x5", "float-item"],
)
def test_the_runtime_api_refuses_images_that_are_no_images(shared: Path, images: object) -> None:
    from exporter.runtime import Bundle

    bundle = Bundle.open(shared)
    model = bundle.model(variant="p32", threads=1)
    if isinstance(images, str):  # at the variant's own size: before, onnxruntime's Fail
        images = np.zeros((0, 3, *bundle.record("p32").img_size), np.float32)
    with pytest.raises(UsageError):  # before: ValueError, TypeError, ZeroDivisionError, onnxruntime's Fail
        model(images)
    assert model(np.zeros((1, 40, 40, 3), np.uint8)).shape[0] == 1  # still serving


# --- the manifest's record of the ONNX file against the file ------------------------------------


def _fewer_classes(data: dict) -> None:
    data["labels"] = data["labels"][:5]
    for variant in data["variants"]:
        variant["onnx"]["outputs"][0]["shape"] = ["batch", 5]


def _smaller_input(data: dict) -> None:  # every field consistent with 48, the ONNX file takes 64
    variant = next(v for v in data["variants"] if v["label"] == "p16")
    variant.update(img_size=[48, 48], grid=[3, 3], tokens=10)
    variant["onnx"]["inputs"][0]["shape"][2:] = [48, 48]


@pytest.mark.parametrize(
    ("change", "words"),
    [(_fewer_classes, ("p16", "gives [N, 10]", "onnx.outputs[0].shape")), (_smaller_input, ("p16", "img_size"))],
    ids=["class-count", "input-size"],
)
@pytest.mark.parametrize("backend", ["ort-cpu", "openvino"])
def test_a_manifest_that_misstates_its_onnx_shapes_is_refused_naming_the_field(
    shared: Path, tmp_path: Path, change, words: tuple[str, ...], backend: str
) -> None:
    bundle = copy_into(shared, tmp_path)
    edit_manifest(bundle, change)
    image = tmp_path / "digit.png"
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(image)
    result = run_cli("predict", str(bundle), str(image), "--variant", "p16", "--backend", backend, "--threads", "1")
    refused(result, *words)  # before: exit 1 (IndexError; onnxruntime's INVALID_ARGUMENT)
    if change is _smaller_input:  # the budget's probe loads the same way
        refused(run_cli("predict", str(bundle), str(image), "--budget-ms", "1000", "--threads", "1"), "p16", "img_size")


# --- latency.json: what another machine's section says is kept ----------------------------------

JETSON = {"cpu": "ARMv8 Processor rev 1 (v8l)", "machine": "aarch64"}


def _jetson_rows() -> list[dict[str, object]]:
    return [{"backend": "ort-cpu", "variant": v, "batch": 1, "p50_ms": 1.0, "p99_ms": 2.0} for v in ("p16", "p32")]


def test_another_machines_section_keeps_every_key_it_records(shared: Path, tmp_path: Path) -> None:
    bundle = copy_into(shared, tmp_path)
    jetson = {"machine": JETSON, "rows": _jetson_rows(), "threads": 6, "note": "nvpmodel 15 W"}
    (bundle / "latency.json").write_text(json.dumps(jetson))
    image = tmp_path / "digit.png"
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(image)
    result = run_cli("predict", str(bundle), str(image), "--budget-ms", "10000", "--threads", "1")
    assert result.exit_code == 0, result.output + result.stderr
    data = json.loads((bundle / "latency.json").read_text())
    assert data["machine"] != JETSON  # this machine wrote last: the Jetson's section moved down
    assert [s for s in data["other_machines"] if s["machine"] == JETSON] == [jetson]  # before: threads, note lost


@pytest.mark.parametrize("others", [{"jetson": {"machine": JETSON}}, [{"machine": JETSON, "rows": []}, 5, None]])
def test_other_machines_that_is_not_a_list_of_sections_is_left_as_it_is(
    shared: Path, tmp_path: Path, others: object
) -> None:
    bundle = copy_into(shared, tmp_path)
    text = json.dumps({"machine": {"cpu": "elsewhere", "machine": "x86_64"}, "rows": [], "other_machines": others})
    (bundle / "latency.json").write_text(text)
    image = tmp_path / "digit.png"
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(image)
    result = run_cli("predict", str(bundle), str(image), "--budget-ms", "10000", "--threads", "1")
    assert result.exit_code == 0, result.output + result.stderr  # the probe answers
    assert (bundle / "latency.json").read_text() == text  # before: the dict (or the 5 and the null) dropped


# --- bench.json: what bench cannot merge into is not overwritten -----------------------------------

BENCH = ("--batch-sizes", "1", "--backends", "ort-cpu", "--runs", "2", "--min-seconds", "0.01", "--warmup", "0")


@pytest.mark.parametrize(
    "text",
    ['{"machine": {"cpu": "Jetson"', json.dumps({"machine": {"cpu": "Jetson"}, "timings": [], "other_machines": {}})],
    ids=["truncated", "other_machines-a-dict"],
)
def test_bench_refuses_a_bench_json_it_cannot_merge_into_before_timing(shared: Path, tmp_path: Path, text: str) -> None:
    bundle = copy_into(shared, tmp_path)
    (bundle / "bench.json").write_text(text)
    result = run_cli("bench", str(bundle), *BENCH, "--threads", "1")
    refused(result, "bench.json", "left as it is")
    assert (bundle / "bench.json").read_text() == text  # before: exit 0, replaced by this machine's rows
    assert "p16" not in result.output  # refused before timing


def test_bench_keeps_a_machine_that_measured_only_resample_costs(shared: Path, tmp_path: Path) -> None:
    bundle = copy_into(shared, tmp_path)
    jetson = {"machine": {"cpu": "Jetson", "gpu": "Orin"}, "threads": 6, "timings": [], "resample": [{"x": 1}]}
    (bundle / "bench.json").write_text(json.dumps(jetson))
    result = run_cli("bench", str(bundle), *BENCH, "--threads", "1")
    assert result.exit_code == 0, result.output + result.stderr
    assert json.loads((bundle / "bench.json").read_text())["other_machines"] == [jetson]  # before: dropped


# --- preprocessing numbers that float32 cannot hold ---------------------------------------------------


@pytest.mark.parametrize(
    ("mean", "std"), [(0.5, 1e-300), (0.5, 1e-9), (1e30, 0.5)], ids=["tiny-std", "1e-9", "huge-mean"]
)
def test_a_std_float32_makes_zero_is_refused_at_the_door(shared: Path, tmp_path: Path, mean: float, std: float) -> None:
    bundle = copy_into(shared, tmp_path)
    edit_manifest(bundle, lambda d: d["preprocessing"].update(mean=[mean] * 3, std=[std] * 3))
    image = tmp_path / "digit.png"
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(image)
    result = run_cli("predict", str(bundle), str(image), "--variant", "p16", "--json", "--threads", "1")
    refused(result, "preprocessing", "std")  # before: exit 0, NaN probabilities, a bare NaN in the JSON
    assert "NaN" not in result.output


# --- eval.json read by the plot -----------------------------------------------------------------------


def test_the_plot_ignores_eval_results_that_are_no_results(shared: Path, tmp_path: Path, caplog) -> None:
    bundle = copy_into(shared, tmp_path)
    good = {"backend": "onnxruntime", "variant": "p16", "patch_size": [16, 16], "img_size": [64, 64], "top1": 0.5}
    results = [good, None, [1, 2], {**good, "variant": "p99"}, {**good, "variant": "p32", "top1": 1e308}]
    text = json.dumps({"data": "digits", "samples": 8, "results": results})
    (bundle / "eval.json").write_text(text)
    with caplog.at_level(logging.WARNING, logger="exporter.runtime"):
        result = run_cli("bench", str(bundle), *BENCH, "--threads", "1")
    assert result.exit_code == 0, result.output + result.stderr  # before: exit 1, AttributeError in the plot
    assert "ignoring 4 of 5 results" in caplog.text
    assert (bundle / "tradeoff.png").stat().st_size > 0
    assert (bundle / "eval.json").read_text() == text


# --- calibration images: a file's size, not only its pixels ------------------------------------------


def test_a_calibration_image_with_gigabytes_after_it_is_refused_by_its_size(tmp_path: Path) -> None:
    calib = tmp_path / "calib"
    calib.mkdir()
    Image.fromarray(np.full((64, 64, 3), 90, np.uint8)).save(calib / "a.png")
    Image.fromarray(np.full((64, 64, 3), 30, np.uint8)).save(calib / "b.png")
    with open(calib / "b.png", "r+b") as handle:  # a valid PNG, then 40 GB of zeros (sparse on disk)
        handle.truncate(40 << 30)
    out = tmp_path / "out"
    result = run_cli("build", "--patch-sizes", "32", "--calib-dir", str(calib), "--out", str(out), "--quiet")
    refused(result, "b.png", "GiB")  # before: MemoryError (exit 1) hashing the file whole
    assert not out.exists()


def test_the_calibration_digest_is_streamed(tmp_path: Path) -> None:
    import hashlib

    from exporter.runtime.images import folder_digest

    Image.fromarray(np.full((8, 8, 3), 1, np.uint8)).save(tmp_path / "a.png")
    data = (tmp_path / "a.png").read_bytes()
    expected = hashlib.sha256(b"a.png\0" + hashlib.sha256(data).digest()).hexdigest()
    assert folder_digest(tmp_path, 4) == expected  # the same key as before: --resume still recognises a folder


# --- what the bundle lacks is no missing environment ----------------------------------------------------


@pytest.mark.parametrize(
    "backend", [("--backend", "ort-cpu"), ("--backend", "openvino"), ()], ids=["ort", "ov", "auto"]
)
def test_a_precision_the_bundle_lacks_is_a_usage_error(shared: Path, tmp_path: Path, backend: tuple[str, ...]) -> None:
    image = tmp_path / "digit.png"
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(image)
    result = run_cli("predict", str(shared), str(image), "--variant", "p16", "--precision", "int8", *backend)
    refused(result, "no int8 ONNX")  # before: exit 4


def test_a_file_pillow_cannot_identify_is_said_plainly(shared: Path, tmp_path: Path) -> None:
    fake = tmp_path / "drawing.svg.png"
    fake.write_text('<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>')
    line = refused(run_cli("predict", str(shared), str(fake), "--variant", "p16"), "drawing.svg.png", "format")
    assert "BufferedReader" not in line and "name=" not in line  # before: Pillow's words about the handle


def test_the_runtime_api_refuses_a_bundle_or_variant_of_the_wrong_kind(shared: Path) -> None:
    from exporter.runtime import Bundle

    with pytest.raises(UsageError, match="folder path"):
        Bundle.open(None)  # type: ignore[arg-type]
    bundle = Bundle.open(shared)
    for label in (16, ["p16"], "p7"):
        with pytest.raises(UsageError, match="no variant"):
            bundle.model(variant=label)  # type: ignore[arg-type]  # before: a Model that failed at each call
