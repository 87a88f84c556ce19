"""Errors name the library's parameters as values: ``str()`` words them as parameters, the CLI as flags."""

import re
from pathlib import Path

import click
import pytest

from exporter.cli.app import cli
from exporter.cli.group import COMMAND_FLAGS, FLAGS, flag_wording, option_flags
from exporter.core.errors import ImageErrors, UsageError, param
from exporter.source.model import SourceSpec

from conftest import one_line_error, run_cli

LIBRARY = Path(__file__).resolve().parents[2] / "exporter"


def test_an_error_words_its_parameters_as_names_or_as_flags():
    exc = UsageError(f"{param('num_heads')} must be a positive integer, got 0")
    assert exc.params == ("num_heads",)
    assert str(exc) == "num_heads must be a positive integer, got 0"
    assert exc.worded(lambda name: f"--{name.replace('_', '-')}") == "--num-heads must be a positive integer, got 0"


def test_several_files_word_each_line():
    exc = ImageErrors([f"{param('data')}: a.png is empty", f"{param('data')}: b.png is empty"])
    assert exc.lines == ["data: a.png is empty", "data: b.png is empty"]
    assert str(exc) == "data: a.png is empty; data: b.png is empty"
    assert exc.worded_lines(lambda name: f"--{name}")[1] == "--data: b.png is empty"


def test_a_value_keeps_its_text():
    shown = "a\x1f{b} --x\x1f.pt"
    exc = UsageError(f"{param('weights')} {shown} is not a file")
    assert exc.params == ("weights",)
    assert str(exc) == f"weights {shown} is not a file"


def test_param_takes_an_identifier():
    with pytest.raises(ValueError, match="identifier"):
        param("--num-heads")


def test_the_library_names_parameters_and_the_cli_flags():
    with pytest.raises(UsageError) as info:
        SourceSpec(pretrained=True)
    assert str(info.value) == "pretrained needs model_name NAME (a timm model name)"
    assert one_line_error(run_cli("build", "--pretrained", "-p", "16")) == (
        "error: --pretrained needs --model NAME (a timm model name)"
    )
    with pytest.raises(UsageError) as info:  # --debug's traceback ends with the same words
        run_cli("build", "--pretrained", "-p", "16", "--debug")
    assert str(info.value) == "--pretrained needs --model NAME (a timm model name)"


def named_params() -> set[str]:
    """Every name given to ``param`` in the library."""
    found = set()
    for path in LIBRARY.rglob("*.py"):
        found |= set(re.findall(r"""\bparam\(\s*["']([a-z0-9_]+)["']\s*\)""", path.read_text()))
    return found


def test_every_named_parameter_has_one_flag():
    """A name the running command lacks is worded as another command's flag (``engine`` advises
    "build with --calib-dir"): every name resolves, and to one flag whichever command has it."""
    assert isinstance(cli, click.Group)
    names = named_params()
    assert len(names) > 5, names
    for name in sorted(names - set(FLAGS)):
        flags = {option_flags(command).get(name) for command in cli.commands.values()} - {None}
        assert len(flags) == 1, f"param({name!r}) is worded as {flags or 'no flag'} (add it to FLAGS)"
    for command, flags in COMMAND_FLAGS.items():
        assert set(flags) <= set(option_flags(cli.commands[command])), command
    for command in cli.commands:
        ctx = click.Context(cli)
        ctx.invoked_subcommand = command
        word = flag_wording(ctx)
        assert all(word(name).startswith("-") for name in names), command


def test_resize_keeps_the_seed_converters_short_flags(tmp_path):
    (tmp_path / "in.pt").write_bytes(b"")
    result = run_cli("resize", "-i", str(tmp_path / "in.pt"), "-o", str(tmp_path), "-ps", "16")
    assert one_line_error(result) == f"error: -o {str(tmp_path)!r} is a folder; give a file path"
