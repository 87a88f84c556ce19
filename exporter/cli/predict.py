"""``flexiexport predict``: images through a bundle, by variant or by latency budget."""

from __future__ import annotations

from pathlib import Path

import click
from typing_extensions import TypedDict, Unpack

from exporter.bundle.values import strict_json
from exporter.cli.group import cli, debug_option
from exporter.cli.params import RUNTIME_BACKEND_HELP
from exporter.cli.render import (
    console,
    safe,
)
from exporter.core.errors import UsageError
from exporter.core.names import printable


class PredictFlags(TypedDict):
    """``predict``'s options, as Click passes them."""

    variant: str | None
    budget_ms: float | None
    backend: str
    precision: str
    batch: int
    top_k: int
    threads: int | None
    as_json: bool
    debug: bool


@cli.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--variant",
    metavar="pN",
    help="Run this variant: its label (see 'flexiexport inspect') or patch size (16). "
    "Neither --variant nor --budget-ms: the most accurate variant.",
)
@click.option(
    "--budget-ms",
    type=float,
    help="Latency budget: the most accurate variant whose p99 fits, measured on this device "
    "(bench.json, or a short probe recorded in latency.json).",
)
@click.option(
    "--backend",
    default="auto",
    show_default=True,
    help=RUNTIME_BACKEND_HELP,
)
@click.option("--precision", type=click.Choice(["fp32", "fp16", "int8"]), default="fp32", show_default=True)
@click.option("--batch", type=int, default=1, show_default=True, help="The batch size the budget is for.")
@click.option("--top-k", type=int, default=5, show_default=True)
@click.option("--threads", type=int, help="CPU threads [default: all available cores].")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@debug_option
def predict(bundle: Path, images: tuple[Path, ...], **kw: Unpack[PredictFlags]) -> None:
    """Classify images with a bundle: by --variant, by --budget-ms on this device, else with
    the most accurate variant (a feature model: each image's embedding, summarised, or whole
    with --json). The demo reads white digits on black, as docs/digit.png.

    \b
    flexiexport predict bundles/flexivit-demo docs/digit.png
    flexiexport predict bundles/flexivit-demo docs/digit.png --budget-ms 1
    """

    from exporter.runtime import Bundle as RuntimeBundle
    from exporter.runtime.model import predict_files

    check_flags(kw)
    opened = RuntimeBundle.open(bundle)
    model = opened.model(
        variant=kw["variant"],
        budget_ms=kw["budget_ms"],
        backend=kw["backend"],
        precision=kw["precision"],
        batch=kw["batch"],
        threads=kw["threads"],
    )
    if kw["variant"] is None and kw["budget_ms"] is None:  # said once, on stderr: stdout stays the answer
        click.echo(
            safe(f"no --variant or --budget-ms: {model.variant} ({opened.ranked_by(model.backend, model.precision)})"),
            err=True,
        )
    results = predict_files(opened, images, model, kw["top_k"])
    bad = [(path, why) for path, why in results if isinstance(why, str)]
    if kw["as_json"]:
        key = "top" if opened.classifier else "embedding"
        rows = [
            {"image": str(path), "error": found}
            if isinstance(found, str)
            else {"image": str(path), key: [vars(p) for p in found] if isinstance(found, list) else found.tolist()}
            for path, found in results
        ]
        head = {"variant": model.variant, "backend": model.backend, "output": opened.output_name}

        click.echo(strict_json({**head, "results": rows}), nl=False)  # a NaN logit is null, not a bare NaN
    else:
        from exporter.runtime.model import embedding_summary

        out = console()
        out.print(safe(f"{model.variant} on {model.backend} ({model.precision})"))
        for path, found in results:
            if isinstance(found, str):
                continue
            if not isinstance(found, list):  # a feature model: its embedding, summarised
                out.print(safe(f"{path}: {embedding_summary(found)}"))
                continue
            best = found[0]
            rest = ", ".join(f"{p.label} {p.probability:.1%}" for p in found[1:])
            out.print(safe(f"{path}: {best.label} ({best.probability:.1%})" + (f"  [{rest}]" if rest else "")))
    for _, why in bad:  # each names its file
        click.echo(f"error: {printable(str(why))}", err=True)
    if bad:
        ctx = click.get_current_context()
        ctx.exit(2)


def check_flags(kw: PredictFlags) -> None:
    """The flags' own values, in the flags' words, before the bundle is opened."""
    import math

    if kw["variant"] is not None and kw["budget_ms"] is not None:
        raise UsageError("give either --variant (e.g. --variant p16) or --budget-ms MS, not both")
    budget = kw["budget_ms"]
    if budget is not None and not (math.isfinite(budget) and budget > 0):
        raise UsageError(f"--budget-ms must be a positive number of milliseconds, got {budget:g}")
    for flag in ("top_k", "threads", "batch"):
        value = kw[flag]
        if value is not None and value < 1:
            raise UsageError(f"--{flag.replace('_', '-')} must be at least 1, got {value}")
