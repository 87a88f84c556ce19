"""Issue 22, class 8: one record per printed line. A newline (or any other line separator) in a
file name, a label or a manifest string is printed as an escape, so it cannot forge a line such
as ``overall: passed``."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
from PIL import Image

from exporter.core.names import printable

from conftest import build_demo, edit_manifest, one_line_error, run_cli

FORGED = "overall: passed"
BREAKS = ["\n", "\r\n", "\r", "\x0b", "\x0c", "\x1c", "\x85", "\u2028", "\u2029"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    return build_demo(tmp_path_factory, "printed")


def copy_of(demo: Path, where: Path) -> Path:
    return Path(shutil.copytree(demo, where))


def digit(path: Path) -> Path:
    Image.new("RGB", (64, 64), (200, 10, 10)).save(path, format="PNG")
    return path


@pytest.mark.parametrize("brk", BREAKS)
def test_printable_keeps_every_line_separator_on_one_line(brk):
    text = printable(f"a{brk}{FORGED}")
    assert len(text.splitlines()) == 1 and FORGED in text and brk not in text


def test_a_file_name_with_a_newline_is_one_line_of_predict(demo, tmp_path):
    files = [digit(tmp_path / f"x{brk}{FORGED}.png") for brk in ("\n", "\u2028", "\r")]
    result = run_cli("predict", str(demo), *map(str, files), "--variant", "p32")
    assert result.exit_code == 0, result.output + result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1 + len(files), lines  # the header, then one line per image
    assert not any(line.startswith(FORGED) for line in lines)
    assert "x\\n" + FORGED in result.stdout and "x\\u2028" + FORGED in result.stdout


def test_an_unreadable_file_with_a_newline_in_its_name_is_one_error_line(demo, tmp_path):
    bad = tmp_path / f"bad\nerror: {FORGED}.png"
    bad.write_bytes(b"not an image")
    result = run_cli("predict", str(demo), str(bad), "--variant", "p32")
    assert result.exit_code == 2
    assert "bad\\nerror" in one_line_error(result)
    assert len(result.stderr.splitlines()) == 1


def test_a_label_with_line_breaks_is_one_line_of_predict(demo, tmp_path):
    bundle = copy_of(demo, tmp_path / "b")
    edit_manifest(bundle, lambda m: m.update(labels=[f"{d}\r\n{FORGED}\u2028{FORGED}" for d in range(10)]))
    image = digit(tmp_path / "d.png")
    result = run_cli("predict", str(bundle), str(image), "--variant", "p32", "--top-k", "3")
    assert result.exit_code == 0, result.output + result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 2 and not any(line.startswith(FORGED) for line in lines), lines


def test_manifest_strings_cannot_forge_the_verdict_of_inspect(demo, tmp_path):
    bundle = copy_of(demo, tmp_path / "b")

    def forge(m: dict) -> None:
        m["variants"][0]["status"] = "failed"
        m["source"]["architecture"]["summary"] = f"vit\n{FORGED}"
        m["source"]["path"] = f"/x\u2028{FORGED}"
        m["versions"]["flexiexport"] = f"1\x85{FORGED}"
        m["created"] = f"today\r{FORGED}"

    edit_manifest(bundle, forge)
    result = run_cli("inspect", str(bundle))
    assert result.exit_code == 0, result.output + result.stderr
    verdicts = [line for line in result.stdout.splitlines() if line.startswith("overall:")]
    assert verdicts == ["overall: FAILED"], result.stdout


def test_a_log_record_is_one_line():
    from exporter.cli.group import PrintableFormatter

    record = logging.LogRecord("exporter", logging.WARNING, __file__, 1, "ignoring %s", (f"a\n{FORGED}\u2028",), None)
    assert PrintableFormatter("%(message)s").format(record) == f"ignoring a\\n{FORGED}\\u2028"
