"""The ``flexiexport`` command line: thin Click commands over the library.

Heavy libraries (torch, timm, onnx, onnxruntime, tensorrt) are imported inside the commands
that need them, so ``flexiexport --help`` and ``flexiexport CMD --help`` stay fast. This is the
only module that turns exceptions into exit codes and text:
0 ok · 1 internal error · 2 bad usage or input · 3 validation failed · 4 environment lacks a need.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import signal
from dataclasses import replace
from pathlib import Path
from typing import Any, NoReturn

import click

from exporter import __version__
from exporter.errors import (
    DiskFullError,
    EnvironmentMissing,
    FlexiExportError,
    UsageError,
    ValidationFailed,
    full_disk_cause,
)
from exporter.manifest import top1_text
from exporter.names import printable
from exporter.precision import PRECISIONS, Precision
from exporter.sizes import DYNAMIC_PREFIX, Size2, SizeRange, format_size, grid_for, parse_img_range, to_size2

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
            raise click.BadParameter(str(exc).removeprefix("--img-size ")) from exc
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


def debug_option(func: Any) -> Any:
    return click.option("--debug", is_flag=True, help="Show tracebacks and debug logs.")(func)


def console(stderr: bool = False) -> Any:
    """Rich's console at the terminal's width; when piped (a log, a file, ``grep``), lines are
    never wrapped and tables print whole (``print_whole``), rather than cut at 80 columns."""
    from rich.console import Console

    out = Console(stderr=stderr, highlight=False, emoji=False)
    out.soft_wrap = not out.is_terminal
    return out


def print_whole(renderable: Any, out: Any = None) -> None:
    """Print a table; when piped (a log, a file, ``less``), as wide as it needs rather than with
    its numbers cut to "…": no one is there to widen the window."""
    from rich.measure import Measurement

    out = out or console()
    if not out.is_terminal and not out.record:
        needed = Measurement.get(out, out.options.update(width=10_000), renderable).maximum
        out.width = max(out.width, needed)
    out.print(renderable)


def safe(text: object) -> str:
    """``text`` from a manifest, a checkpoint config or a file name, ready for Rich: control
    characters (ANSI escapes) removed and markup shown as written, never interpreted."""
    from rich.markup import escape

    return escape(printable(str(text)))


class FlexiGroup(click.Group):
    """The command group; the one place that turns exceptions into exit codes and one-line errors."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        ctx.meta["flexiexport.debug"] = "--debug" in args
        return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context) -> Any:
        debug = ctx.meta.get("flexiexport.debug", False)
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:
            command = f"flexiexport {exc.ctx.info_name}" if exc.ctx and exc.ctx.parent else "flexiexport"
            fail(ctx, f"{exc.format_message()} (see '{command} --help')", exc.exit_code)
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except KeyboardInterrupt as exc:
            ignore_further_interrupts()  # the clean-up ran; exit with the code and message below
            name = str(exc.args[0]) if exc.args and str(exc.args[0]).startswith("SIG") else "SIGINT"
            code = 128 + int(getattr(signal.Signals, name, signal.SIGINT))
            fail(ctx, f"interrupted ({name}); nothing was written (an existing bundle is as it was)", code)
        except DiskFullError as exc:
            if debug:
                raise
            fail(ctx, disk_full_text(ctx, exc), exc.exit_code)
        except FlexiExportError as exc:
            if debug:
                raise
            lines: list[str] = getattr(exc, "lines", None) or [str(exc)]  # ImageErrors: a line per file
            for line in lines[:-1]:
                click.echo(f"error: {printable(line)}", err=True)
            fail(ctx, lines[-1], exc.exit_code)
        except Exception as exc:
            if debug:
                raise
            full = full_disk_cause(exc)  # a write site we do not wrap (onnx.save, a library's own file)
            if full is not None:
                # a copy's (shutil's sendfile) or a rename's second path is the one being written
                fail(ctx, disk_full_text(ctx, DiskFullError(full.filename2 or full.filename or "the output")), 2)
            if isinstance(exc, OSError) and exc.filename and exc.errno in PATH_ERRNOS:
                fail(ctx, f"cannot use {str(exc.filename)!r}: {exc.strerror}", 2)  # a path the user gave
            fail(ctx, f"internal error: {type(exc).__name__}: {exc} (rerun with --debug for the traceback)", 1)


# An OSError about a path a command was given (too long, a loop of links, not a folder, no
# permission, gone) is bad input, exit 2, not an internal error.
PATH_ERRNOS = {
    errno.ENAMETOOLONG,
    errno.ELOOP,
    errno.ENOTDIR,
    errno.EISDIR,
    errno.EACCES,
    errno.EPERM,
    errno.ENOENT,
    errno.EROFS,
}
OUTPUT_OPTIONS = {"build": "--out", "triton": "--out", "resize": "-o"}


def disk_full_text(ctx: click.Context, exc: DiskFullError) -> str:
    """The error plus what to do; the option to suggest depends on the command."""
    option = OUTPUT_OPTIONS.get(ctx.invoked_subcommand or "")
    return f"{exc} (free some space{f' or choose another {option}' if option else ''})"


def fail(ctx: click.Context, message: str, code: int) -> NoReturn:
    click.echo(f"error: {printable(message)}", err=True)
    ctx.exit(code)
    raise AssertionError("unreachable")  # ctx.exit raises


@click.group(cls=FlexiGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="flexiexport")
@debug_option
def cli(debug: bool) -> None:
    """Turn one FlexiViT (or any timm ViT) checkpoint into validated models, one per patch size.

    \b
    Start here:   flexiexport build --patch-sizes 8 16 32
    Then:         flexiexport inspect bundles/flexivit-demo
    """
    _setup_logging(debug)


class PrintableFormatter(logging.Formatter):
    """Log lines can quote names from a checkpoint or a bundle: no control characters reach the
    terminal, and a record is one line (a ``--debug`` traceback after it keeps its own lines)."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return printable(super().formatMessage(record))


def _setup_logging(debug: bool) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(PrintableFormatter("%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, handlers=[handler])


class RichReporter:
    """Draws the pipeline's progress: one bar, a line per finished stage, a row per variant."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.err = console(stderr=True)
        self.progress: Any = None
        self.task: Any = None

    def __enter__(self) -> RichReporter:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.stop()

    def begin(self, total_steps: int) -> None:
        if self.quiet:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=self.err,
            transient=True,
        )
        self.task = self.progress.add_task("building", total=total_steps)
        self.progress.start()

    def start(self, label: str, stage: str) -> None:
        if self.progress is not None:
            self.progress.update(self.task, description=safe(f"{label}: {stage}"))
        elif not self.quiet:
            self.err.print(safe(f"{label}: {stage} ..."))

    def done(self, label: str, stage: str, seconds: float) -> None:
        if self.quiet:
            return
        if self.progress is not None:
            self.progress.advance(self.task)
            self.progress.console.print(safe(f"  {label}: {stage} done in {seconds:.2f} s"))
        else:
            self.err.print(safe(f"  {label}: {stage} done in {seconds:.2f} s"))

    def variant(self, record: Any) -> None:
        if self.quiet:
            return
        mark = "[green]✓[/green]" if record.parity.get("passed") else "[red]✗[/red]"
        p = record.parity
        note = " (resumed: inputs and ONNX unchanged)" if record.resumed else ""
        if self.progress is not None and record.resumed:
            self.progress.advance(self.task, 3)
        if record.trt_lint and not record.trt_lint.get("passed", True):
            issues = "; ".join(map(str, record.trt_lint["issues"]))
            self.err.print(f"[yellow]warning[/yellow] {safe(record.label)}: TensorRT lint: {safe(issues)}")
        self.err.print(
            f"{mark} {safe(record.label)}  max|Δ| {p['max_abs']:.1e}  cos {p['min_cosine']:.7f}{top1_text(p, 0)}{note}"
        )
        if record.reduced:
            r = record.reduced
            mark = "[green]✓[/green]" if r["status"] == "passed" else "[red]✗[/red]"
            q = r["parity"]
            why = "" if r["status"] == "passed" else f"  ({'; '.join(q['failures'])})"
            self.err.print(
                f"{mark} {safe(record.label)} {safe(r['precision'])}  max|Δ| {q['max_abs']:.1e}  "
                f"p99 {q['p99_abs']:.1e}  cos {q['min_cosine']:.5f}{top1_text(q)}  "
                f"{r['bytes'] / 1e6:.1f} MB{safe(why)}"
            )


def print_table(manifest: Any, title: str, wide: bool = False, out: Any = None) -> None:
    """The variant table: the columns that fit 80 columns, or with ``wide`` every column."""
    from rich.table import Table

    from exporter.manifest import TABLE_HEADER, shown_columns, variant_rows

    rows = variant_rows(manifest)
    shown = shown_columns(manifest, rows, wide)
    table = Table(title=safe(title), title_justify="left")
    for i in shown:
        header = TABLE_HEADER[i]
        table.add_column(header, justify="right" if header not in ("", "variant", "onnx") else "left", no_wrap=True)
    for row in rows:
        mark = "[green]✓[/green]" if row[0] == "✓" else "[red]✗[/red]"
        table.add_row(*[mark if i == 0 else safe(row[i]) for i in shown])
    print_whole(table, out)


def print_engines(name: str, entry: dict[str, Any]) -> None:
    out = console()
    if entry.get("command"):
        out.print(safe(f"TensorRT engines for profile {name}: {entry['status']} ({entry['reason']})"))
        out.print(safe(f"  on the target device run:  {entry['command']}"))
        out.print(safe(f"  or, with trtexec only:     bash {entry['script']}  (inside the bundle)"))
        return
    out.print(
        safe(
            f"TensorRT engines for profile {name}: {entry['status']} on {entry['gpu']} "
            f"(sm {entry['compute_capability']}, TensorRT {entry['tensorrt']})"
        )
    )
    for label, v in entry["variants"].items():
        mark = "[green]✓[/green]" if v["status"] == "passed" else "[red]✗[/red]"
        p = v["parity"]
        out.print(
            f"  {mark} {safe(label)}  {safe(v['engine'])}  max|Δ| {p['max_abs']:.1e}  cos {p['min_cosine']:.6f}"
            f"{top1_text(p)}  built in {v['build_seconds']:.0f} s"
        )


def failed_message(manifest: Any, bundle: Path) -> str:
    bad = [v for v in manifest.variants if v.status != "passed"]
    if not bad and manifest.source_parity.get("status") == "failed":
        from exporter.source_parity import describe

        return f"{describe(manifest.source_parity)}; see {bundle / 'report.md'}"
    bad_reduced = [v for v in bad if v.reduced and v.reduced["status"] != "passed" and v.parity.get("passed")]
    if bad_reduced and len(bad_reduced) == len(bad):
        detail = "; ".join(
            f"{v.label} {v.reduced['precision']}: {', '.join(v.reduced['parity']['failures'])}" for v in bad_reduced
        )
        return (
            f"{len(bad)} of {len(manifest.variants)} variants failed validation ({detail}); see {bundle / 'report.md'}"
        )
    bad_engines = [
        (n, label, v)
        for n, e in manifest.engines.items()
        for label, v in e.get("variants", {}).items()
        if v.get("status") == "failed"
    ]
    if bad_engines and not bad:
        detail = "; ".join(f"{n} {label}: {', '.join(v['parity'].get('failures', []))}" for n, label, v in bad_engines)
        return f"{len(bad_engines)} TensorRT engines failed validation ({detail}); see {bundle / 'report.md'}"
    detail = "; ".join(f"{v.label}: {', '.join(v.parity.get('failures', []))}" for v in bad)
    return f"{len(bad)} of {len(manifest.variants)} variants failed validation ({detail}); see {bundle / 'report.md'}"


@cli.command(cls=BuildCommand)
@click.option(
    "--model", "model_name", metavar="NAME", help="timm model name (e.g. flexivit_small); checked against the weights."
)
@click.option(
    "--weights",
    type=click.Path(path_type=Path),
    help="Checkpoint: .pt/.pth/.bin/.ckpt, .safetensors or big_vision .npz, or a folder holding config.json "
    "and model.safetensors or pytorch_model.bin (what timm's save_for_hf writes).",
)
@click.option("--pretrained", is_flag=True, help="Download --model's weights from the hub (needs network or a cache).")
@click.option(
    "--patch-sizes",
    "-p",
    "patch_sizes",
    type=SizeType(),
    multiple=True,
    required=True,
    help="Patch sizes, e.g. 8 16 32, 8,16,32 or 10x15.",
)
@click.option(
    "--img-size",
    default="native",
    show_default=True,
    metavar="N|HxW|native|auto|dynamic:MIN-MAX",
    help="Image size for every variant; auto: per variant, the multiple of the patch nearest the native size; "
    "several sizes (48 64 96): one variant per patch and size, named p16_64 (pairs that cannot exist are left out "
    "and named); dynamic:MIN-MAX: one ONNX per patch taking any multiple of the patch in that range (position "
    "grid resampled in the graph; checked at the smallest, native and largest size).",
)
@click.option("--out", type=click.Path(path_type=Path), help="Bundle folder [default: bundles/<model name>].")
@click.option(
    "--opset", type=int, default=17, show_default=True, help="ONNX opset (14-20; 17 keeps LayerNorm one node)."
)
@click.option("--batch", default="dynamic", show_default=True, metavar="dynamic|N", help="ONNX batch dimension.")
@click.option(
    "--labels",
    "labels_file",
    type=click.Path(path_type=Path),
    help="Class names, one per line, stored in the manifest for 'predict' [default: the demo's digits, "
    "timm's ImageNet names for 1000-class timm models].",
)
@click.option(
    "--shared-weights",
    is_flag=True,
    help="Keep the weights all variants share in one external-data file (onnx/shared_weights.bin).",
)
@click.option(
    "--exporter",
    type=click.Choice(["torchscript", "dynamo"]),
    default="torchscript",
    show_default=True,
    help="torch.onnx exporter.",
)
@click.option(
    "--precision",
    type=click.Choice(PRECISIONS),
    default=None,
    help="Also write and check an fp16 (LayerNorm/Softmax/pos-embed/logits kept fp32) or int8 (QDQ) ONNX "
    "[default: fp32 only, or the --profile's precision when it is fp16/int8].",
)
@click.option(
    "--calib-dir",
    type=click.Path(path_type=Path),
    help="Real images (sorted): the first --parity-samples join the parity check; with int8 the "
    "next 64 calibrate (the demo ships its own).",
)
@click.option("--parity-samples", type=int, default=16, show_default=True, help="Random (and real) images per variant.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random parity images.")
@click.option("--atol", type=float, default=1e-4, show_default=True, help="Parity: absolute tolerance on logits.")
@click.option("--rtol", type=float, default=1e-3, show_default=True, help="Parity: relative tolerance on logits.")
@click.option(
    "--interpolation",
    type=click.Choice(["bilinear", "bicubic"]),
    help="Kernel resize interpolation [default: bilinear for FlexiViT, bicubic otherwise].",
)
@click.option(
    "--antialias/--no-antialias",
    default=None,
    help="Antialias in the kernel resize [default: off for FlexiViT, on otherwise]; either option alone "
    "keeps the family's default for the other.",
)
@click.option(
    "--pos-interpolation",
    type=click.Choice(["bilinear", "bicubic"]),
    help="Position-grid resample interpolation [default: the source framework's: bicubic for timm ViTs and "
    "DINOv2, bilinear for FlexiViT].",
)
@click.option(
    "--pos-antialias/--no-pos-antialias",
    default=None,
    help="Antialias in the position-grid resample [default: on for timm ViTs and FlexiViT, off for DINOv2, "
    "as their own code does].",
)
@click.option("--num-heads", type=int, help="Attention heads, when the weights alone cannot tell (default: width/64).")
@click.option(
    "--strict",
    is_flag=True,
    help="Refuse (exit 2) to build on any value the checkpoint and its config do not state (heads, image size, "
    "preprocessing, ...); each is otherwise a warning naming the flag or config key that settles it.",
)
@click.option(
    "--trust-checkpoint", is_flag=True, help="Allow checkpoints that need pickled code (only for trusted files)."
)
@click.option("--ema", "use_ema", is_flag=True, help="Use the EMA weights of a training checkpoint.")
@click.option("--threads", type=int, help="CPU threads for PyTorch and onnxruntime [default: all].")
@click.option("--profile", "profile", metavar="NAME|FILE.toml", help="Deployment profile for TensorRT engines.")
@click.option(
    "--engines",
    type=click.Choice(["auto", "required", "skip"]),
    default="auto",
    show_default=True,
    help="auto: build engines when TensorRT and a GPU are here, else leave them pending; "
    "required: fail (exit 4) without them.",
)
@click.option("--force", is_flag=True, help="Replace an existing bundle.")
@click.option("--resume", is_flag=True, help="Reuse variants whose inputs and ONNX files are unchanged.")
@click.option(
    "--quiet", "-q", is_flag=True, help="Print only errors, warnings and one summary line (no progress, no table)."
)
@click.option("--wide", is_flag=True, help="Every column of the variant table (it needs about 130 columns).")
@debug_option
def build(**kw: Any) -> None:
    """Resize, export and check one model per patch size, and write a bundle.

    \b
    flexiexport build --patch-sizes 8 16 32                      # the shipped demo FlexiViT
    flexiexport build --model flexivit_small --weights w.safetensors --patch-sizes 8 16 32 --img-size auto
    flexiexport build --patch-sizes 8 16 32 --img-size 48 64 96   # a grid: p8_48 ... p32_96
    flexiexport build --patch-sizes 8 16 32 --img-size dynamic:32-128   # any multiple of the patch
    """
    from exporter.export import ExportOptions
    from exporter.load import SourceSpec
    from exporter.pipeline import BuildOptions
    from exporter.pipeline import build as run_build
    from exporter.resize import ResizeOverride
    from exporter.validate import TOLERANCES

    patch_resize = ResizeOverride(kw["interpolation"], kw["antialias"])  # the rest: the checkpoint family's
    img_policy, img_sizes = parse_img_sizes(kw["img_size"])
    img_range = None
    if isinstance(img_policy, tuple) and isinstance(img_policy[0], tuple):  # dynamic:MIN-MAX
        img_range, img_policy = img_policy, "native"
    options = BuildOptions(
        patch_sizes=flatten_sizes(kw["patch_sizes"]),
        source=SourceSpec(
            kw["weights"], kw["model_name"], kw["pretrained"], kw["trust_checkpoint"], kw["use_ema"], kw["num_heads"]
        ),
        img_size=img_policy,  # type: ignore[arg-type]
        img_sizes=img_sizes,
        img_range=img_range,  # type: ignore[arg-type]
        out=kw["out"],
        export=ExportOptions(opset=kw["opset"], batch=parse_batch(kw["batch"]), exporter=kw["exporter"]),  # type: ignore[arg-type]
        force=kw["force"],
        resume=kw["resume"],
        calib_dir=kw["calib_dir"],
        parity_samples=kw["parity_samples"],
        seed=kw["seed"],
        patch_resize=patch_resize,
        pos_resize=ResizeOverride(kw["pos_interpolation"], kw["pos_antialias"]),
        strict=kw["strict"],
        threads=kw["threads"],
        tolerance=replace(TOLERANCES["fp32"], atol=kw["atol"], rtol=kw["rtol"]),
        profile=kw["profile"],
        engines=kw["engines"],
        precision=Precision(kw["precision"] or "fp32"),
        precision_given=kw["precision"] is not None,
        shared_weights=kw["shared_weights"],
        labels=kw["labels_file"],
    )
    with RichReporter(kw["quiet"]) as reporter:
        result = run_build(options, reporter)
    for line in result.manifest.options.get("impossible_variants", []):
        console(stderr=True).print(safe(f"left out {line}"), soft_wrap=True)
    if kw["quiet"]:
        console().print(safe(summary_line(result)), soft_wrap=True)
    else:
        print_build(result, kw["wide"])
    if not result.manifest.passed:
        raise ValidationFailed(failed_message(result.manifest, result.bundle))


def summary_line(result: Any) -> str:
    """``build -q``'s one line."""
    variants = result.manifest.variants
    passed = sum(v.status == "passed" for v in variants)
    mark = "✓" if result.manifest.passed else "✗"
    return (
        f"{mark} {result.manifest.name}: {passed} of {len(variants)} variants passed; "
        f"bundle written to {result.bundle} in {result.seconds:.1f} s" + assumptions_tail(result.manifest)
    )


def assumptions_tail(manifest: Any) -> str:
    """``; 1 assumption: heads 3 (pass --num-heads or a config.json)`` for a summary line; empty when none."""
    from exporter.assumptions import summary

    return f"; {summary(manifest.assumptions)}" if manifest.assumptions else ""


def print_source_parity(manifest: Any, out: Any = None) -> None:
    """The lines under the table that say what the ``src`` and ``native`` columns compared (or
    why the native agreement was skipped, with the flag that enables it)."""
    from exporter.manifest import native_summary
    from exporter.source_parity import describe

    for line in (describe(manifest.source_parity), native_summary(manifest)):
        if line:
            (out or console()).print(safe(line), soft_wrap=True)


def print_build(result: Any, wide: bool) -> None:
    print_table(result.manifest, f"{result.manifest.name} → {result.bundle}", wide)
    print_source_parity(result.manifest)
    stages = "  ".join(f"{k} {v:.1f} s" for k, v in result.stage_seconds.items())
    if result.manifest.shared_weights:
        sw = result.manifest.shared_weights
        console().print(
            safe(
                f"shared weights: {sw['tensors']} tensors in {sw['path']}; ONNX bytes "
                f"{sw['bundle_onnx_bytes_before'] / 1e6:.1f} MB -> {sw['bundle_onnx_bytes_after'] / 1e6:.1f} MB"
            )
        )
    console().print(
        safe(
            f"bundle written to {result.bundle} in {result.seconds:.1f} s ({stages})"
            + assumptions_tail(result.manifest)
        ),
        soft_wrap=True,
    )
    for name, entry in result.manifest.engines.items():
        print_engines(name, entry)


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
def resize(**kw: Any) -> None:
    """PI-resize a checkpoint's patch embedding (the seed project's converter).

    \b
    flexiexport resize -i vit-16.pt -o vit-20.pt -n patch_embed.proj.weight -ps 20
    flexiexport resize -i vit-16.pt -o vit-10-15.pt -ps 10 15 --img-size 240
    """
    from exporter.convert import RESIZE_ADVICE, check_paths, convert_checkpoint, describe
    from exporter.resize import ResizeMethod

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


@cli.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the raw manifest.")
@click.option("--wide", is_flag=True, help="Every column of the variant table (it needs about 130 columns).")
@debug_option
def inspect(bundle: Path, as_json: bool, wide: bool, debug: bool) -> None:
    """Print a bundle's manifest as a table."""
    from exporter.bundle import read_manifest

    manifest = read_manifest(bundle)
    if as_json:  # strict JSON: a failed check's NaN is written as null
        from dataclasses import asdict

        from exporter.manifest_values import strict_json

        click.echo(strict_json(asdict(manifest)), nl=False)
        return
    out = console()
    src = manifest.source
    out.print(
        f"[bold]{safe(manifest.name)}[/bold]  "
        + safe(f"built {manifest.created} by flexiexport {manifest.versions['flexiexport']}")
    )
    out.print(safe(f"source: {src.get('path') or src.get('kind')}  sha256 {str(src.get('sha256'))[:16]}…"))
    out.print(safe(f"        {src['architecture']['summary']}"))
    for said in manifest.assumptions:
        out.print(f"[yellow]assumed[/yellow] {safe(said)}")
    pre = manifest.preprocessing
    out.print(
        safe(f"preprocessing: mean {pre['mean']} std {pre['std']} {pre['interpolation']} crop_pct {pre['crop_pct']}")
    )
    out.print(safe("versions: " + ", ".join(f"{k} {v}" for k, v in manifest.versions.items())))
    print_table(manifest, "variants", wide)
    print_source_parity(manifest, out)
    for v in manifest.variants:
        if v.trt_lint and not v.trt_lint.get("passed", True):
            issues = "; ".join(map(str, v.trt_lint["issues"]))
            out.print(f"[yellow]TensorRT lint[/yellow] {safe(v.label)}: {safe(issues)}")
    for name, entry in manifest.engines.items():
        print_engines(name, entry)
    out.print("overall: " + ("[green]passed[/green]" if manifest.passed else "[red]FAILED[/red]"))


@cli.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option(
    "--rebuild",
    is_flag=True,
    help="Rebuild each variant in PyTorch from the source checkpoint and re-run parity "
    "[default: judge against the PyTorch reference stored in the bundle; needs no torch].",
)
@click.option("--weights", type=click.Path(path_type=Path), help="With --rebuild: the source checkpoint, if it moved.")
@click.option(
    "--backends",
    default="ort-cpu",
    show_default=True,
    help="Where to run the ONNX files: ort-cpu, ort-cuda, ort-tensorrt, openvino (f32), openvino-bf16 "
    "(judged with the fp16 tolerances), comma-separated.",
)
@click.option("--quiet", "-q", is_flag=True, help="Print only the verdicts.")
@debug_option
def validate(bundle: Path, rebuild: bool, weights: Path | None, backends: str, quiet: bool, debug: bool) -> None:
    """Re-check every file's sha256, then each ONNX in onnxruntime against PyTorch's outputs."""
    if weights is not None and not rebuild:
        raise UsageError("--weights is used only with --rebuild (the stored reference needs no checkpoint)")
    if rebuild and backends != "ort-cpu":
        raise UsageError("--rebuild runs onnxruntime on the CPU; --backends works with the stored reference")
    with RichReporter(quiet) as reporter:
        if rebuild:
            try:
                from exporter.pipeline import recheck_bundle
            except ImportError as exc:
                raise EnvironmentMissing(
                    f"validate --rebuild needs PyTorch and timm ({exc}); without them, validate judges the "
                    "bundle against its stored reference"
                ) from exc

            results = recheck_bundle(bundle, weights, reporter)
        else:
            from exporter.check import check_bundle

            names = tuple(dict.fromkeys(b.strip() for b in backends.split(",") if b.strip()))
            if "tensorrt" in names:
                raise UsageError("validate runs ONNX files; TensorRT engines are validated by 'flexiexport engine'")
            results = check_bundle(bundle, reporter=reporter, backends=names)
    out = console()
    for r in results:
        mark = "[green]✓[/green]" if r else "[red]✗[/red]"
        detail = r.problem if r.comparison is None else str(r.comparison)
        out.print(f"{mark} {safe(f'{r.label}  sha256 ' + ('ok' if r.sha256_ok else 'MISMATCH') + '  ' + detail)}")
        if r.reduced is not None:
            out.print(safe(f"  {r.label} {r.reduced.tolerance.name}: {r.reduced}"))
    bad = [r.label for r in results if not r]
    what = "variants" if all(" at " not in r.label for r in results) else "checks (a dynamic variant at 3 sizes)"
    if bad:
        raise ValidationFailed(f"{len(bad)} of {len(results)} {what} failed validation: {', '.join(bad)}")
    out.print(f"all {len(results)} {what} passed")


BENCH_BACKENDS = (  # exporter.bench.BACKENDS, spelled here so that --help imports no numpy
    "torch",
    "torch-compile",
    "ort-cpu",
    "openvino",
    "openvino-bf16",
    "ort-cuda",
    "ort-tensorrt",
    "torch-cuda",
    "tensorrt",
)


class BenchCommand(GreedyCommand):
    greedy = ("--batch-sizes", "--backends")


def write_plot(opened: Any) -> Path | None:
    """Redraw ``tradeoff.png`` from whatever of bench.json / eval.json the bundle holds."""
    from exporter.plot import native_series, plot_tradeoff
    from exporter.runtime.measurements import checked_bench, checked_eval

    variants = {v.label for v in opened.manifest.variants}
    bench = checked_bench(opened.read_artefact("bench.json"), str(opened.root / "bench.json"), variants)
    evaluation = checked_eval(opened.read_artefact("eval.json"), str(opened.root / "eval.json"), variants)
    if bench is None and evaluation is None:
        return None
    title = f"{opened.manifest.name}: speed / accuracy"
    native = native_series(opened.manifest)
    try:
        return plot_tradeoff(bench, evaluation, opened.artefact("tradeoff.png"), title, native)
    except FlexiExportError:  # a full disk is a ValueError too: the user's to hear, not a bad file
        raise
    except (KeyError, TypeError, ValueError, IndexError) as exc:  # a bench/eval.json we did not write
        logging.getLogger("exporter.plot").warning("no plot: bench.json or eval.json is not as written (%s)", exc)
        return None


@cli.command(cls=BenchCommand)
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--batch-sizes", default="1,8", show_default=True, help="Batch sizes, e.g. 1 8 or 1,8.")
@click.option(
    "--backends",
    default=",".join(BENCH_BACKENDS),
    show_default=True,
    help="Backends to try; unavailable ones are listed as skipped with the reason.",
)
@click.option("--threads", type=int, help="CPU threads for every backend [default: all available cores].")
@click.option("--runs", type=int, default=10, show_default=True, help="Timed runs at least (after warm-up).")
@click.option("--min-seconds", type=float, default=1.0, show_default=True, help="Timed seconds at least, per case.")
@click.option("--warmup", type=int, default=3, show_default=True, help="Untimed runs first.")
@click.option("--weights", type=click.Path(path_type=Path), help="Source checkpoint, if it moved since the build.")
@click.option("--quiet", "-q", is_flag=True, help="Print only the table.")
@debug_option
def bench(bundle: Path, **kw: Any) -> None:
    """Latency and throughput per variant, backend and batch size; writes bench.json and a plot."""
    import json

    from exporter.bench import BenchOptions, bench_bundle, merge_reports
    from exporter.bundle import Bundle
    from exporter.manifest import write_atomic
    from exporter.runtime.measurements import folder_locked, read_bench_for_merge

    opened = Bundle.open(bundle)
    targets = opened.artefact("bench.json"), opened.artefact("tradeoff.png")  # refused before any work
    read_bench_for_merge(targets[0])  # one it cannot merge into is refused now, not overwritten later
    batch_sizes = parse_batch_sizes(kw["batch_sizes"])
    options = BenchOptions(
        batch_sizes=batch_sizes,
        backends=tuple(b for b in kw["backends"].replace(" ", ",").split(",") if b.strip()),
        threads=kw["threads"],
        warmup=kw["warmup"],
        min_runs=kw["runs"],
        min_seconds=kw["min_seconds"],
    )
    err = console(stderr=True)
    report = bench_bundle(opened, options, None if kw["quiet"] else lambda t: err.print(safe(f"  {t}")), kw["weights"])
    with folder_locked(opened.root):  # a concurrent bench's rows are merged, not overwritten
        merged, note = merge_reports(read_bench_for_merge(targets[0]), report)
        write_atomic(targets[0], json.dumps(merged, indent=2) + "\n")
    plot = write_plot(opened)
    print_bench(report)
    from exporter.check import fastest_passing

    for label, (backend, p50) in fastest_passing(opened, report.timings, report.threads).items():
        console().print(safe(f"{label}: fastest within its tolerance here: {backend} ({p50:.2f} ms p50)"))
    print_frontier(opened)
    if note:
        console().print(safe(note), soft_wrap=True)
    console().print(safe(f"wrote {bundle / 'bench.json'} and {plot}"), soft_wrap=True)


def print_frontier(opened: Any) -> None:
    """The accuracy/latency frontier per backend, once the bundle has both bench.json and eval.json."""
    from rich.table import Table

    from exporter.frontier import bundle_frontiers
    from exporter.runtime.measurements import checked_bench

    variants = {v.label for v in opened.manifest.variants}
    bench = checked_bench(opened.read_artefact("bench.json"), str(opened.root / "bench.json"), variants)
    frontiers = bundle_frontiers(bench, opened.read_artefact("eval.json"))
    for where, rows in frontiers.items():
        table = Table(title=safe(f"frontier on {where} (★ non-dominated)"), title_justify="left")
        for header in ("", "variant", "top-1", "p99 ms", "against its neighbours"):
            table.add_column(header, justify="right" if header in ("top-1", "p99 ms") else "left")
        for row in rows:
            p = row.point
            table.add_row(
                "★" if row.on_frontier else "",
                safe(p.variant),
                f"{p.accuracy:.3f}",
                f"{p.p99_ms:.3g}",
                safe(row.cost()),
            )
        print_whole(table)


def print_bench(report: Any) -> None:
    from rich.table import Table

    table = Table(title=safe(f"{report.machine['cpu']}, {report.threads} threads"), title_justify="left")
    for header in (
        "variant",
        "batch",
        "backend",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "img/s",
        "GFLOP/img",
        "GFLOP/s",
        "of ceiling",
        "peak RSS MB",
    ):
        table.add_column(header, justify="left" if header in ("variant", "backend") else "right")
    for t in sorted(report.timings, key=lambda t: (t.patch_size, t.batch, t.backend)):
        frac = "" if t.fraction_of_ceiling is None else f"{t.fraction_of_ceiling:.0%}"
        table.add_row(
            safe(t.variant),
            str(t.batch),
            safe(t.backend),
            f"{t.p50_ms:.2f}",
            f"{t.p90_ms:.2f}",
            f"{t.p99_ms:.2f}",
            f"{t.images_per_s:.1f}",
            f"{t.gflops_per_image:.3f}",
            f"{t.achieved_gflops:.1f}",
            frac,
            f"{t.peak_rss_mb:.0f}",
        )
    out = console()
    print_whole(table, out)
    c = report.ceiling
    out.print(
        f"ceiling (same run, {c.size}x{c.size}): onnxruntime fp32 MatMul {c.ort_matmul_gflops:.0f} GFLOP/s, "
        f"torch sgemm {c.torch_sgemm_gflops:.0f} GFLOP/s"
        + (f", OpenVINO bf16 MatMul {c.bf16_matmul_gflops:.0f} GFLOP/s" if c.bf16_matmul_gflops else "")
        + (f", onnxruntime int8 MatMulInteger {c.int8_matmul_gops:.0f} GOP/s" if c.int8_matmul_gops else "")
        + "; each row's share is of its own precision's ceiling"
    )
    if report.resample:
        print_resample(report.resample, out)
    for s in report.skipped:
        out.print(safe(f"skipped {s.backend}: {s.reason}"))


def print_resample(costs: Any, out: Any) -> None:
    """What a dynamic-resolution variant's in-graph position resample costs, per size and backend."""
    from rich.table import Table

    table = Table(
        title="in-graph position resample: dynamic ONNX against a fixed-size ONNX at the same size",
        title_justify="left",
    )
    for header in ("variant", "image", "batch", "backend", "dynamic p50", "fixed p50", "extra ms", "extra"):
        table.add_column(header, justify="left" if header in ("variant", "backend") else "right")
    for c in costs:
        table.add_row(
            safe(c.variant),
            format_size(tuple(c.img_size)),
            str(c.batch),
            safe(c.backend),
            f"{c.dynamic_p50_ms:.3f}",
            f"{c.fixed_p50_ms:.3f}",
            f"{c.extra_ms:+.3f}",
            f"{c.extra_percent:+.1f}%",
        )
    print_whole(table, out)


@cli.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option(
    "--data",
    type=click.Path(path_type=Path),
    help="ImageFolder tree (one sub-folder per class), or 'demo-digits' [default: demo-digits for the demo].",
)
@click.option(
    "--compare-resize", is_flag=True, help="Also evaluate the kernel plainly interpolated instead of PI-resized."
)
@click.option("--limit", type=int, help="Evaluate at most this many images.")
@click.option("--weights", type=click.Path(path_type=Path), help="Source checkpoint, if it moved since the build.")
@click.option(
    "--backends",
    default="",
    help="Also run the fp32 ONNX on these runtime backends, comma-separated (e.g. openvino,openvino-bf16).",
)
@click.option("--quiet", "-q", is_flag=True, help="Print only the table.")
@debug_option
def evaluate(
    bundle: Path,
    data: Path | None,
    compare_resize: bool,
    limit: int | None,
    weights: Path | None,
    backends: str,
    quiet: bool,
    debug: bool,
) -> None:
    """Top-1 / top-5 per variant in PyTorch and onnxruntime; writes eval.json and updates the plot."""
    import json

    from rich.table import Table

    from exporter.bundle import Bundle
    from exporter.evaluate import evaluate_bundle
    from exporter.manifest import write_atomic

    if limit is not None and limit < 1:
        raise UsageError(f"--limit must be at least 1, got {limit}")
    opened = Bundle.open(bundle)
    targets = opened.artefact("eval.json"), opened.artefact("tradeoff.png")  # refused before any work
    err = console(stderr=True)
    names = tuple(dict.fromkeys(b.strip() for b in backends.split(",") if b.strip()))
    result = evaluate_bundle(
        opened, data, compare_resize, limit, weights, None if quiet else lambda t: err.print(safe(f"  {t}")), names
    )
    write_atomic(targets[0], json.dumps(result, indent=2) + "\n")
    plot = write_plot(opened)
    table = Table(title=safe(f"{result['data']}, {result['samples']} images"), title_justify="left")
    for header in ("", "variant", "image", "backend", "top-1", "top-5", "Δ top-1"):
        table.add_column(header, justify="right" if header.startswith(("top", "Δ")) else "left")
    for row in result["results"]:
        delta = "" if row["delta_top1"] is None else f"{row['delta_top1'] * 100:+.1f} pt"
        mark = "" if row["max_drop"] is None else ("✓" if row["passed"] else "✗")
        table.add_row(
            mark,
            safe(row["variant"]),
            str(row["img_size"][0]),
            safe(row["backend"]),
            f"{row['top1']:.3f}",
            f"{row['top5']:.3f}",
            delta,
        )
    print_whole(table)
    print_frontier(opened)
    console().print(safe(f"wrote {bundle / 'eval.json'} and {plot}"))
    if result["skipped"]:  # bad input: each unreadable image is one error line, after the others' results
        from exporter.errors import ImageErrors

        skipped = len(result["skipped"])
        err.print(safe(f"left out {skipped} unreadable images; the {result['samples']} others were evaluated"))
        raise ImageErrors(result["skipped"])
    if result["failures"]:
        raise ValidationFailed(f"{len(result['failures'])} accuracy check(s) failed: {'; '.join(result['failures'])}")


RUNTIME_BACKEND_HELP = (
    "tensorrt, ort-tensorrt, ort-cuda, ort-cpu, openvino, openvino-bf16, or auto (the first present)."
)


def repository_max_batch(manifest: Any, max_batch: int | None) -> int:
    """--max-batch, else the bundle's engine profile batch.max, else 8."""
    if max_batch is None:
        profiles = [e["profile"]["batch"]["max"] for e in manifest.engines.values() if e.get("profile")]
        max_batch = profiles[0] if profiles else 8
    if not 1 <= max_batch <= 4096:  # the largest batch a bundle's profile may record
        raise UsageError(f"--max-batch must be 1 to 4096, got {max_batch}")
    return max_batch


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
def triton(bundle: Path, repo: Path, **kw: Any) -> None:
    """Write a Triton Inference Server model repository, one model per variant."""
    from exporter.bundle import Bundle, check_replaceable_repository, staging_folder, swap_into_place
    from exporter.locks import destination_lock
    from exporter.triton import triton_schema, write_repository

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


@cli.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--port", type=int, default=8000, show_default=True, help="HTTP port on 127.0.0.1 (0: any free port).")
@click.option("--grpc-port", type=int, help="gRPC port on 127.0.0.1 [default: --port + 1; 0: any free port].")
@click.option(
    "--tritonserver",
    "binary",
    type=click.Path(path_type=Path),
    help="The tritonserver to run [default: nvidia-pytriton's, else tritonserver on PATH].",
)
@click.option("--backend", default="auto", show_default=True, help="The runtime's " + RUNTIME_BACKEND_HELP)
@click.option("--precision", type=click.Choice(["fp32", "fp16", "int8"]), default="fp32", show_default=True)
@click.option("--max-batch", type=int, help="max_batch_size [default: the engine profile's batch.max, else 8].")
@click.option("--dynamic-batching/--no-dynamic-batching", default=True, show_default=True)
@click.option("--ready-timeout", type=float, default=300, show_default=True, help="Seconds to wait for the models.")
@click.option("--verbose", is_flag=True, help="Show the server's own log.")
@debug_option
def serve(bundle: Path, **kw: Any) -> None:
    """Serve a bundle on a local Triton Inference Server until Ctrl-C (or SIGTERM).

    \b
    The 'flexivit' model takes uint8 images [N, H, W, 3] (or pixel_values) and the request
    parameter budget_ms (or variant), and answers with logits and the variant that ran.
    \b
    flexiexport serve bundles/flexivit-demo --port 8000
    """
    import sys
    import tempfile

    from exporter.bundle import Bundle, mark_temporary
    from exporter.runtime import Bundle as RuntimeBundle
    from exporter.serve import (
        TritonServer,
        check_port,
        find_tritonserver,
        remove_stale_work_folders,
        work_folder_prefix,
    )
    from exporter.triton import write_repository

    opened = Bundle.open(bundle)
    max_batch = repository_max_batch(opened.manifest, kw["max_batch"])
    if not 0 < kw["ready_timeout"] <= 86400:  # inf would wait forever for a model that never loads
        raise UsageError(f"--ready-timeout must be a number of seconds from 0 to 86400, got {kw['ready_timeout']}")
    http_port = check_port(kw["port"], "--port")
    grpc_default = kw["port"] + 1 if kw["port"] else 0
    grpc_port = check_port(kw["grpc_port"] if kw["grpc_port"] is not None else grpc_default, "--grpc-port")
    if grpc_port == http_port:
        raise UsageError(f"--grpc-port must differ from --port ({http_port})")
    install = find_tritonserver(kw["binary"])
    runtime = RuntimeBundle(opened)
    backend = runtime.resolve_backend(kw["backend"], kw["precision"])
    # The budget's latencies: bench.json/latency.json rows of this CPU, else a probe now, on a quiet
    # machine (recorded in the bundle's latency.json, which the repository copies) rather than
    # inside the server while every model loads.
    runtime.latencies(backend, kw["precision"], 1)
    remove_stale_work_folders(Path(tempfile.gettempdir()))
    with tempfile.TemporaryDirectory(prefix=work_folder_prefix()) as tmp:
        work = Path(tmp)
        mark_temporary(work)  # what lets a later serve remove it if this one is killed outright
        names = write_repository(
            opened,
            work / "models",
            "python",
            max_batch,
            Precision(kw["precision"]),
            kw["backend"],
            kw["dynamic_batching"],
        )
        log_to = sys.stderr if kw["verbose"] else None
        server = TritonServer(install, work / "models", work, http_port, grpc_port, log_to=log_to)
        console(stderr=True).print(safe(f"starting {install.binary} on {len(names)} models (runtime {backend}) ..."))
        code = serve_until_stopped(server, names, kw["ready_timeout"])
    console(stderr=True).print(safe(f"stopped (tritonserver exit code {code}); removed {work}"))


def serve_until_stopped(server: Any, names: list[str], ready_timeout: float) -> int | None:
    """Start, print the endpoints once ready, wait; Ctrl-C or SIGTERM stops the server (and is no error)."""
    from exporter.bundle import signals_deferred
    from exporter.triton import ENTRY_MODEL

    try:
        server.start()
        server.wait_ready(ready_timeout)
        print_endpoints(server, names, ENTRY_MODEL)
        code = server.wait()
        raise FlexiExportError(f"tritonserver stopped by itself (exit code {code}); its log: {server.log_path}")
    except KeyboardInterrupt as exc:
        name = str(exc.args[0]) if exc.args and str(exc.args[0]).startswith("SIG") else "SIGINT"
        console(stderr=True).print(safe(f"{name}: stopping tritonserver ..."))
    finally:
        with signals_deferred():
            code = server.stop()
    return code


def print_endpoints(server: Any, names: list[str], entry: str) -> None:
    version = server.metadata().get("version", "?")
    out = console()
    out.print(safe(f"Triton {version} ready on {server.http_url} (HTTP) and {server.grpc_url} (gRPC), localhost only"))
    out.print(safe(f"  {entry}: images uint8 [N, H, W, 3] or pixel_values; parameters budget_ms or variant"))
    out.print(safe(f"  variants: {', '.join(n for n in names if n != entry)}"))
    out.print(safe(f"  repository: {server.repository} (removed on exit); Ctrl-C stops"))


@cli.command()
@debug_option
def profiles(debug: bool) -> None:
    """List the shipped deployment profiles."""
    from rich.table import Table

    from exporter.profile import available_profiles, load_profile

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


@cli.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--profile", "profile", required=True, metavar="NAME|FILE.toml", help="Deployment profile.")
@click.option("--quiet", "-q", is_flag=True, help="Print only the verdicts.")
@debug_option
def engine(bundle: Path, profile: str, quiet: bool, debug: bool) -> None:
    """Build and validate TensorRT engines on the target device and add them to the bundle."""
    from exporter.bundle import read_manifest
    from exporter.engine import add_engines

    read_manifest(bundle)
    with RichReporter(quiet) as reporter:
        entry = add_engines(bundle, profile, reporter)
    print_engines(profile, entry)
    if entry["status"] != "built":
        raise ValidationFailed(f"TensorRT engines for {profile} failed validation; see {bundle / 'report.md'}")


@cli.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--variant", metavar="pN", help="Run this variant (see 'flexiexport inspect').")
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
def predict(bundle: Path, images: tuple[Path, ...], **kw: Any) -> None:
    """Classify images with a bundle: by --variant, or by --budget-ms on this device (a feature
    model: each image's embedding, summarised, or whole with --json).

    \b
    flexiexport predict bundles/flexivit-demo digit.png --budget-ms 1
    """
    from exporter.runtime import Bundle as RuntimeBundle
    from exporter.runtime.model import predict_files

    if kw["top_k"] < 1:
        raise UsageError(f"--top-k must be at least 1, got {kw['top_k']}")
    if kw["threads"] is not None and kw["threads"] < 1:
        raise UsageError(f"--threads must be at least 1, got {kw['threads']}")
    opened = RuntimeBundle.open(bundle)
    model = opened.model(
        variant=kw["variant"],
        budget_ms=kw["budget_ms"],
        backend=kw["backend"],
        precision=kw["precision"],
        batch=kw["batch"],
        threads=kw["threads"],
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
        from exporter.manifest_values import strict_json

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


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    install_signal_handlers()
    cli.main(args=argv, prog_name="flexiexport")


def ignore_further_interrupts() -> None:
    """Once an interrupt has been handled, later signals would only cut the exit short (a
    KeyboardInterrupt escaping at shutdown makes Python kill itself with SIGINT). Only where
    ``main`` installed our handlers: an embedding program keeps its own."""
    import threading

    from exporter.progress import interrupt

    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGINT) is interrupt:
        for name in ("SIGINT", "SIGTERM", "SIGHUP"):
            if hasattr(signal, name):
                signal.signal(getattr(signal, name), signal.SIG_IGN)


def install_signal_handlers() -> None:
    """SIGTERM and SIGHUP (docker stop, CI time-outs, ``timeout``, a closed terminal) behave like
    Ctrl-C: the staging folder is removed and the old bundle stays. All three are remembered, so
    an interrupt that a library's clean-up code swallows is raised again at the next stage."""
    from exporter.progress import interrupt

    for name in ("SIGINT", "SIGTERM", "SIGHUP"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), interrupt)


if __name__ == "__main__":
    main()
