"""What a run may ask of this machine: memory (estimated before anything is allocated) and threads.

The estimate is a deliberate upper bound built from the architecture's numbers, so a build
whose tensors could never fit is refused with exit 2 in milliseconds instead of allocating for
minutes and dying in the allocator (or the kernel's OOM killer). Pure arithmetic: no torch.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from exporter.core.errors import BundleError, UsageError, param, word_params
from exporter.core.machine import available_memory, gigabytes
from exporter.core.sizes import Size2, format_size

if TYPE_CHECKING:
    from exporter.bundle.schema import Manifest

log = logging.getLogger(__name__)

FLOAT32 = 4
# Copies of the weights alive at the peak: the checkpoint as read, the fp32 variant, and the
# ONNX model (torch's serialised proto, then onnxruntime's session with its pre-packed copy).
WEIGHT_COPIES = 3
# onnxruntime materialises B x H x T x T float32 scores, their softmax and the scaled copy
# (PyTorch's CPU attention is blockwise and smaller, so this bounds both runners).
ATTENTION_COPIES = 3
# Per token: residual, norm, q/k/v, attention output, projection... plus 2 x the MLP hidden.
ACTIVATION_WIDTHS = 16
# Parity images: the random draw, its normalised copy, and the concatenated float32 batch.
INPUT_COPIES = 3
# Position-embedding resampling runs in float64 with an input, an output and a temporary.
POS_COPIES = 3

BUILD_ADVICE = {
    "weights": "this checkpoint is too large for this machine's memory",
    "position embedding": f"use a smaller {param('img_size')} or a larger patch",
    "attention": f"use a smaller {param('img_size')} or a larger patch",
    "activations": f"use a smaller {param('img_size')}, a larger patch or a smaller {param('batch')}",
    "input images": f"use fewer {param('parity_samples')}",
}
_RERUN = "the bundle asks for more than this machine has: check it on a larger machine, or rebuild it smaller"
RERUN_ADVICE = {
    "validate": {},
    "bench": {part: f"use smaller {param('batch_sizes')}" for part in ("attention", "activations", "input images")},
    "evaluate": {"input images": f"use {param('limit')} N to evaluate fewer images"},
    "predict": {part: f"use a smaller {param('batch')}" for part in ("attention", "activations", "input images")},
}
DTYPE_BYTES = {"float16": 2, "bfloat16": 2, "float32": 4, "float64": 8}


@dataclass(frozen=True)
class Workload:
    """The numbers that decide how much memory one variant's run holds at once."""

    params: int  # parameters of the source model
    weight_bytes: int  # bytes of the source weights as stored (fp16 checkpoints: 2 per parameter)
    embed_dim: int
    depth: int
    num_heads: int
    num_classes: int
    img_size: Size2
    patch_size: Size2
    batch: int  # images per forward pass
    images: int  # input images held at once (parity, calibration or benchmark inputs)
    prefix_tokens: int = 1  # class and register tokens
    mlp_ratio: float = 4.0
    in_chans: int = 3

    @property
    def tokens(self) -> int:
        """Tokens per image; a patch that does not divide the image is rounded up (an upper bound)."""
        grid_h = -(-self.img_size[0] // self.patch_size[0])
        grid_w = -(-self.img_size[1] // self.patch_size[1])
        return grid_h * grid_w + self.prefix_tokens


@dataclass(frozen=True)
class Estimate:
    """Peak bytes by cause; ``total`` is what the run is checked against."""

    weights: int
    position_embedding: int
    attention: int
    activations: int
    inputs: int

    @property
    def parts(self) -> dict[str, int]:
        return {
            "weights": self.weights,
            "position embedding": self.position_embedding,
            "attention": self.attention,
            "activations": self.activations,
            "input images": self.inputs,
        }

    @property
    def total(self) -> int:
        return sum(self.parts.values())

    @property
    def largest(self) -> tuple[str, int]:
        return max(self.parts.items(), key=lambda item: item[1])


def estimate_peak(w: Workload) -> Estimate:
    """An upper bound of the bytes a build, ``validate``, ``bench`` or ``evaluate`` run of one
    variant holds at its peak (export and both runners, one after the other, plus the inputs)."""
    t = w.tokens
    pixels = w.in_chans * w.img_size[0] * w.img_size[1]
    kernel = w.embed_dim * w.in_chans * w.patch_size[0] * w.patch_size[1]
    return Estimate(
        weights=w.weight_bytes + WEIGHT_COPIES * FLOAT32 * (w.params + kernel),
        position_embedding=POS_COPIES * 8 * t * w.embed_dim,
        attention=ATTENTION_COPIES * w.batch * w.num_heads * t * t * FLOAT32,
        activations=w.batch
        * (t * w.embed_dim * (ACTIVATION_WIDTHS + 2 * math.ceil(w.mlp_ratio)) + 2 * pixels)
        * FLOAT32,
        inputs=INPUT_COPIES * w.images * pixels * FLOAT32 + w.images * w.num_classes * 8 * 2,
    )


def prefix_tokens(model_args: Mapping[str, Any]) -> int:
    """Tokens a timm ViT puts before the patch grid (class token, registers), from its arguments
    (timm's defaults: a class token, no registers)."""
    return int(model_args.get("class_token", True)) + int(model_args.get("reg_tokens", 0))


def vit_params(embed_dim: int, depth: int, num_classes: int, mlp_ratio: float, tokens: int, kernel: int) -> int:
    """Parameters of a plain ViT (for bundles, whose manifest records the shape, not the count)."""
    d, hidden = embed_dim, int(embed_dim * mlp_ratio)
    block = 4 * d * d + 2 * d * hidden + 9 * d + hidden  # qkv, proj, MLP, biases and two norms
    return depth * block + kernel + tokens * d + (d + 1) * num_classes + 4 * d


def describe_part(name: str, w: Workload) -> str:
    """What makes ``name`` big, in the user's terms."""
    t = w.tokens
    return {
        "weights": f"weights: {w.params:,} parameters, in {WEIGHT_COPIES + 1} copies",
        "position embedding": f"position embedding of {t:,} tokens x {w.embed_dim}",
        "attention": f"attention over {t:,} tokens, {w.num_heads} heads, batch {w.batch}",
        "activations": f"activations of {t:,} tokens x {w.embed_dim}, batch {w.batch}",
        "input images": f"{w.images:,} input images of {w.img_size[0]}x{w.img_size[1]}",
    }[name]


def check_memory(
    w: Workload, what: str, advice: Mapping[str, str] = BUILD_ADVICE, available: int | None = None
) -> Estimate:
    """Raise ``UsageError`` when ``w``'s estimated peak exceeds the memory available (measured
    when not given); returns the estimate. ``what`` starts the message, ``advice`` ends it,
    chosen by the largest cause."""
    estimate = estimate_peak(w)
    free = available_memory() if available is None else available
    shown = word_params(what, str)  # a log line names the library's parameters
    log.debug("%s: estimated peak %s (%s); available %s", shown, gigabytes(estimate.total), estimate, free)
    if free is None or estimate.total <= free:
        return estimate
    part, _ = estimate.largest
    raise UsageError(
        f"{what} needs about {gigabytes(estimate.total)} ({describe_part(part, w)}), this machine has "
        f"{gigabytes(free)} available; {advice.get(part, 'use a smaller size')}"
    )


def bundle_workloads(manifest: Manifest, batch: int | None, images: int | None) -> list[tuple[str, Workload]]:
    """One workload per variant, from the numbers a manifest records. ``batch``: the run's
    largest batch (default: the build's parity batch); ``images``: inputs held at once (default:
    the parity images, random and real). A static-batch ONNX always runs at its own batch."""
    arch = manifest.source.architecture
    args = arch.model_args
    dim, depth, classes, in_chans = arch.embed_dim, arch.depth, arch.num_classes, arch.in_chans
    mlp_ratio = float(args.get("mlp_ratio", 4.0))
    prefix = prefix_tokens(args)
    kernel = dim * in_chans * arch.kernel_size[0] * arch.kernel_size[1]
    params = vit_params(dim, depth, classes, mlp_ratio, arch.pos_grid[0] * arch.pos_grid[1], kernel)
    export_batch = manifest.options.export.batch
    static = None if export_batch == "dynamic" else export_batch
    run_batch = max(batch or static or 8, static or 0)
    held = images if images is not None else 2 * manifest.options.parity_samples
    weight_bytes = params * DTYPE_BYTES.get(str(manifest.source.dtype), FLOAT32)
    workloads = []
    for record in manifest.variants:
        largest = record.img_range[1] if record.img_range else record.img_size  # a dynamic one runs up to its max
        img = (int(largest[0]), int(largest[1]))
        patch = (int(record.patch_size[0]), int(record.patch_size[1]))
        if min(*img, *patch, dim, depth, run_batch) < 1 or classes < 0 or held < 0 or not 0 < mlp_ratio < 1e6:
            raise ValueError(f"variant {record.label}: sizes and counts must be positive")
        w = Workload(
            params=params,
            weight_bytes=weight_bytes,
            embed_dim=dim,
            depth=depth,
            num_heads=arch.num_heads,
            num_classes=classes,
            img_size=img,
            patch_size=patch,
            batch=run_batch,
            images=held,
            prefix_tokens=prefix,
            mlp_ratio=mlp_ratio,
            in_chans=in_chans,
        )
        workloads.append((record.label, w))
    return workloads


def check_bundle_memory(
    manifest: Manifest, bundle: Path, command: str, batch: int | None = None, images: int | None = None
) -> None:
    """``check_memory`` for every variant of a bundle before ``command`` (validate, bench,
    evaluate) loads anything: a manifest's numbers are input like any other."""
    path = bundle / "manifest.json"
    try:
        workloads = bundle_workloads(manifest, batch, images)
    except (KeyError, IndexError, TypeError, ValueError, AttributeError, ZeroDivisionError, OverflowError) as exc:
        raise BundleError(f"cannot read {path}: malformed manifest ({exc})") from exc
    advice = dict.fromkeys(BUILD_ADVICE, _RERUN) | RERUN_ADVICE.get(command, {})
    for label, w in workloads:
        what = (
            f"{command} of {path} variant {label} (image {format_size(w.img_size)}, "
            f"patch {format_size(w.patch_size)}, batch {w.batch})"
        )
        check_memory(w, what, advice)
