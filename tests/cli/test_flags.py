"""Each command's ``**kw`` is typed by a TypedDict of its options (``BuildFlags``, ...): mypy checks
every ``kw["..."]`` against it, but cannot see what Click passes. Here each TypedDict is held to its
command's Click options: the same names, and for Click's own types the same value type (None where
an option without a default may be left out)."""

from __future__ import annotations

import importlib
import inspect
import typing

import click
import pytest

from exporter.cli.params import SizeType

COMMANDS = {"bench": "BenchFlags", "build": "BuildFlags", "resize": "ResizeFlags", "triton": "TritonFlags",
            "serve": "ServeFlags", "predict": "PredictFlags"}  # fmt: skip
CLICK_TYPES = {click.STRING: str, click.INT: int, click.FLOAT: float, click.BOOL: bool}


def value_type(option: click.Option, ctx: click.Context) -> object:
    """What Click passes for ``option``; None for a type of our own (SIZE), whose name is checked only."""
    kind = option.type
    base = (
        CLICK_TYPES.get(kind)  # type: ignore[call-overload]
        or (str if isinstance(kind, click.Choice) else None)
        or (kind.type if isinstance(kind, click.Path) and kind.type is not None else None)
    )
    if base is None or isinstance(kind, SizeType):
        return None
    default = option.get_default(ctx)
    if option.multiple:
        return tuple[base, ...]  # type: ignore[valid-type]
    optional = not option.required and (default is None or type(default).__name__ == "Sentinel")
    return base | None if optional else base


@pytest.mark.parametrize("command", COMMANDS)
def test_each_commands_typed_flags_are_its_click_options(command: str) -> None:
    module = importlib.import_module(f"exporter.cli.{command}")
    cmd: click.Command = getattr(module, command)
    hints = typing.get_type_hints(getattr(module, COMMANDS[command]))
    ctx = click.Context(cmd)
    named = inspect.signature(cmd.callback).parameters  # type: ignore[arg-type]
    options = [p for p in cmd.params if isinstance(p, click.Option) and p.name not in named]
    assert list(hints) == [p.name for p in options]
    for option in options:
        expected = value_type(option, ctx)
        if expected is not None:
            assert hints[option.name] == expected, option.name
