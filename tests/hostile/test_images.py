"""Issue 22, classes 3 and 4: image files are data. Every decoder failure is one ``error:`` line
naming the file (the others are still answered) in ``predict``, ``evaluate --data`` and ``build
--calib-dir``; a FIFO or device is refused, never opened for a blocking read; 16-bit images are
scaled, not clipped; and the work of preprocessing is bounded by its output, not by the resized
image (a 663-byte 200000x1 PNG would be resized to gigabytes)."""

from __future__ import annotations

import io
import json
import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from exporter.core.errors import UsageError
from exporter.runtime import Preprocess

from conftest import build_demo, run_cli

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    return build_demo(tmp_path_factory, "images")


def png_bytes(size: tuple[int, int] = (64, 64), mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, 90).save(buf, "PNG")
    return buf.getvalue()


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def before(raw: bytes, at: int, kind: bytes, data: bytes) -> bytes:
    return raw[:at] + chunk(kind, data) + raw[at:]


def broken_files() -> dict[str, bytes]:
    """One file per way Pillow fails: ValueError (oversized zTXt / iCCP, a bad PPM header),
    SyntaxError (a chunk after the pixels with an unknown compression), OSError (truncated),
    UnidentifiedImageError (not an image)."""
    raw = png_bytes()
    big = zlib.compress(b"a" * (2 << 20))
    return {
        "ztxt.png": before(raw, 33, b"zTXt", b"comment\x00\x00" + big),
        "iccp.png": before(raw, 33, b"iCCP", b"icc\x00\x00" + big),
        "syntax.png": before(raw, len(raw) - 12, b"zTXt", b"k\x00\x07" + zlib.compress(b"a")),
        "header.png": b"P6\n64 x64\n255\n" + b"\0" * 100,  # a PPM by its bytes
        "truncated.png": png_bytes((300, 300))[:200],
        "text.png": b"hello, not an image",
    }


def digit_png(path: Path) -> Path:
    from exporter.source.demo import digits_to_uint8, load_demo_digits

    images, _ = load_demo_digits("test")
    Image.fromarray(digits_to_uint8(images[:1], 64)[0]).save(path)
    return path


def write_broken(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for name, data in broken_files().items():
        (folder / name).write_bytes(data)
        files.append(folder / name)
    return files


def error_lines(stderr: str) -> list[str]:
    lines = stderr.strip().splitlines()
    assert all(line.startswith("error: ") for line in lines) and "Traceback" not in stderr, stderr
    return lines


def test_predict_answers_the_good_images_and_names_each_broken_one(demo, tmp_path):
    bad = write_broken(tmp_path / "bad")
    good = digit_png(tmp_path / "good.png")
    result = run_cli("predict", str(demo), str(good), *map(str, bad), "--variant", "p32")
    assert result.exit_code == 2, result.output + result.stderr
    assert "good.png: " in result.stdout  # answered
    lines = error_lines(result.stderr)
    assert len(lines) == len(bad)
    for path, line in zip(bad, lines):
        assert path.name in line, line


def test_evaluate_skips_broken_images_with_one_line_each(demo, tmp_path):
    data = tmp_path / "data"
    write_broken(data / "0")
    for i in range(3):
        digit_png((data / "1").mkdir(exist_ok=True) or data / "1" / f"d{i}.png")
    bundle = Path(shutil.copytree(demo, tmp_path / "b"))
    result = run_cli("evaluate", str(bundle), "--data", str(data), "--quiet")
    assert result.exit_code == 2, result.output + result.stderr
    lines = [line for line in result.stderr.splitlines() if not line.startswith("left out")]
    assert len(error_lines("\n".join(lines))) == len(broken_files()) and "the 3 others were evaluated" in result.stderr
    assert all(line.startswith("error: --data: cannot read image") for line in lines)
    written = json.loads((bundle / "eval.json").read_text())
    assert written["samples"] == 3 and len(written["skipped"]) == len(broken_files())


def test_build_refuses_every_broken_calibration_image_before_any_export(tmp_path):
    calib = tmp_path / "calib"
    bad = write_broken(calib)
    for i in range(4):
        digit_png(calib / f"ok{i}.png")
    out = tmp_path / "out"
    result = run_cli("build", "-p", "32", "--calib-dir", str(calib), "--out", str(out), "--quiet")
    assert result.exit_code == 2, result.output + result.stderr
    lines = error_lines(result.stderr)
    assert len(lines) == len(bad) and all(line.startswith("error: --calib-dir: cannot read image") for line in lines)
    assert not out.exists()


def run_predict(demo: Path, *paths: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "exporter.cli", "predict", str(demo), *paths, "--variant", "p32"]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, env=env)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_a_fifo_or_a_device_is_refused_not_opened(demo, tmp_path):
    fifo = tmp_path / "frame.png"
    os.mkfifo(fifo)
    good = digit_png(tmp_path / "good.png")
    result = run_predict(demo, str(fifo), "/dev/zero", str(tmp_path), str(good))  # before: hung on the FIFO
    assert result.returncode == 2, result.stdout + result.stderr
    lines = error_lines(result.stderr)
    assert len(lines) == 3
    assert "a FIFO" in lines[0] and "a character device" in lines[1] and "a folder" in lines[2]
    assert "good.png: " in result.stdout


def test_a_fifo_among_calibration_images_is_left_alone(tmp_path):
    from exporter.runtime.images import list_images

    folder = tmp_path / "calib"
    folder.mkdir()
    os.mkfifo(folder / "a.png")
    digit_png(folder / "b.png")
    assert list_images(folder) == [folder / "b.png"]


def test_a_16_bit_image_gets_the_answer_of_its_8_bit_twin(demo, tmp_path):
    eight = digit_png(tmp_path / "eight.png")
    gray = np.asarray(Image.open(eight).convert("L"))
    sixteen = tmp_path / "sixteen.png"
    Image.fromarray(gray.astype(np.uint16) * 257).save(sixteen)
    floats = tmp_path / "floats.tiff"
    Image.fromarray(gray.astype(np.float32) / 255).save(floats)
    assert Image.open(sixteen).mode == "I;16" and Image.open(floats).mode == "F"
    result = run_cli("predict", str(demo), str(eight), str(sixteen), str(floats), "--variant", "p8", "--json")
    assert result.exit_code == 0, result.output + result.stderr
    tops = [r["top"] for r in json.loads(result.stdout)["results"]]
    assert tops[1] == tops[0] and tops[2] == tops[0]
    pre = Preprocess((64, 64), (0.5,) * 3, (0.5,) * 3, "bilinear", 1.0)
    assert np.array_equal(pre(sixteen), pre(eight))


BOUNDED = """
import resource, sys, time
import numpy as np
from PIL import Image
resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))  # 1 GiB of address space in all
from exporter.runtime.preprocess import Preprocess
pre = Preprocess((224, 224), (0.5,) * 3, (0.5,) * 3, "bicubic", 0.875)
start = time.perf_counter()
assert pre(sys.argv[1]).shape == (1, 3, 224, 224)  # the 663-byte strip: 39 GB once resized
assert pre(np.zeros((1, 1, 50000, 3), np.uint8)).shape == (1, 3, 224, 224)  # a Triton request
tiny = Preprocess((224, 224), (0.5,) * 3, (0.5,) * 3, "bicubic", 0.01)  # the smallest crop_pct
assert tiny(Image.new("RGB", (640, 480))).shape == (1, 3, 224, 224)
print(f"{time.perf_counter() - start:.2f}")
"""


def test_a_tiny_file_with_a_huge_resized_size_costs_what_its_crop_costs(tmp_path):
    strip = tmp_path / "strip.png"
    Image.new("L", (200000, 1), 128).save(strip, optimize=True)
    assert strip.stat().st_size < 1000
    env = {**os.environ, "PYTHONPATH": str(REPO), "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", BOUNDED, str(strip)], capture_output=True, text=True, timeout=60, env=env
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert float(done.stdout.split()[-1]) < 5


@pytest.mark.parametrize("size", [(2000, 100), (90, 3000)])
def test_the_bounded_path_agrees_with_timm_within_two_levels(size):
    from timm.data import create_transform

    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    image = image.resize((size[0] // 4, size[1] // 4)).resize(size)  # smooth, like a photo
    expected = create_transform(
        input_size=(3, 224, 224), interpolation="bicubic", mean=(0.5,) * 3, std=(0.5,) * 3, crop_pct=0.875
    )(image).numpy()
    got = Preprocess((224, 224), (0.5,) * 3, (0.5,) * 3, "bicubic", 0.875)([image])[0]
    assert np.abs(got - expected).max() <= 2 / 255 / 0.5 + 1e-6  # a level per pass, at most


def test_pixel_values_that_cannot_fit_are_refused_before_allocation():
    pre = Preprocess((224, 224), (0.5,) * 3, (0.5,) * 3, "bicubic", 0.875)
    with pytest.raises(UsageError, match="send fewer images at once"):
        pre.check_memory(10**9)
