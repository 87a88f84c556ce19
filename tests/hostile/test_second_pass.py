"""Issue 22, the second hostile pass: what the first round of fixes left.

- ``serve`` beside an install whose ``backends/python`` holds a dangling link, a loop of links,
  a FIFO or a folder where a file belongs: those entries are left out (never opened), and an
  install without the Python backend is exit 4 naming it and ``pip install nvidia-pytriton``;
- a number in a file (bench.json, latency.json, eval.json, config.json) that is an integer too
  large for a float is no number, never an ``OverflowError``;
- a full disk under ``triton --out`` names the file being written there, not the bundle's;
- the runtime API refuses a bool (or a string) for budget_ms, batch, threads and top_k;
- .ppm/.pgm files in an image folder are images.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from exporter.core.errors import EnvironmentMissing, UsageError

from conftest import TWO_VARIANTS, built, refused, run_cli

HUGE = 10**400


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return built(tmp_path_factory, *TWO_VARIANTS).path


# --- serve: an install we did not make is data -------------------------------------------------


def test_serve_leaves_out_what_in_the_install_is_not_a_file(tmp_path: Path) -> None:
    from exporter.deploy.server import prepare_backends, wheel_install
    from tests.hostile.test_limits_everywhere import pytriton_tree

    home = pytriton_tree(tmp_path)
    python = home / "backends" / "python"
    (python / "triton_python_backend_stub").unlink()
    (python / "triton_python_backend_stub").symlink_to(tmp_path / "nowhere")  # dangling
    (python / "loop").symlink_to(python / "loop")  # before: RuntimeError (Path.resolve)
    os.mkfifo(python / "pipe")  # opening it would block
    (python / "gone.py").symlink_to(tmp_path / "gone.py")
    install = wheel_install(home / "bin" / "tritonserver")
    folder = prepare_backends(install, tmp_path / "work" / "backends")
    assert folder is not None and install.stub is not None
    linked = sorted(p.name for p in (folder / "python").iterdir())
    assert linked == ["libtriton_python.so", "triton_python_backend_stub", "triton_python_backend_utils.py"]
    assert (folder / "python" / "triton_python_backend_stub").resolve() == install.stub.resolve()


def test_serve_refuses_an_install_whose_backend_library_is_a_fifo(tmp_path: Path) -> None:
    from exporter.deploy.server import wheel_install
    from tests.hostile.test_limits_everywhere import pytriton_tree

    home = pytriton_tree(tmp_path)
    library = home / "backends" / "python" / "libtriton_python.so"
    library.unlink()
    os.mkfifo(library)
    with pytest.raises(EnvironmentMissing, match="lacks libtriton_python.so.*pip install"):
        wheel_install(home / "bin" / "tritonserver")


def test_serve_without_the_python_backend_is_an_environment_error(tmp_path: Path) -> None:
    """Before: found, then 'cannot use .../backends/python: No such file' (exit 2) at the start."""
    from exporter.deploy.server import find_tritonserver
    from tests.hostile.test_limits_everywhere import pytriton_tree

    home = pytriton_tree(tmp_path)
    shutil.rmtree(home / "backends" / "python")
    with pytest.raises(EnvironmentMissing, match=r"no usable Python backend.*pip install .*nvidia-pytriton") as caught:
        find_tritonserver(home / "bin" / "tritonserver")
    assert caught.value.exit_code == 4 and "\n" not in str(caught.value)


# --- numbers in files: a 400-digit integer ---------------------------------------------------------


def test_a_huge_integer_latency_is_ignored_not_an_overflow(demo: Path, tmp_path: Path) -> None:
    from exporter.core.machine import machine_key
    from exporter.runtime.measurements import row_problem

    row = {"backend": "ort-cpu", "variant": "p16", "batch": 1, "p50_ms": 1, "p99_ms": HUGE}
    assert "not a finite number" in row_problem(row, {"p16"})  # before: OverflowError
    bundle = tmp_path / "b"
    shutil.copytree(demo, bundle)
    timings = [{**row, "variant": v, "p99_ms": HUGE if v == "p16" else 1} for v in ("p16", "p32")]
    (bundle / "bench.json").write_text(json.dumps({"machine": machine_key(), "timings": timings}))
    image = tmp_path / "a.png"
    Image.new("RGB", (40, 40), (10, 200, 30)).save(image)
    result = run_cli("predict", str(bundle), str(image), "--budget-ms", "50")
    assert result.exit_code == 0, result.output + result.stderr  # before: exit 1, OverflowError
    assert result.stdout.startswith(("p16 on", "p32 on")), result.stdout


def test_huge_integers_in_eval_and_bench_rows_are_no_accuracy_or_latency() -> None:
    from exporter.measure.frontier import latencies
    from exporter.runtime.measurements import accuracies

    evaluation = {"results": [{"backend": "pytorch", "variant": "p16", "top1": HUGE}]}
    evaluation["results"] += [{"backend": "pytorch", "variant": "p32", "top1": 0.5}]
    evaluation["results"] += [{"backend": "pytorch", "variant": "p8", "top1": 7.0}]
    assert accuracies(evaluation, "ort-cpu") == {"p32": 0.5}  # before: OverflowError
    bench = {"timings": [{"backend": "ort-cpu", "batch": 1, "variant": "p16", "p99_ms": HUGE}]}
    assert latencies(bench, "ort-cpu", 1) == {}


@pytest.mark.parametrize(
    "config",
    [
        {"model_args": {"mlp_ratio": HUGE}},
        {"pretrained_cfg": {"crop_pct": HUGE}},
        {"pretrained_cfg": {"mean": [HUGE, 0, 0]}},
    ],
)
def test_a_huge_integer_in_a_timm_config_is_a_usage_error(config: dict) -> None:
    from exporter.source.config import check_config

    with pytest.raises(UsageError):  # before: OverflowError
        check_config(config)


def test_a_huge_integer_budget_in_a_request_is_refused_not_an_overflow() -> None:
    from exporter.deploy.triton_models import budget_value

    with pytest.raises(UsageError, match="budget_ms"):  # before: OverflowError
        budget_value(HUGE)


# --- a full disk under triton --out ----------------------------------------------------------------


def test_a_full_disk_under_triton_out_names_the_file_written_there(tmp_path: Path, demo: Path) -> None:
    from tests.hostile.test_mounts import mounted

    disk = tmp_path / "disk"
    disk.mkdir()
    with mounted(tmp_path, "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)):
        result = run_cli("triton", str(demo), "--out", str(disk / "repo"))
        line = refused(result, "no space left on device", str(disk))
        assert str(demo / "onnx") not in line, line  # before: the source model_p16.onnx was named


# --- the runtime API's numbers -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arguments", "name"),
    [
        ({"budget_ms": True}, "budget_ms"),  # before: ran as a 1 ms budget
        ({"budget_ms": HUGE}, "budget_ms"),
        ({"budget_ms": "50"}, "budget_ms"),
        ({"variant": "p32", "batch": True}, "batch"),
        ({"variant": "p32", "batch": 2.5}, "batch"),
        ({"variant": "p32", "threads": True}, "threads"),
    ],
)
def test_the_runtime_api_refuses_a_bool_or_a_string_for_a_number(demo: Path, arguments: dict, name: str) -> None:
    from exporter.runtime import Bundle

    with pytest.raises(UsageError, match=f"^{name} must be"):
        Bundle.open(demo).model(**arguments)


def test_the_runtime_api_takes_numpy_numbers_and_refuses_a_bool_top_k(demo: Path) -> None:
    from exporter.runtime import Bundle

    model = Bundle.open(demo).model(variant="p32", batch=np.int64(1), threads=np.int32(1))
    image = np.zeros((1, 32, 32, 3), np.uint8)
    assert len(model.predict(image, top_k=np.int64(2))[0]) == 2
    with pytest.raises(UsageError, match="^top_k must be"):
        model.predict(image, top_k=True)


# --- .ppm / .pgm in an image folder ----------------------------------------------------------------


def test_netpbm_files_in_an_image_folder_are_images(tmp_path: Path) -> None:
    from exporter.runtime.images import list_images

    Image.new("RGB", (8, 8), (1, 2, 3)).save(tmp_path / "a.ppm")
    Image.new("L", (8, 8), 9).save(tmp_path / "b.pgm")
    assert [p.name for p in list_images(tmp_path)] == ["a.ppm", "b.pgm"]  # before: 'no images'
    assert Image.open(tmp_path / "b.pgm").size == (8, 8)
