"""What the schema's types cannot say about a manifest's values, checked at the bundle door.

The schema (``exporter.bundle.door``) checks each field alone; these rules tie fields together, so
that a command never runs on numbers that contradict each other:

- mean and std are finite (std > 0 is the schema's), std >= 1e-6 and |mean| <= 1e6 (a normalised
  float32 pixel stays finite); a verdict of "passed" has finite statistics
  (NaN compares false with every tolerance, so it would pass any check);
- a variant's ``img_size`` is its ONNX input's height and width, and ``grid x patch_size``; its
  ``tokens`` are the grid's plus at most 64 class/register tokens;
- a dynamic-resolution variant has ``min <= opt <= max``, each a multiple of its patch, ``opt``
  is the variant's ``img_size`` (the size it runs at), and one check at ``min`` and one at ``max``.

Each broken rule is one ``BundleError`` naming the field. Pure Python: no numpy.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from exporter.bundle.engines import EngineSet, EngineVariant
from exporter.bundle.records import DynamicEntry, ParityStats, PreprocessingRecord, VariantRecord
from exporter.core.errors import BundleError

MIN_STD, MAX_MEAN = 1e-6, 1e6  # timm's are 0.2-0.5 and 0-1; a normalised pixel stays within 1e12
MAX_PREFIX_TOKENS = 64  # class and register tokens before the patch grid (the schema's allowance)
STATS: tuple[str, ...] = ("max_abs", "mean_abs", "p99_abs", "max_rel", "mean_rel", "p99_rel", "min_cosine")
STATS += ("top1_agreement", "top5_agreement")


def check_values(
    pre: PreprocessingRecord, variants: Sequence[VariantRecord], engines: Mapping[str, EngineSet], where: str
) -> None:
    """``BundleError`` for the first rule a manifest the schema accepted breaks."""
    problem = next(_problems(pre, variants, engines), None)
    if problem is not None:
        raise BundleError(f"{where} is malformed: {problem}")


def _problems(
    pre: PreprocessingRecord, variants: Sequence[VariantRecord], engines: Mapping[str, EngineSet]
) -> Iterator[str]:
    for key, values in (("mean", pre.mean), ("std", pre.std)):
        if not all(math.isfinite(x) for x in values):
            yield f"preprocessing.{key}: every value must be a finite number, got {list(values)}"
    if not all(s >= MIN_STD and abs(m) <= MAX_MEAN for m, s in zip(pre.mean, pre.std)):
        # a pixel in [0, 1] normalised in float32 stays finite (a std of 1e-300 is 0 there: inf, NaN logits)
        yield (
            f"preprocessing: std must be at least {MIN_STD:g} and mean at most {MAX_MEAN:g} in size, "
            f"got mean {list(pre.mean)}, std {list(pre.std)}"
        )
    for i, variant in enumerate(variants):
        yield from _variant_problems(variant, f"variants[{i}]")
    for name, entry in engines.items():
        for label, built in entry.built.items():
            if isinstance(built, EngineVariant):  # TensorRT-RTX built on a CPU: never run, nothing compared
                yield from _stats_problems(built.parity, built.status == "passed", f"engines.{name}.variants.{label}")


def _variant_problems(v: VariantRecord, at: str) -> Iterator[str]:
    yield from _stats_problems(v.parity, v.parity.passed or v.status == "passed", f"{at}.parity")
    if v.reduced:
        yield from _stats_problems(v.reduced.parity, v.reduced.status == "passed", f"{at}.reduced.parity")
    img, patch, grid = list(v.img_size), list(v.patch_size), list(v.grid)
    if [g * p for g, p in zip(grid, patch)] != img:
        yield f"{at}.grid: {grid} x patch {patch} is not the image size {img}"
    prefix = v.tokens - grid[0] * grid[1]
    if not 0 <= prefix <= MAX_PREFIX_TOKENS:  # the order of variants (most tokens first) follows it
        cells = grid[0] * grid[1]
        yield f"{at}.tokens: {v.tokens} is not the grid's {cells} plus 0-{MAX_PREFIX_TOKENS} class/register tokens"
    shape = list(v.onnx.inputs[0].shape)
    if len(shape) != 4:
        yield f"{at}.onnx.inputs[0].shape: an image input is [batch, channels, height, width], got {shape}"
    elif not v.dynamic and shape[2:] != img:
        yield f"{at}.img_size: {img} is not its ONNX input's height and width {shape[2:]}"
    elif v.dynamic and any(isinstance(d, int) for d in shape[2:]):
        yield f"{at}.onnx.inputs[0].shape: a dynamic-resolution input names its height and width, got {shape}"
    if v.dynamic:
        yield from _dynamic_problems(v.dynamic, img, patch, f"{at}.dynamic")


def _dynamic_problems(d: DynamicEntry, img: list[int], patch: list[int], at: str) -> Iterator[str]:
    ends = {"min": list(d.min), "opt": list(d.opt), "max": list(d.max)}
    low, opt, high = ends["min"], ends["opt"], ends["max"]
    if not all(lo <= o <= hi for lo, o, hi in zip(low, opt, high)):
        yield f"{at}: needs min <= opt <= max, got min {low}, opt {opt}, max {high}"
    if list(d.multiple_of) != patch:
        yield f"{at}.multiple_of: {list(d.multiple_of)} is not the variant's patch size {patch}"
    for key, size in ends.items():
        if any(s % p for s, p in zip(size, patch)):
            yield f"{at}.{key}: {size} is not a multiple of the patch size {patch}"
    if opt != img:
        yield f"{at}.opt: {opt} is not the size the variant runs at (img_size {img})"
    sizes = [c.size for c in d.checks]
    if sorted(sizes) != ["max", "min"]:
        yield f"{at}.checks: one check at min and one at max, got {sizes}"
    for j, check in enumerate(d.checks):
        end = ends[check.size]
        if list(check.img_size) != end:
            yield f"{at}.checks[{j}].img_size: {list(check.img_size)} is not its {check.size} {end}"
        yield from _stats_problems(check.parity, check.parity.passed, f"{at}.checks[{j}].parity")


def _stats_problems(stats: ParityStats, passed: bool, at: str) -> Iterator[str]:
    """A passed verdict's numbers must be finite (a failed one may record the NaN it found)."""
    numbers = {k: getattr(stats, k) for k in STATS}
    bad = [k for k, x in numbers.items() if isinstance(x, float) and not math.isfinite(x)]
    if passed and bad:
        yield f"{at}: a passed check with non-finite {', '.join(bad)} ({numbers[bad[0]]})"


def strict_json(data: Any) -> str:
    """``data`` as strict JSON (RFC 8259: no ``NaN``/``Infinity`` tokens, which ``jq``, browsers
    and most parsers refuse): a non-finite number is written as ``null``."""

    def finite(value: Any) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {k: finite(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [finite(v) for v in value]
        return value

    return json.dumps(finite(data), indent=2, allow_nan=False) + "\n"
