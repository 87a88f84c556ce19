"""The bundle's names and constants (files, tensors, batches), the upgrade of older manifest
layouts, the folder walk and preprocessing defaults. The manifest's types are in
``exporter.bundle.schema``."""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from exporter.core.errors import BundleError, UsageError

SCHEMA_VERSION: Literal[1] = 1
MANIFEST = "manifest.json"
REPORT = "report.md"
INPUT_NAME = "pixel_values"  # every ONNX file and engine: float32 NCHW in, logits (or embeddings) out
OUTPUT_NAME = "logits"
EMBEDDINGS_NAME = "embeddings"  # a feature model's output (no classifier: num_classes 0)
CHECK_BATCH = 8  # parity runs a dynamic-batch model 8 images at a time
PREFLIGHT = "tensorrt_preflight"  # on each ONNX file's record: what TensorRT's own parser and builder made of it


def output_name(num_classes: int) -> str:
    """The ONNX output of a model with ``num_classes`` classes: ``logits``, or ``embeddings`` for a
    feature model (no classifier), whose outputs are not class scores."""
    return OUTPUT_NAME if num_classes else EMBEDDINGS_NAME


def static_batch(shape: Sequence[int | str]) -> int | None:
    """A tensor's fixed batch (``[8, 3, 64, 64]`` → 8), or None when the batch is named (dynamic)."""
    return shape[0] if isinstance(shape[0], int) else None


def check_batch(export_batch: int | str) -> int:
    """The batch parity checks run at: the model's static batch, else ``CHECK_BATCH``."""
    return CHECK_BATCH if export_batch == "dynamic" else int(export_batch)


def upgrade_manifest(data: Any, where: str = MANIFEST) -> tuple[Any, bool]:
    """A copy of manifest ``data`` in today's layout, and whether it was in an older one.

    Manifests written before each checked file carried its own tolerance (same schema_version)
    kept the fp32 ONNX files' tolerance at the top level and an engine's inside its ``parity``;
    both move into the file's record (``onnx.tolerance``, the engine entry's ``tolerance``).
    A manifest that records the fp32 tolerance both ways is refused: which would judge?"""
    if not isinstance(data, dict):
        return data, False
    data = copy.deepcopy(data)
    older = "tolerance" in data
    top = data.pop("tolerance", None)
    variants = data.get("variants")
    for variant in variants if older and isinstance(variants, list) else []:
        onnx = variant.get("onnx") if isinstance(variant, dict) else None
        if isinstance(onnx, dict):
            if "tolerance" in onnx:
                raise BundleError(
                    f"{where} is malformed: the fp32 tolerance is recorded both at the top level (as older "
                    "bundles did) and in variants[].onnx.tolerance"
                )
            onnx["tolerance"] = top
    engines = data.get("engines")
    for entry in engines.values() if isinstance(engines, dict) else []:
        built = entry.get("variants") if isinstance(entry, dict) else None
        for variant in built.values() if isinstance(built, dict) else []:
            parity = variant.get("parity") if isinstance(variant, dict) else None
            if isinstance(parity, dict) and "tolerance" in parity:
                older = True
                variant.setdefault("tolerance", parity.pop("tolerance"))
    return data, older


@dataclass(frozen=True)
class Entry:
    """One thing under a walked folder: its relative POSIX path and what it is (links not followed)."""

    rel: str
    path: Path
    is_dir: bool
    is_link: bool
    is_file: bool


def walk(root: Path, max_depth: int = 32) -> list[Entry]:
    """Everything under ``root``, sorted, without following links and without recursion (a
    hostile tree thousands of folders deep is refused with ``UsageError``, not a RecursionError)."""

    found: list[Entry] = []
    stack = [(root, "", 0)]
    while stack:
        folder, prefix, depth = stack.pop()
        if depth > max_depth:
            raise UsageError(f"{folder} is nested more than {max_depth} folders deep under {root}: refused")
        with os.scandir(folder) as entries:
            for e in entries:
                rel = f"{prefix}{e.name}"
                is_link = e.is_symlink()
                is_dir = e.is_dir(follow_symlinks=False)
                found.append(Entry(rel, Path(e.path), is_dir, is_link, e.is_file(follow_symlinks=False)))
                if is_dir:
                    stack.append((Path(e.path), rel + "/", depth + 1))
    return sorted(found, key=lambda e: e.rel)


@dataclass(frozen=True)
class Preprocessing:
    """What a deployment must do to an image before ``pixel_values``."""

    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    interpolation: str = "bicubic"
    crop_pct: float = 0.9
    crop_mode: str = "center"
    source: str = "assumed (timm ViT default)"


# Files a command writes into a bundle after the build: accounted for when deciding whether a
# folder is one of ours (``--force`` may replace it).
ARTEFACTS = ("bench.json", "eval.json", "tradeoff.png", "latency.json")
