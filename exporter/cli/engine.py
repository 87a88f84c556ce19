"""``flexiexport engine``: TensorRT engines built and validated on the target device."""

from __future__ import annotations

from pathlib import Path

import click

from exporter.cli.group import cli, debug_option
from exporter.cli.render import (
    RichReporter,
    print_engines,
)
from exporter.core.errors import ValidationFailed


@cli.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--profile", "profile", required=True, metavar="NAME|FILE.toml", help="Deployment profile.")
@click.option("--quiet", "-q", is_flag=True, help="Print only the verdicts.")
@debug_option
def engine(bundle: Path, profile: str, quiet: bool, debug: bool) -> None:
    """Build and validate TensorRT engines on the target device and add them to the bundle."""
    from exporter.bundle.door import read_manifest
    from exporter.tensorrt.stage import add_engines

    read_manifest(bundle)
    with RichReporter(quiet) as reporter:
        entry = add_engines(bundle, profile, reporter)
    print_engines(profile, entry)
    if entry.status not in ("built", "built (not run)"):  # TensorRT-RTX without a GPU: built, not run
        raise ValidationFailed(f"TensorRT engines for {profile} failed validation; see {bundle / 'report.md'}")
