"""What the commands' options parse: sizes (``16``, ``10x15``, ``dynamic:32-128``), batch sizes,
greedy multi-value options, and the backend lists spelled here so that ``--help`` imports no numpy."""

from __future__ import annotations

import re
from typing import Any

import click

from exporter.core.errors import (
    FlexiExportError,
    UsageError,
)
from exporter.core.sizes import DYNAMIC_PREFIX, Size2, SizeRange, parse_img_range, to_size2

NUMBERISH = re.compile(r"^-?\d")


class SizeType(click.ParamType):
    """``16``, ``10x15`` or ``8,16,32`` → a tuple of ``(h, w)`` sizes."""

    name = "SIZE"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> tuple[Size2, ...]:
        if isinstance(value, tuple):
            return value
        try:
            return tuple(to_size2(part) for part in str(value).split(",") if part.strip() or "," not in str(value))
        except FlexiExportError as exc:
            self.fail(str(exc), param, ctx)


class GreedyCommand(click.Command):
    """A command whose listed options take every following value up to the next option.

    Click options take a fixed number of values; this lets ``--patch-sizes 8 16 32`` and the
    seed converter's ``-ps 10 15`` work exactly as typed (values are joined with commas).
    """

    greedy: tuple[str, ...] = ()

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        out: list[str] = []
        i = 0
        while i < len(args):
            out.append(args[i])
            if args[i] in self.greedy:
                values = []
                while i + 1 < len(args) and (not args[i + 1].startswith("-") or NUMBERISH.match(args[i + 1])):
                    values.append(args[i + 1])
                    i += 1
                if values:
                    out.append(",".join(values))
            i += 1
        return super().parse_args(ctx, out)


class BuildCommand(GreedyCommand):
    greedy = ("--patch-sizes", "-p", "--img-size")


class ResizeCommand(GreedyCommand):
    greedy = ("--patch-size", "-ps")


def flatten_sizes(groups: tuple[tuple[Size2, ...], ...]) -> tuple[Size2, ...]:
    return tuple(size for group in groups for size in group)


def parse_img_size(value: str) -> str | Size2:
    if value in ("native", "auto"):
        return value
    try:
        return to_size2(value, "image size")
    except FlexiExportError as exc:
        raise click.BadParameter(f"must be N, HxW, 'native' or 'auto', got {value!r}") from exc


def parse_img_sizes(value: str) -> tuple[str | Size2 | SizeRange, tuple[Size2, ...]]:
    """``--img-size``: one policy (``native``, ``auto``, ``64``), several sizes (``48 64 96``,
    joined with commas by the greedy parser) for a grid of variants, or ``dynamic:MIN-MAX``
    (returned as its (min, max) range)."""
    parts = [p.strip() for p in value.split(",") if p.strip()]
    if any(p.startswith(DYNAMIC_PREFIX) for p in parts):
        if len(parts) != 1:
            raise click.BadParameter(f"dynamic:MIN-MAX stands alone, got {value!r}")
        try:
            return parse_img_range(parts[0]), ()
        except FlexiExportError as exc:
            raise click.BadParameter(str(exc).removeprefix("img_size ")) from exc  # the option names itself
    if len(parts) <= 1:
        return parse_img_size(value.strip(",")), ()
    sizes = [parse_img_size(p) for p in parts]
    fixed = tuple(s for s in sizes if isinstance(s, tuple))
    if len(fixed) != len(sizes):
        raise click.BadParameter(
            f"several image sizes must all be N or HxW ('native'/'auto' stand alone), got {value!r}"
        )
    return "native", fixed


def parse_batch_sizes(value: str) -> tuple[int, ...]:
    """``1 8`` or ``1,8`` → (1, 8); anything but positive integers is a usage error."""
    sizes = []
    for part in (p for p in value.replace(" ", ",").split(",") if p.strip()):
        if not part.strip().lstrip("-").isdigit():
            raise UsageError(f"--batch-sizes must be positive integers (e.g. 1 8 or 1,8), got {part!r}")
        if int(part) < 1:
            raise UsageError(f"--batch-sizes must be positive integers (e.g. 1 8 or 1,8), got {int(part)}")
        sizes.append(int(part))
    return tuple(sizes)


def parse_batch(value: str) -> str | int:
    if value == "dynamic":
        return value
    if value.isdigit() and int(value) > 0:
        return int(value)
    raise click.BadParameter(f"must be 'dynamic' or a positive integer, got {value!r}")


class BenchCommand(GreedyCommand):
    greedy = ("--batch-sizes", "--backends")


RUNTIME_BACKEND_HELP = (
    "tensorrt, ort-tensorrt, ort-cuda, ort-cpu, openvino, openvino-bf16, or auto (the first present)."
)
