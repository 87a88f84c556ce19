"""Agreement with the native patch size: the quality a variant gives up, measured without labels.

Each variant's PyTorch outputs on the build's real images (the demo's held-out digits, or the
``--calib-dir`` images), each image preprocessed at the variant's own size, against the source
model at its own patch size and image size on the same images: min and mean cosine, and top-1
agreement for a classifier. Recorded per variant as ``native_agreement``; never judged (it is the
quality/compute trade-off itself, FlexiViT's quality per patch size).

Cheap by reuse: a variant's outputs are the ones its parity check stored (``reference/*.npz``:
random images first, then the real ones); the native model runs once per build on the real
images, or not at all when a built variant is the native one.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from exporter.build.inputs import InputPlan
from exporter.build.runners import torch_runner
from exporter.build.variant import VariantSpec, make_variant, plan_img_size, variant_label
from exporter.bundle.manifest import Preprocessing
from exporter.bundle.records import NativeAgreement, NativeSkipped, VariantRecord
from exporter.bundle.reference import load_reference, normalize
from exporter.core.sizes import Size2, format_size
from exporter.parity.compare import run_batched
from exporter.source.model import SourceModel

NO_IMAGES = "no real images to compare on: pass --calib-dir DIR (real images) to measure it"


@dataclass(frozen=True)
class NativeOutputs:
    """The native model's outputs on the build's real images, or why there are none."""

    patch_size: Size2
    img_size: Size2
    outputs: np.ndarray | None  # [real images, classes or dims]
    real_from: str = ""
    skipped: str = ""

    @property
    def against(self) -> str:
        """``p32 at 64``: what every variant is compared with."""
        return f"{variant_label(self.patch_size)} at {format_size(self.img_size)}"


def native_spec(source: SourceModel, like: VariantSpec) -> VariantSpec:
    """The source at its own patch (the stored kernel) and image size; where the kernel does not
    tile that size (a 32 kernel at 240), the nearest size it does. Resized as ``like`` is."""
    img = plan_img_size(source.img_size, source.patch_size, "auto")
    return VariantSpec(source.patch_size, img, like.patch_resize, like.pos_resize)


def is_native(record: VariantRecord, spec: VariantSpec) -> bool:
    """A fixed-size variant at the native patch and size: the native model itself."""
    return not record.dynamic and (record.patch_size, record.img_size) == (spec.patch_size, spec.img_size)


def real_outputs(tmp: Path, record: VariantRecord, pre: Preprocessing) -> tuple[np.ndarray, str]:
    """A variant's stored PyTorch outputs on its real parity images, and where those came from."""
    assert record.reference is not None
    inputs, outputs = load_reference(tmp / record.reference.path, record.reference, record.img_size, pre.mean, pre.std)
    return outputs[inputs.random_count :], inputs.real_from


def native_outputs(
    source: SourceModel, spec: VariantSpec, plan: InputPlan, records: list[VariantRecord], tmp: Path, batch: int
) -> NativeOutputs:
    """The native model on the real images: a built native variant's stored outputs, else one
    PyTorch run of the native model; skipped (with the flag that enables it) without real images."""

    pre = source.preprocessing
    built = next((r for r in records if is_native(r, spec) and r.reference), None)
    if built is not None:
        outputs, real_from = real_outputs(tmp, built, pre)
    else:
        planned = plan.parity(spec)
        real_from = planned.real_from
        outputs = np.zeros((0, 0), dtype=np.float32)
        if len(planned.pixels):
            pixels = normalize(planned.pixels, planned.mean, planned.std)
            outputs = run_batched(torch_runner(make_variant(source, spec).model), pixels, batch)
    if not len(outputs):
        return NativeOutputs(spec.patch_size, spec.img_size, None, skipped=NO_IMAGES)
    return NativeOutputs(spec.patch_size, spec.img_size, outputs, real_from)


@dataclass(frozen=True)
class Agreement:
    """The numbers of a ``NativeAgreement`` record."""

    min_cosine: float
    mean_cosine: float
    top1_agreement: float | None  # None: a feature model


def agreement(native: np.ndarray, variant: np.ndarray, classifier: bool) -> Agreement:
    """Min and mean cosine of each image's outputs, and (a classifier's) top-1 agreement."""
    a, b = native.astype(np.float64), variant.astype(np.float64)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    cosine = np.sum(a * b, axis=1) / np.maximum(norms, 1e-300)
    top1 = float(np.mean(a.argmax(axis=1) == b.argmax(axis=1))) if classifier else None
    return Agreement(float(cosine.min()), float(cosine.mean()), top1)


def native_agreement(
    record: VariantRecord,
    spec: VariantSpec,
    native: NativeOutputs,
    tmp: Path,
    source: SourceModel,
) -> NativeAgreement | NativeSkipped:
    """The record's ``native_agreement``: its numbers, or ``skipped`` with the reason."""
    if native.outputs is None:
        return NativeSkipped(skipped=native.skipped)
    outputs, _ = real_outputs(tmp, record, source.preprocessing) if record.reference else (None, "")
    if outputs is None or not len(outputs):
        size = format_size(record.img_size)
        return NativeSkipped(skipped=f"no real images at {size} (the demo's digits are square): {NO_IMAGES}")
    count = min(len(outputs), len(native.outputs))  # the same sorted images, each at its own size
    classifier = source.num_classes != 0
    numbers = (
        Agreement(1.0, 1.0, 1.0 if classifier else None)
        if is_native(record, spec)
        else agreement(native.outputs[:count], outputs[:count], classifier)
    )
    return NativeAgreement.model_validate(
        {
            "against": native.against,
            "patch_size": native.patch_size,
            "img_size": native.img_size,
            "images": count,
            "from": native.real_from,
            "native": is_native(record, spec),
            **asdict(numbers),
        }
    )
