"""The bundle manifest: what was built, from what, and how well it matched.

Plain frozen dataclasses serialised to ``manifest.json`` (and read back for ``inspect``,
``validate`` and ``--resume``), a Markdown report with the same table, and atomic writes.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from exporter.core.errors import BundleError, UsageError

SCHEMA_VERSION = 1
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


@dataclass(frozen=True)
class VariantRecord:
    """One variant in the manifest. ``status`` is ``passed``, ``failed`` or ``error``."""

    label: str
    patch_size: tuple[int, int]
    img_size: tuple[int, int]
    grid: tuple[int, int]
    tokens: int
    gflops: float
    patch_resize: str
    pos_resize: str
    onnx: dict[str, Any]
    parity: dict[str, Any]
    status: str
    export_seconds: float
    parity_seconds: float
    input_key: str
    resumed: bool = False
    trt_lint: dict[str, Any] = field(default_factory=dict)
    reduced: dict[str, Any] = field(default_factory=dict)  # the fp16/int8 ONNX and its parity, if asked for
    reference: dict[str, Any] = field(default_factory=dict)  # PyTorch's logits on the parity inputs (npz)
    dynamic: dict[str, Any] = field(default_factory=dict)  # --img-size dynamic: its range and extra checks
    native_agreement: dict[str, Any] = field(default_factory=dict)  # vs the source's own patch and size

    @property
    def img_range(self) -> tuple[tuple[int, int], tuple[int, int]] | None:
        """A dynamic-resolution variant's smallest and largest image size; None for a fixed one."""
        if not self.dynamic:
            return None
        low, high = self.dynamic["min"], self.dynamic["max"]
        return (int(low[0]), int(low[1])), (int(high[0]), int(high[1]))

    @property
    def static_batch(self) -> int | None:
        """The ONNX's fixed batch (``--batch N``), or None for a dynamic batch."""
        return static_batch(self.onnx["inputs"][0]["shape"])

    def preflights(self) -> list[tuple[str, dict[str, Any]]]:
        """(file path, TensorRT preflight record) of the variant's ONNX files that have one, fp32 first."""
        return [
            (str(e.get("path", "?")), e[PREFLIGHT])
            for e in (self.onnx, self.reduced)
            if e and isinstance(e.get(PREFLIGHT), dict)
        ]

    @property
    def preflight_failed(self) -> bool:
        """A file TensorRT's parser or builder refused (skipped or absent is not a failure)."""
        return any(p.get("ok") is False for _, p in self.preflights())

    def files(self) -> list[tuple[str, str]]:
        """(relative path, sha256) of the variant's own files: ONNX, fp16/int8 ONNX, reference."""
        found = [(self.onnx["path"], self.onnx["sha256"])]
        found += [(e["path"], e["sha256"]) for e in (self.reduced, self.reference) if e]
        found += [(c["reference"]["path"], c["reference"]["sha256"]) for c in self.dynamic.get("checks", [])]
        return found


@dataclass(frozen=True)
class Manifest:
    schema_version: int
    name: str
    created: str
    versions: dict[str, str]
    source: dict[str, Any]
    preprocessing: dict[str, Any]
    options: dict[str, Any]
    variants: tuple[VariantRecord, ...]
    engines: dict[str, Any] = field(default_factory=dict)
    shared_weights: dict[str, Any] = field(default_factory=dict)  # --shared-weights: the external-data file
    labels: tuple[str, ...] = ()  # class names by output index (empty: indices)
    source_parity: dict[str, Any] = field(default_factory=dict)  # vs the source framework's model

    @property
    def assumptions(self) -> tuple[str, ...]:
        """What the build assumed, each with what settles it (manifests before the structured
        ``assumptions`` list kept only the ``assumed`` strings)."""
        arch = self.source.get("architecture") or {}
        records = arch.get("assumptions") or []
        if records:
            return tuple(f"{r['what']} {r['value']} ({r['settle']})" for r in records)
        return tuple(map(str, arch.get("assumed") or ()))

    @property
    def classifier(self) -> bool:
        """Whether the model has a classifier (its outputs are class scores): False for a feature
        model (``num_classes`` 0, or an ``embeddings`` output). Bundles built before feature models
        were named say ``logits`` but still record ``num_classes`` 0."""
        arch = self.source.get("architecture") or {}
        names = {o.get("name") for v in self.variants for o in v.onnx.get("outputs", [])}
        return arch.get("num_classes") != 0 and EMBEDDINGS_NAME not in names

    @property
    def passed(self) -> bool:
        """Every variant passed parity and its TensorRT preflight (skipped is not a failure), no engine
        set failed (pending ones are not failures) and source parity did not fail (inferred or
        skipped is not a failure)."""
        engines_ok = all(e.get("status") != "failed" for e in self.engines.values())
        if any(v.preflight_failed for v in self.variants):  # TensorRT's own parser or builder refused a file
            return False
        source_ok = self.source_parity.get("status") != "failed"
        return engines_ok and source_ok and all(v.status == "passed" for v in self.variants)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise BundleError(
                f"manifest schema_version {version!r} is not supported (this flexiexport reads {SCHEMA_VERSION})"
            )
        data, _ = upgrade_manifest(data)
        names = {f.name for f in fields(VariantRecord)}
        variants = tuple(VariantRecord(**_record_fields(item, names)) for item in data.get("variants", []))
        known = {f.name for f in fields(cls)}
        labels = tuple(data.get("labels", ()))
        return cls(**{**{k: v for k, v in data.items() if k in known}, "variants": variants, "labels": labels})


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


def _record_fields(item: dict[str, Any], names: set[str]) -> dict[str, Any]:
    """JSON lists back to the tuples a ``VariantRecord`` holds; unknown keys dropped."""
    return {k: tuple(v) if k in ("patch_size", "img_size", "grid") else v for k, v in item.items() if k in names}


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
