"""``flexiexport triton``: a Triton Inference Server model repository from a bundle."""

from __future__ import annotations

import os
from pathlib import Path

import click
from typing_extensions import TypedDict, Unpack

from exporter.bundle.schema import Manifest
from exporter.cli.group import cli, debug_option
from exporter.cli.params import RUNTIME_BACKEND_HELP
from exporter.cli.render import (
    console,
    safe,
)
from exporter.core.errors import UsageError
from exporter.core.locks import destination_lock
from exporter.core.precision import PRECISIONS, Precision


def repository_max_batch(manifest: Manifest, max_batch: int | None) -> int:
    """--max-batch, else the bundle's engine profile batch.max, else 8."""
    if max_batch is None:
        profiles = [e.profile.batch.max for e in manifest.engines.values()]
        max_batch = profiles[0] if profiles else 8
    if not 1 <= max_batch <= 4096:  # the largest batch a bundle's profile may record
        raise UsageError(f"--max-batch must be 1 to 4096, got {max_batch}")
    return max_batch


class TritonFlags(TypedDict):
    """``triton``'s options, as Click passes them."""

    backend: str
    max_batch: int | None
    precision: str
    runtime_backend: str
    dynamic_batching: bool
    force: bool
    debug: bool


@cli.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--out", "repo", type=click.Path(path_type=Path), required=True, help="Model repository folder to write.")
@click.option(
    "--backend",
    type=click.Choice(["onnx", "tensorrt", "python"]),
    default="onnx",
    show_default=True,
    help="Triton backend: onnx (ONNX Runtime), tensorrt (built engines), or python (exporter.runtime in "
    "Triton's Python backend, plus the 'flexivit' entry model that picks the variant per request).",
)
@click.option(
    "--max-batch",
    type=int,
    help="max_batch_size for dynamic-batch models [default: the bundle's engine profile batch.max, else 8].",
)
@click.option(
    "--precision",
    type=click.Choice(PRECISIONS),
    default="fp32",
    show_default=True,
    help="Which of the bundle's ONNX files the onnx and python backends serve (fp16/int8: built with --precision).",
)
@click.option(
    "--runtime-backend",
    default="auto",
    show_default=True,
    help="--backend python: the runtime's " + RUNTIME_BACKEND_HELP,
)
@click.option(
    "--dynamic-batching/--no-dynamic-batching",
    default=True,
    show_default=True,
    help="Let Triton batch concurrent requests together.",
)
@click.option("--force", is_flag=True, help="Replace an existing repository.")
@debug_option
def triton(bundle: Path, repo: Path, **kw: Unpack[TritonFlags]) -> None:
    """Write a Triton Inference Server model repository, one model per variant."""
    from exporter.bundle.door import Bundle
    from exporter.bundle.write import check_replaceable_repository, staging_folder, swap_into_place
    from exporter.deploy.repository import triton_schema, write_repository

    opened = Bundle.open(bundle)
    max_batch = repository_max_batch(opened.manifest, kw["max_batch"])
    repo = Path(os.path.normpath(repo))  # 'x/..' names the parent, which the checks must see

    def replaceable(path: Path) -> None:
        check_replaceable_repository(path, kw["force"], protect=[bundle])

    with destination_lock(repo):  # one writer per --out, from the check to the swap (which checks again)
        replaceable(repo)
        with staging_folder(repo) as tmp:
            names = write_repository(
                opened,
                tmp,
                kw["backend"],
                max_batch,
                Precision(kw["precision"]),
                kw["runtime_backend"],
                kw["dynamic_batching"],
            )
            swap_into_place(tmp, repo, "model repository", replaceable)
    out = console()
    out.print(safe(f"wrote {len(names)} models to {repo}: {', '.join(names)}"))
    if triton_schema() is None:
        out.print("configs not checked against Triton's schema: pip install tritonclient")
    else:
        out.print("every config.pbtxt parsed with Triton's model_config schema")
