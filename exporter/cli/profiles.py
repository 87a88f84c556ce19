"""``flexiexport profiles``: the shipped deployment profiles."""

from __future__ import annotations

from exporter.cli.group import cli, debug_option
from exporter.cli.render import (
    print_whole,
    safe,
)
from exporter.tensorrt.profile import available_profiles, load_profile


@cli.command()
@debug_option
def profiles(debug: bool) -> None:
    """List the shipped deployment profiles."""
    from rich.table import Table

    table = Table(title="profiles (pass --profile NAME, or --profile FILE.toml for your own)", title_justify="left")
    for header in ("name", "precision", "batch min/opt/max", "workspace", "sm", "TensorRT", "DLA", "note"):
        table.add_column(header)
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
                    p.tensorrt,
                    str(p.dla_core) if p.dla_core >= 0 else "-",
                    p.description,
                ),
            )
        )
    print_whole(table)
