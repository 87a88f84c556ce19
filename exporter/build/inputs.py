"""The input plan: which images every check of a build sees, decided in one place.

One ``InputPlan`` per build (or per bundle, read back from its manifest) answers every question
about inputs: the parity inputs of a variant (``--parity-samples`` seeded random images, then as
many real ones: ``--calib-dir`` images or the demo's held-out digits), the INT8 calibration
images (the ``--calib-dir`` images after those, or the demo's calibration split: never the ones
that check it), what a reduced-precision file or an engine is judged on (int8: the real images
only), and the digest of the ``--calib-dir`` images a build reads (for ``--resume``).

Imports numpy and light modules only: ``validate`` and ``engine`` use it on a device with no
torch (the image readers and the demo's digits are imported inside the methods that draw images).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from exporter.bundle.reference import ParityInputs, judged_rows
from exporter.core.errors import UsageError, param
from exporter.core.precision import Precision
from exporter.source.demo import DEMO_NAME, digits_to_pixels, digits_to_uint8, load_demo_digits

if TYPE_CHECKING:
    from exporter.build.options import BuildOptions
    from exporter.build.variant import VariantSpec
    from exporter.bundle.manifest import Preprocessing
    from exporter.bundle.schema import Manifest
    from exporter.source.model import SourceModel

CALIBRATION_IMAGES = 64  # int8: calibration images read after the ones the check uses
NO_CALIBRATION = f"{param('precision')} int8 needs calibration images: pass {param('calib_dir')} DIR"


@dataclass(frozen=True)
class InputPlan:
    """Which images a build's checks see. ``demo``: the source is the shipped demo (by its name,
    as ``load`` gives it), whose own digits serve where no ``--calib-dir`` is given.
    ``preprocessing`` is the source's, set once it is loaded (``with_source``); a plan read
    from a bundle has none and only judges (``reduced``), never draws images."""

    samples: int
    seed: int = 0
    precision: Precision = Precision.FP32
    calib_dir: Path | None = None
    demo: bool = False
    preprocessing: Preprocessing | None = None

    @classmethod
    def for_build(cls, options: BuildOptions, source_name: str) -> InputPlan:
        """The plan of a build, known before the checkpoint is read (``source_name``: the name
        ``load`` will give the source)."""
        return cls(
            options.parity_samples,
            options.seed,
            options.precision,
            options.calib_dir,
            demo=source_name == DEMO_NAME,
        )

    @classmethod
    def for_bundle(cls, manifest: Manifest) -> InputPlan:
        """The plan a bundle was built with, as far as judging needs it. The recorded
        ``--calib-dir`` is left out: a bundle never makes a command read it again (its
        reference stores the images the build checked on)."""
        options = manifest.options
        return cls(options.parity_samples, options.seed, demo=manifest.name == DEMO_NAME)

    def with_source(self, source: SourceModel) -> InputPlan:
        """The plan with the loaded source's preprocessing, ready to draw images."""
        return replace(self, preprocessing=source.preprocessing)

    @property
    def calibration_count(self) -> int:
        """Calibration images read per variant (int8 only)."""
        return CALIBRATION_IMAGES if self.precision == Precision.INT8 else 0

    @property
    def images_per_variant(self) -> int:
        """The most images a variant's checks hold at once: random + as many real, and calibration."""
        return 2 * self.samples + self.calibration_count

    def check(self) -> None:
        """Fail before any work when int8 has no calibration images, or none left over after the
        check: with ``--calib-dir`` the first ``--parity-samples`` images (sorted) check the int8
        model and only the rest calibrate it, so it is never judged on its own calibration data."""
        if self.precision != Precision.INT8:
            return
        if self.calib_dir is None:
            if self.demo:
                return
            raise UsageError(NO_CALIBRATION)
        from exporter.runtime.images import list_images

        count = len(list_images(self.calib_dir))
        if count <= self.samples:
            raise UsageError(
                f"{param('calib_dir')} {str(self.calib_dir)!r} has {count} images; int8 needs more than "
                f"{param('parity_samples')} "
                f"({self.samples}): the first {self.samples} check the int8 model, the rest "
                f"(up to {CALIBRATION_IMAGES}) calibrate it"
            )

    def key(self) -> str | None:
        """The ``--calib-dir`` images a build reads, by content: parity's, and int8's calibration set.
        They are decoded first, so a broken file, a FIFO or a decompression bomb stops the build
        before any export."""
        if self.calib_dir is None:
            return None
        from exporter.runtime.images import check_images, folder_digest

        used = self.samples + self.calibration_count
        check_images(self.calib_dir, used)
        return folder_digest(self.calib_dir, used)

    def _preprocessing(self) -> Preprocessing:
        if self.preprocessing is None:
            raise RuntimeError("this input plan has no preprocessing: call with_source(source) first")
        return self.preprocessing

    def _demo_digits(self, spec: VariantSpec) -> bool:
        """The demo's digits fit a variant: the demo, at a square size."""
        return self.demo and spec.img_size[0] == spec.img_size[1]

    def parity(self, spec: VariantSpec) -> ParityInputs:
        """Seeded random images plus real ones (``--calib-dir``, or the demo's held-out digits),
        the real ones as uint8 pixels so that the bundle's reference can store them."""
        pre = self._preprocessing()
        pixels = np.zeros((0, *spec.img_size, 3), dtype=np.uint8)
        real_from = ""
        if self.calib_dir is not None:
            from exporter.runtime.images import load_pixels

            pixels = load_pixels(self.calib_dir, spec.img_size, pre, limit=self.samples)
            real_from = f"images from {self.calib_dir}"
        elif self._demo_digits(spec):
            digits, _ = load_demo_digits("test")
            pixels = digits_to_uint8(digits[: self.samples], spec.img_size[0])
            real_from = "held-out demo digits"
        return ParityInputs(spec.img_size, self.samples, self.seed, pre.mean, pre.std, pixels, real_from)

    def calibration(self, spec: VariantSpec) -> tuple[np.ndarray, str]:
        """INT8 calibration images and what they are: the ``--calib-dir`` images after the ones
        the check uses, or the demo's own calibration split (disjoint from its held-out digits)."""
        if self.calib_dir is not None:
            from exporter.runtime.images import load_images

            skip = self.samples
            images = load_images(self.calib_dir, spec.img_size, self._preprocessing(), CALIBRATION_IMAGES, skip)
            return images, f"{len(images)} images from {self.calib_dir} (after the {skip} used for the check)"
        if self._demo_digits(spec):
            digits, _ = load_demo_digits("calib")
            images = digits_to_pixels(digits[:CALIBRATION_IMAGES], spec.img_size[0])
            return images, f"{len(images)} digits of the demo's calibration split"
        raise UsageError(NO_CALIBRATION)

    def reduced(self, precision: str, arrays: np.ndarray) -> np.ndarray:
        """What a file or engine of ``precision`` is judged on (``judged_rows``)."""
        return judged_rows(self.samples, precision, arrays)
