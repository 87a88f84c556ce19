"""``flexiexport inspect``: a bundle's manifest as a table, or as strict JSON."""

from __future__ import annotations

from pathlib import Path

import click

from exporter.bundle.report import left_out, lint_title
from exporter.bundle.values import strict_json
from exporter.cli.group import cli, debug_option
from exporter.cli.render import (
    console,
    print_engines,
    print_preflight,
    print_source_parity,
    print_table,
    safe,
)


@cli.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the raw manifest.")
@click.option("--wide", is_flag=True, help="Every column of the variant table (it needs about 130 columns).")
@debug_option
def inspect(bundle: Path, as_json: bool, wide: bool, debug: bool) -> None:
    """Print a bundle's manifest as a table."""
    from exporter.bundle.door import read_manifest

    manifest = read_manifest(bundle)
    if as_json:  # strict JSON: a failed check's NaN is written as null
        click.echo(strict_json(manifest.to_dict()), nl=False)
        return
    out = console()
    src = manifest.source
    out.print(
        f"[bold]{safe(manifest.name)}[/bold]  "
        + safe(f"built {manifest.created} by flexiexport {manifest.versions['flexiexport']}")
    )
    out.print(safe(f"source: {src.path or src.kind}  sha256 {str(src.sha256)[:16]}…"))
    out.print(safe(f"        {src.architecture.summary}"))
    for said in manifest.assumptions:
        out.print(f"[yellow]assumed[/yellow] {safe(said)}")
    pre = manifest.preprocessing
    out.print(
        safe(f"preprocessing: mean {list(pre.mean)} std {list(pre.std)} {pre.interpolation} crop_pct {pre.crop_pct}")
    )
    out.print(safe("versions: " + ", ".join(f"{k} {v}" for k, v in manifest.versions.items())))
    print_table(manifest, "variants", wide)

    for line in left_out(manifest):
        out.print(safe(f"left out {line}"))
    print_source_parity(manifest, out)
    print_preflight(manifest, wide, out)
    for v in manifest.variants:
        if v.trt_lint and not v.trt_lint.passed:
            issues = "; ".join(map(str, v.trt_lint.issues))
            out.print(f"[yellow]{safe(lint_title(v))}[/yellow] {safe(v.label)}: {safe(issues)}")
    for name, entry in manifest.engines.items():
        print_engines(name, entry)
    out.print("overall: " + ("[green]passed[/green]" if manifest.passed else "[red]FAILED[/red]"))
