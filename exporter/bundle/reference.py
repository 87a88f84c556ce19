"""The reference a bundle carries: PyTorch's fp32 logits on the parity inputs, and those inputs in
a form any device can rebuild with numpy alone.

A variant's parity inputs are ``random`` seeded images from numpy's own generator (regenerated
from the seed, never stored) followed by real images, stored as the uint8 RGB pixels they were
read from (already resized and cropped to the variant's size). ``inputs()`` turns both into the
float32 NCHW batch with the same numpy normalisation the build used, bit for bit, so a
device with no torch, timm or checkpoint judges any backend against PyTorch's own outputs.

Stored as ``reference/model_<label>.npz`` (uncompressed: no archive bomb), hashed in the manifest.
This module imports numpy only.
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from typing_extensions import TypedDict

from exporter.bundle.records import RandomInputs, RealInputs, ReferenceEntry, VariantRecord
from exporter.bundle.schema import Manifest
from exporter.core.errors import BundleError
from exporter.core.files import write_atomic_bytes

REFERENCE_DIR = "reference"
GENERATOR = "numpy.random.default_rng(seed).random((count, 3, H, W), dtype=float32)"
_MEMBERS = {"logits.npy", "pixels.npy"}


def normalize(pixels: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """uint8 RGB ``[N, H, W, 3]`` → float32 ``[N, 3, H, W]``: ``(x / 255 - mean) / std``."""
    x = np.asarray(pixels, dtype=np.float32).transpose(0, 3, 1, 2) / 255.0
    m = np.asarray(mean, dtype=np.float32).reshape(1, 3, 1, 1)
    s = np.asarray(std, dtype=np.float32).reshape(1, 3, 1, 1)
    return ((x - m) / s).astype(np.float32)


def random_inputs(
    img_size: tuple[int, int], count: int, seed: int, mean: tuple[float, ...], std: tuple[float, ...]
) -> np.ndarray:
    """Seeded uniform [0, 1) images, normalised with the model's mean/std: float32 NCHW."""
    rng = np.random.default_rng(seed)
    pixels = rng.random((count, 3, *img_size), dtype=np.float32)
    m = np.asarray(mean, dtype=np.float32).reshape(1, 3, 1, 1)
    s = np.asarray(std, dtype=np.float32).reshape(1, 3, 1, 1)
    return ((pixels - m) / s).astype(np.float32)


class ReferenceInputs(TypedDict):
    """A ``ReferenceEntry``'s ``random`` and ``real`` parts."""

    random: RandomInputs
    real: RealInputs


@dataclass(frozen=True)
class ParityInputs:
    """What a variant is checked on: ``random_count`` seeded images, then ``pixels``."""

    img_size: tuple[int, int]
    random_count: int
    seed: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    pixels: np.ndarray  # uint8 [M, H, W, 3]
    real_from: str = ""

    def __post_init__(self) -> None:
        h, w = self.img_size
        if self.pixels.dtype != np.uint8 or self.pixels.ndim != 4 or self.pixels.shape[1:] != (h, w, 3):
            raise BundleError(
                f"reference pixels must be uint8 [N, {h}, {w}, 3], got {self.pixels.dtype} {list(self.pixels.shape)}"
            )

    def arrays(self) -> np.ndarray:
        """The float32 NCHW batch: random images first, then the real ones."""
        parts = [random_inputs(self.img_size, self.random_count, self.seed, self.mean, self.std)]
        if len(self.pixels):
            parts.append(normalize(self.pixels, self.mean, self.std))
        return np.concatenate(parts).astype(np.float32)

    @property
    def what(self) -> str:
        text = f"{self.random_count} seeded random images"
        return text + (f" + {len(self.pixels)} {self.real_from}" if len(self.pixels) else "")

    def record(self) -> ReferenceInputs:
        """The reference entry's inputs (its writer adds the file's path and sha256)."""
        return {
            "random": RandomInputs(count=self.random_count, seed=self.seed, generator=GENERATOR),
            "real": RealInputs.model_validate({"count": len(self.pixels), "from": self.real_from}),
        }


def save_reference(path: Path, inputs: ParityInputs, logits: np.ndarray) -> None:
    """Write the npz atomically (uncompressed)."""

    buffer = io.BytesIO()
    np.savez(buffer, logits=np.asarray(logits, dtype=np.float32), pixels=inputs.pixels)
    write_atomic_bytes(path, buffer.getvalue())


def load_reference(
    path: Path,
    record: ReferenceEntry,
    img_size: tuple[int, int],
    mean: tuple[float, float, float],
    std: tuple[float, float, float],
) -> tuple[ParityInputs, np.ndarray]:
    """Read a (sha256-checked) reference file; its shapes must agree with the manifest record."""
    real, random = record.real.count, record.random.count
    expected: dict[str, tuple[str, tuple[int, ...] | None]] = {
        "pixels.npy": ("|u1", (real, *img_size, 3)),
        "logits.npy": ("<f4", None),  # [random + real, classes]
    }
    try:
        with zipfile.ZipFile(path) as archive:
            members = {info.filename: info for info in archive.infolist()}
            if set(members) != _MEMBERS or any(i.compress_type != zipfile.ZIP_STORED for i in members.values()):
                raise BundleError(f"{path} is not a reference we wrote (members {sorted(members)})")
            for name, (dtype, shape) in expected.items():
                with archive.open(name) as member:  # the header first: no allocation on a lie
                    found_dtype, found_shape = _npy_header(member)
                rows_ok = shape is None and len(found_shape) == 2 and found_shape[0] == random + real
                if (
                    found_dtype != dtype
                    or not (rows_ok or found_shape == shape)
                    or any(d > 1 << 20 for d in found_shape)
                ):
                    raise BundleError(
                        f"{path}: {name} holds {found_dtype} {list(found_shape)}, not what the manifest records"
                    )
        with np.load(path, allow_pickle=False) as data:
            logits, pixels = data["logits"], data["pixels"]
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise BundleError(f"cannot read the reference {path}: {exc}") from exc
    inputs = ParityInputs(img_size, random, record.random.seed, mean, std, pixels, record.real.from_)
    return inputs, logits


def _npy_header(member: Any) -> tuple[str, tuple[int, ...]]:
    version = np.lib.format.read_magic(member)
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, fortran, dtype = read(member)
    if fortran:
        raise ValueError("Fortran-ordered array")
    return dtype.str, tuple(int(d) for d in shape)


def stored_reference(
    root: Path, manifest: Manifest, record: VariantRecord, size: str = "opt"
) -> tuple[ParityInputs, np.ndarray]:
    """A variant's parity inputs and PyTorch logits from the bundle at ``root``, whose files the
    caller has checked (``Bundle.file`` or ``Bundle.verify_all``). ``size``: a dynamic-resolution
    variant's ``min`` or ``max`` check instead of its own (opt) size."""
    reference: ReferenceEntry | None = record.reference
    img_size = record.img_size
    if size != "opt":
        check = next(c for c in (record.dynamic.checks if record.dynamic else ()) if c.size == size)
        reference, img_size = check.reference, check.img_size
    if not reference:
        raise BundleError(
            f"{record.label}: the bundle carries no PyTorch reference (built by flexiexport before 0.2); "
            "rebuild it, or run 'flexiexport validate --rebuild' where the checkpoint is"
        )
    samples = manifest.options.parity_samples
    random, real = reference.random.count, reference.real.count
    if random != samples or real > samples:
        raise BundleError(
            f"{record.label}: the reference records {random} random and {real} real images, but the build "
            f"checked {samples} of each at most (options.parity_samples)"
        )
    pre = manifest.preprocessing
    return load_reference(root / reference.path, reference, img_size, pre.mean, pre.std)


def judged_rows(samples: int, precision: str, arrays: np.ndarray) -> np.ndarray:
    """What a file or engine of ``precision`` is judged on, at build, ``validate`` and ``engine``:
    the parity inputs (or their reference outputs), except that int8 sees only the real images
    after the ``samples`` random ones (static quantisation is calibrated to a data distribution;
    random images lie far outside its ranges)."""
    return arrays[samples:] if precision == "int8" else arrays
