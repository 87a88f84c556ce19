"""``flexiexport resize``: the seed project's converter (PI-resize one kernel inside a checkpoint)."""

from __future__ import annotations

from pathlib import Path

import click
from typing_extensions import TypedDict, Unpack

from exporter.cli.group import cli, debug_option
from exporter.cli.params import (
    ResizeCommand,
    SizeType,
)
from exporter.cli.render import (
    console,
    safe,
)
from exporter.core.errors import UsageError
from exporter.core.sizes import Size2, format_size, grid_for, to_size2


class ResizeFlags(TypedDict):
    """``resize``'s options, as Click passes them."""

    src: Path
    dst: Path
    key: str
    patch: tuple[Size2, ...]
    img_size: str | None
    pos_key: str | None
    interpolation: str
    antialias: bool
    trust_checkpoint: bool
    force: bool
    debug: bool


@cli.command(cls=ResizeCommand)
@click.option("--input", "-i", "src", type=click.Path(path_type=Path), required=True, help="Checkpoint to read.")
@click.option(
    "--output",
    "-o",
    "dst",
    type=click.Path(path_type=Path),
    default=Path("converted_weights.pt"),
    show_default=True,
    help="Checkpoint to write.",
)
@click.option(
    "--name",
    "-n",
    "key",
    default="patch_embed.proj.weight",
    show_default=True,
    help="State-dict key of the patch embedding's conv weight.",
)
@click.option("--patch-size", "-ps", "patch", type=SizeType(), required=True, help="New patch: 20, or 10 15 (h w).")
@click.option("--img-size", help="Also resample the position embedding for this image size (N or HxW).")
@click.option("--pos-key", help="State-dict key of the position embedding [default: pos_embed beside --name].")
@click.option("--interpolation", type=click.Choice(["bilinear", "bicubic"]), default="bicubic", show_default=True)
@click.option("--antialias/--no-antialias", default=True, show_default=True)
@click.option("--trust-checkpoint", is_flag=True, help="Allow checkpoints that need pickled code.")
@click.option("--force", is_flag=True, help="Overwrite --output if it exists.")
@debug_option
def resize(**kw: Unpack[ResizeFlags]) -> None:
    """PI-resize a checkpoint's patch embedding (the seed project's converter).

    \b
    flexiexport resize -i vit-16.pt -o vit-20.pt -n patch_embed.proj.weight -ps 20
    flexiexport resize -i vit-16.pt -o vit-10-15.pt -ps 10 15 --img-size 240
    """
    from exporter.build.convert import RESIZE_ADVICE, check_paths, convert_checkpoint, describe
    from exporter.source.resampling import ResizeMethod

    sizes = kw["patch"]
    if len(sizes) == 2 and sizes[0][0] == sizes[0][1] and sizes[1][0] == sizes[1][1]:
        sizes = ((sizes[0][0], sizes[1][0]),)  # "-ps 10 15" means height 10, width 15
    if len(sizes) != 1:
        raise UsageError(f"-ps takes one size (20) or height and width (10 15), got {len(sizes)} values")
    img = to_size2(kw["img_size"], "image size") if kw["img_size"] else None
    if img is not None:
        grid_for(img, sizes[0], RESIZE_ADVICE)  # before anything is read or printed
    method = ResizeMethod(kw["interpolation"], kw["antialias"])
    check_paths(kw["src"], kw["dst"], kw["force"])
    out = console()
    out.print(safe(f"Resizing {kw['key']} in {kw['src']} to {format_size(sizes[0])}"))
    result = convert_checkpoint(
        kw["src"],
        kw["dst"],
        kw["key"],
        sizes[0],
        img,
        kw["pos_key"],
        method,
        method,
        kw["trust_checkpoint"],
        kw["force"],
    )
    out.print(safe(describe(result)))
    out.print(safe(f"Converted weights saved to {result.output}"))
