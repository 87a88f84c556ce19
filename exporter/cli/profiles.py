"""``flexiexport profiles``: the shipped deployment profiles."""

from __future__ import annotations

from exporter.cli.group import cli, debug_option
from exporter.cli.render import (
    console,
    print_whole,
    safe,
)
from exporter.tensorrt.library import TENSORRT_RTX
from exporter.tensorrt.profile import available_profiles, load_profile


@cli.command()
@debug_option
def profiles(debug: bool) -> None:
    """List the shipped deployment profiles."""
    from rich.table import Table

    table = Table(title="profiles (pass --profile NAME, or --profile FILE.toml)", title_justify="left")
    for header in ("name", "precision", "batch", "workspace", "sm", "library"):
        table.add_column(header, no_wrap=True)
    notes = []
    for path in available_profiles():
        p = load_profile(path)
        table.add_row(
            *map(
                safe,
                (
                    p.name,
                    p.precision,
                    f"{p.batch.min}/{p.batch.opt}/{p.batch.max}",
                    f"{p.workspace_mib} MiB",
                    p.compute_capability or "any",
                    f"{'RTX' if p.library == TENSORRT_RTX.key else 'TRT'} {p.tensorrt}",
                ),
            )
        )
        dla = f" DLA core {p.dla_core}." if p.dla_core >= 0 else ""
        notes.append(f"{p.name}: {p.description}{dla}")
    out = console()
    print_whole(table, out)
    out.print("batch: min/opt/max of the engines' optimisation profile; library: TensorRT (TRT) or TensorRT-RTX")
    for note in notes:  # a sentence each: under the table, where it wraps at words, not in a 10-column cell
        out.print(safe(note))
