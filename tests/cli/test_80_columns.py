"""Every command's tables and help in a real 80-column terminal (issue 25): no line over 80
columns and no cell cut to "…" (``p8_…`` made p8_48, p8_64 and p8_96 look alike), and every
check the build made on a row of its own (the fp16/int8 files, a dynamic variant's smallest and
largest sizes) in the table, ``inspect`` and report.md."""

from __future__ import annotations

import re
import shutil

import pytest
from click.testing import CliRunner, Result

from conftest import DYNAMIC, GRID, INT8, QUICK_BENCH, built

# What Rich sees in an 80-column terminal: a terminal (so lines wrap at words and tables are
# laid out for it, not printed whole as for a pipe), without colour.
TERMINAL = {"COLUMNS": "80", "LINES": "40", "TTY_COMPATIBLE": "1", "TTY_INTERACTIVE": "0", "NO_COLOR": "1"}
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def in_terminal(*args: str) -> tuple[Result, str]:
    """``flexiexport ARGS`` in an 80-column terminal: the result and its stdout without styles;
    asserts no line is wider than 80 columns and nothing was cut to "…"."""
    from exporter.cli.group import cli

    result = CliRunner(env=TERMINAL).invoke(cli, list(args), terminal_width=80, catch_exceptions=False)
    text = ANSI.sub("", result.stdout)
    long = [line for line in text.splitlines() if len(line) > 80]
    assert not long, "\n".join(long)
    assert not any("…" in line for line in table_lines(text)), text
    return result, text


def table_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line[:1] in "┃│┏┡└"]


@pytest.fixture(scope="module")
def int8(tmp_path_factory):
    return built(tmp_path_factory, *INT8).path


@pytest.fixture(scope="module")
def dynamic(tmp_path_factory):
    return built(tmp_path_factory, *DYNAMIC, name="dynamic").path


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    return built(tmp_path_factory, *GRID, name="grid").path


@pytest.mark.parametrize("command", ["build", "inspect", "validate", "bench", "evaluate", "predict", "triton", "serve"])
def test_help_fits_80_columns(command):
    """``build --help`` and ``serve --help`` examples ran to 104 columns."""
    result, _ = in_terminal(command, "--help")
    assert result.exit_code == 0


def test_profiles_is_one_line_a_profile_and_cuts_nothing():
    """A profile's row took about 17 lines and cut ``precisi…`` and ``>=10.0,<…``."""
    result, text = in_terminal("profiles")
    assert result.exit_code == 0
    rows = [line for line in text.splitlines() if line.startswith("│")]
    assert len(rows) == len({row.split("│")[1] for row in rows}) >= 7  # one line each, a name on each
    assert "precision" in text and ">=10.0,<12" in text and "jetson-orin-nano: Jetson Orin Nano" in text


def test_build_and_inspect_show_every_reduced_precision_check(int8, tmp_path):
    """After --precision int8 the table and ``inspect --wide`` showed the fp32 rows only."""
    result, text = in_terminal("build", "-p", "16", "--precision", "int8", "--out", str(tmp_path / "b"))
    assert result.exit_code == 0 and re.search(r"│ ✓ │ p16 int8 +│", text), text
    _, text = in_terminal("inspect", str(int8))
    for label in ("p8", "p16", "p32"):
        assert re.search(rf"│ ✓ │ {label} int8 +│", text), text
    from conftest import run_cli

    assert "model_p32.int8.onnx" in run_cli("inspect", str(int8), "--wide").stdout
    assert "| ✓ | p8 int8 |" in (int8 / "report.md").read_text()


def test_a_dynamic_bundle_shows_its_smallest_and_largest_checks(dynamic):
    """report.md of a dynamic bundle omitted the checks at its smallest and largest size."""
    _, text = in_terminal("inspect", str(dynamic))
    for label in ("p16 at 32", "p16 at 128", "p32 at 32", "p32 at 128"):
        assert re.search(rf"│ ✓ │ {label} +│", text), text
    report = (dynamic / "report.md").read_text()
    assert "| ✓ | p16 at 32 | 32 |" in report and "| ✓ | p32 at 128 | 128 |" in report
    _, text = in_terminal("validate", str(dynamic))
    assert "p32 at 128" in text and "all 6 checks" in text


def test_a_grid_names_what_it_left_out_and_bench_keeps_its_labels_whole(grid, tmp_path):
    """The grid's report.md did not mention the left-out pairs; ``bench`` cut p8_48 to ``p8_…``
    and ``ort-cpu`` to ``ort…``; "peak RSS" was the process's, repeated on every row; ``1 threads``;
    ``--backends ort-cpu`` measured OpenVINO's ceiling too."""
    assert "- p32_48: patch 32 does not tile image 48" in (grid / "report.md").read_text()
    _, text = in_terminal("inspect", str(grid))
    assert "left out p32_48: patch 32 does not tile image 48" in text
    copy = shutil.copytree(grid, tmp_path / "grid")
    result, text = in_terminal("bench", str(copy), "--backends", "ort-cpu", "--threads", "1", *QUICK_BENCH[:-1])
    assert result.exit_code == 0, result.output
    for label in ("p16_48", "p16_64", "p32_64"):
        assert re.search(rf"│ {label} +│ +1 │ ort-cpu +│", text), text
    assert re.search(r", 1 thread *\n", text) and "peak RSS" not in "".join(table_lines(text))
    assert "process peak RSS:" in text
    assert "onnxruntime fp32 MatMul" in text and "OpenVINO" not in text and "torch sgemm" not in text
    assert "fastest deployable backend within its tolerance, among ort-cpu" in text
    assert "No CUDA runtime" not in result.output


def test_validate_rows_fit_80_columns_with_the_reduced_file_on_its_own_row(int8):
    """``validate`` rows were 106 columns."""
    result, text = in_terminal("validate", str(int8))
    assert result.exit_code == 0
    assert re.search(r"│ ✓ │ p32 int8 +│", text) and "all 3 variants passed" in text
