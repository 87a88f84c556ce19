"""``flexiexport build``: resize, export and check one model per patch size into a bundle."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import click
from typing_extensions import TypedDict, Unpack

from exporter.cli.group import cli, debug_option
from exporter.cli.params import (
    BuildCommand,
    SizeType,
    flatten_sizes,
    parse_batch,
    parse_img_sizes,
)
from exporter.cli.render import (
    RichReporter,
    console,
    failed_message,
    print_build,
    safe,
    summary_line,
)
from exporter.core.errors import ValidationFailed
from exporter.core.precision import PRECISIONS, Precision
from exporter.core.sizes import Size2


class BuildFlags(TypedDict):
    """``build``'s options, as Click passes them (the greedy ones joined with commas)."""

    model_name: str | None
    weights: Path | None
    pretrained: bool
    patch_sizes: tuple[tuple[Size2, ...], ...]
    img_size: str
    out: Path | None
    opset: int
    batch: str
    labels_file: Path | None
    shared_weights: bool
    exporter: str
    precision: str | None
    calib_dir: Path | None
    parity_samples: int
    seed: int
    atol: float
    rtol: float
    interpolation: str | None
    antialias: bool | None
    pos_interpolation: str | None
    pos_antialias: bool | None
    num_heads: int | None
    strict: bool
    trust_checkpoint: bool
    use_ema: bool
    threads: int | None
    profile: str | None
    engines: str
    force: bool
    resume: bool
    quiet: bool
    wide: bool
    debug: bool


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
def build(**kw: Unpack[BuildFlags]) -> None:
    """Resize, export and check one model per patch size, and write a bundle.

    \b
    # the shipped demo FlexiViT:
    flexiexport build --patch-sizes 8 16 32
    # your checkpoint, each variant at the size nearest the native one that fits:
    flexiexport build --model flexivit_small --weights w.safetensors \\
                      --patch-sizes 8 16 32 --img-size auto
    # a grid, p8_48 ... p32_96:
    flexiexport build --patch-sizes 8 16 32 --img-size 48 64 96
    # any multiple of the patch from 32 to 128:
    flexiexport build --patch-sizes 8 16 32 --img-size dynamic:32-128
    """
    from exporter.build.export import ExportOptions
    from exporter.build.options import BuildOptions
    from exporter.build.pipeline import build as run_build
    from exporter.build.resize import ResizeOverride
    from exporter.parity.tolerance import TOLERANCES
    from exporter.source.model import SourceSpec

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
    for line in result.manifest.options.impossible_variants:
        console(stderr=True).print(safe(f"left out {line}"))
    if kw["quiet"]:
        console().print(safe(summary_line(result)))
    else:
        print_build(result, kw["wide"])
    if not result.manifest.passed:
        raise ValidationFailed(failed_message(result.manifest, result.bundle))
