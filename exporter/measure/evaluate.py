"""``flexiexport evaluate``: top-1 / top-5 per variant, per backend, on labelled images.

Data: an ImageFolder-style tree (one sub-folder per class, named after the class as the
manifest's labels have it, or by its index: ``class_indices``) preprocessed with the bundle's
recorded preprocessing, or, for the demo bundle, its shipped held-out digits. ``compare_resize``
adds the same model with its kernel plainly interpolated instead of PI-resized: what PI-resize buys.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np

from exporter.build.recheck import bundle_source, record_spec
from exporter.build.runners import ort_runner, torch_runner
from exporter.build.variant import make_variant
from exporter.bundle.door import Bundle
from exporter.bundle.limits import check_bundle_memory
from exporter.bundle.manifest import Preprocessing
from exporter.bundle.records import ReducedEntry
from exporter.core.errors import EnvironmentMissing, ImageErrors, UsageError, param
from exporter.core.names import printable
from exporter.core.sizes import Size2
from exporter.parity.compare import run_batched
from exporter.parity.tolerance import tolerance_for
from exporter.runtime.backends.base import backend_problem, load_runner
from exporter.runtime.images import IMAGE_SUFFIXES, image_files, preprocess, readable_images
from exporter.source.demo import DEMO_NAME, digits_to_pixels, load_demo_digits
from exporter.source.model import SourceModel

if TYPE_CHECKING:
    from exporter.runtime.artefacts import EvalFile, EvalRecord


@dataclass(frozen=True)
class Dataset:
    name: str
    labels: np.ndarray
    pixels: Callable[[Size2], np.ndarray]  # image size → float32 NCHW, cached by the caller
    skipped: tuple[str, ...] = ()  # why each unreadable image was left out (the rest are evaluated)


@dataclass(frozen=True)
class EvalRow:
    backend: str
    variant: str
    patch_size: tuple[int, int]
    img_size: tuple[int, int]
    samples: int
    top1: float
    top5: float
    delta_top1: float | None = None  # against PyTorch fp32, same variant
    max_drop: float | None = None  # the precision's allowed accuracy drop (int8: 1 pt)

    @property
    def passed(self) -> bool:
        return self.max_drop is None or self.delta_top1 is None or -self.delta_top1 <= self.max_drop + 1e-9

    def record(self) -> EvalRecord:
        """As eval.json has it: ``asdict``'s keys in its order, then ``passed``."""
        return cast("EvalRecord", asdict(self) | {"passed": self.passed})

    def failure(self) -> str:
        delta, drop = self.delta_top1 or 0.0, self.max_drop or 0.0
        return (
            f"{self.variant} {self.backend}: top-1 {self.top1 - delta:.3f} -> {self.top1:.3f} "
            f"({delta * 100:+.1f} pt, allowed -{drop * 100:.1f} pt)"
        )


DEMO_DIGITS = "demo-digits"  # --data value naming the shipped held-out digits


def demo_dataset(limit: int | None) -> Dataset:

    digits, labels = load_demo_digits("test")
    digits, labels = digits[:limit], labels[:limit]
    return Dataset("demo held-out digits", labels, lambda size: digits_to_pixels(digits, size[0]))


def image_folder(
    root: Path, pre: Preprocessing, limit: int | None, classes: int, names: list[str] | None = None
) -> Dataset:
    """An ImageFolder tree; ``limit`` keeps that many images, spread over the classes. Each class
    folder is matched to the model's class (``class_indices``: by label, index or WordNet id)."""
    if not root.is_dir():
        raise UsageError(f"{param('data')} {str(root)!r} is not a folder (expected one sub-folder per class)")
    folders = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not folders:
        raise UsageError(f"{param('data')} {str(root)!r} has no class sub-folders")
    index, how = class_indices(folders, names or [], classes, root)
    files = [(f, index[c]) for c in folders for f in image_files(root / c)]
    if not files:
        raise UsageError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {str(root)!r}")
    if limit:
        files = files[:: max(1, len(files) // limit)][:limit]
    readable, unreadable = readable_images([f for f, _ in files])
    if not readable:
        raise ImageErrors([f"{param('data')}: {why}" for why in unreadable])
    kept = set(readable)
    files = [(f, i) for f, i in files if f in kept]
    labels = np.asarray([i for _, i in files])
    return Dataset(
        f"{root} ({len(folders)} classes, {how})",
        labels,
        lambda size: np.stack([preprocess(f, size, pre) for f, _ in files]),
        tuple(f"--data: {why}" for why in unreadable),  # eval.json's words for them
    )


WORDNET_ID = re.compile(r"n\d{8}")


def class_indices(folders: list[str], names: list[str], classes: int, root: Path) -> tuple[dict[str, int], str]:
    """The model's class index of each folder, and how they were matched: by the class's name
    (``names``, the manifest's labels), by index (``0``..``classes-1``), or by WordNet id on an
    ImageNet-1k model (``n01440764``: timm's ImageNet order). A model without class names takes
    other folders in sorted order (ImageFolder's convention). Else ``UsageError`` naming the
    folders that match no class."""
    ways: dict[str, dict[str, int]] = {"class name": {n: i for i, n in enumerate(names)}}
    ways["index"] = {f: int(f) for f in folders if f.isascii() and f.isdigit() and int(f) < classes}
    if classes == 1000 and any(WORDNET_ID.fullmatch(f) for f in folders):
        from timm.data import ImageNetInfo

        ways["WordNet id"] = {wnid: i for i, wnid in enumerate(ImageNetInfo().label_names())}
    found: dict[str, int] = {}
    used: list[str] = []
    for way, table in ways.items():  # a folder named after a class name is matched by it first
        matched = {f: table[f] for f in folders if f not in found and f in table}
        found |= matched
        used += [way] if matched else []
    unmatched = [f for f in folders if f not in found]
    if not unmatched:
        return found, "matched by " + " and ".join(used)
    if not names:  # no class names to match: the old layout, sorted folders = class indices
        return {f: i for i, f in enumerate(sorted(folders))}, "classes in sorted folder order"
    more = f" and {len(unmatched) - 8} more" if len(unmatched) > 8 else ""
    shown = ", ".join(printable(f) for f in unmatched[:8]) + more
    labels = ", ".join(printable(n) for n in names[:10]) + (", ..." if len(names) > 10 else "")
    raise UsageError(
        f"{param('data')} {printable(str(root))!r}: the class folders {shown} match no class of the model "
        f"(its classes: {labels}; or an index 0..{classes - 1}); rename or remove them"
    )


def topk_accuracy(logits: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    k = min(5, logits.shape[1])
    top = np.argsort(-logits, axis=1)[:, :k]
    return float(np.mean(top[:, 0] == labels)), float(np.mean(np.any(top == labels[:, None], axis=1)))


def check_labels(dataset: Dataset, source: SourceModel) -> None:
    if dataset.labels.max(initial=0) >= source.num_classes:
        raise UsageError(
            f"{param('data')} has {int(dataset.labels.max()) + 1} classes but the model has {source.num_classes}"
        )


def allowed_drop(reduced: ReducedEntry) -> float | None:
    """The reduced file's recorded accuracy tolerance; bundles written before it was recorded get
    today's default for their precision."""

    if "max_accuracy_drop" in reduced.tolerance.model_fields_set:
        return reduced.tolerance.max_accuracy_drop
    return tolerance_for(reduced.precision, "onnxruntime").max_accuracy_drop


def check_classifier(opened: Bundle) -> None:
    """A feature model has no classes to score against labels: refused, saying what measures it."""
    if not opened.manifest.classifier:
        output = opened.manifest.variants[0].onnx.outputs[0].name
        raise UsageError(
            f"evaluate needs a classifier: {opened.manifest.name} is a feature model (output {output!r}, "
            "num_classes 0); its variants' agreement with the native patch size needs no labels: "
            f"flexiexport inspect {opened.root}"
        )


def evaluate_bundle(
    opened: Bundle,
    data: Path | None = None,
    compare_resize: bool = False,
    limit: int | None = None,
    weights: Path | None = None,
    progress: Callable[[str], None] | None = None,
    backends: tuple[str, ...] = (),
) -> EvalFile:
    """Accuracy of every variant in PyTorch and onnxruntime (and with naive resize if asked), and
    on each of ``backends`` (the runtime's: ``openvino``, ``openvino-bf16``, ...) too."""
    check_classifier(opened)

    for name in backends:
        problem = backend_problem(name)
        if problem:
            raise EnvironmentMissing(f"{param('backends')} {name}: {problem}")

    say = progress or (lambda text: None)
    manifest = opened.manifest
    source = bundle_source(manifest, weights)
    if data is None and source.name != DEMO_NAME:
        raise UsageError(
            f"pass {param('data')} DIR (an ImageFolder tree) or {param('data')} {DEMO_DIGITS}; only the demo bundle "
            "has built-in evaluation data"
        )
    use_digits = data is None or str(data) == DEMO_DIGITS
    names = list(manifest.labels) if len(manifest.labels) == source.num_classes else []
    dataset = (
        demo_dataset(limit)
        if use_digits
        else image_folder(data, source.preprocessing, limit, source.num_classes, names)  # type: ignore[arg-type]
    )
    check_labels(dataset, source)
    check_bundle_memory(manifest, opened.root, "evaluate", 64, len(dataset.labels))
    rows = []
    for record in manifest.variants:
        spec = record_spec(record)
        pixels = dataset.pixels(spec.img_size)
        runners = {
            "pytorch": torch_runner(make_variant(source, spec).model),
            "onnxruntime": ort_runner(opened.onnx(record)),
        }
        if record.reduced:
            precision = record.reduced.precision
            runners[f"onnxruntime {precision}"] = ort_runner(opened.onnx(record, precision))
        for name in backends:
            runners[name] = load_runner(opened.onnx(record), name)
        if compare_resize:
            runners["pytorch (naive resize)"] = torch_runner(make_variant(source, spec, naive_resize=True).model)
        reference = None
        reduced_backend = f"onnxruntime {record.reduced.precision}" if record.reduced else None
        for backend, runner in runners.items():
            say(f"{record.label}: {backend}")
            batch = record.onnx.inputs[0].shape[0]
            top1, top5 = topk_accuracy(
                run_batched(runner, pixels, batch if isinstance(batch, int) else 64), dataset.labels
            )
            reference = top1 if reference is None else reference  # "pytorch" comes first
            reduced = record.reduced if backend == reduced_backend else None
            row = EvalRow(
                backend,
                record.label,
                spec.patch_size,
                spec.img_size,
                len(pixels),
                top1,
                top5,
                None if backend == "pytorch" else top1 - reference,
                allowed_drop(reduced) if reduced else None,
            )
            rows.append(row)
    return {
        "data": dataset.name,
        "samples": len(dataset.labels),
        "results": [r.record() for r in rows],
        "failures": [r.failure() for r in rows if not r.passed],
        "skipped": list(dataset.skipped),
    }
