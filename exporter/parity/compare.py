"""Compare any runner's outputs with a reference: numbers first, verdict second.

Every backend is a ``Runner`` (``exporter.parity.runner``: PyTorch, onnxruntime, OpenVINO,
TensorRT), so all are checked by one function. A ``Comparison`` is truthy when it passes and
prints its own statistics.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

import numpy as np

from exporter.core.errors import UsageError
from exporter.parity.runner import Runner
from exporter.parity.tolerance import TOLERANCES, Tolerance


@dataclass(frozen=True)
class Comparison:
    """Statistics of candidate vs reference logits, and the verdict against a tolerance."""

    samples: int
    max_abs: float
    mean_abs: float
    p99_abs: float
    max_rel: float
    mean_rel: float
    p99_rel: float
    min_cosine: float
    top1_agreement: float | None  # None for a feature model: an argmax over embedding dims means nothing
    top5_agreement: float | None
    allclose: bool
    tolerance: Tolerance
    failures: tuple[str, ...]
    # The reference's gap between its top two logits, as a share of its logit range (max - min):
    # median over all samples, and over the samples whose top-1 changed. Small gaps mean nearly
    # tied logits (an untrained model), where any perturbation flips the top-1.
    top2_gap: float | None = None
    flipped_top2_gap: float | None = None

    def __bool__(self) -> bool:
        return not self.failures

    @property
    def passed(self) -> bool:
        return bool(self)

    def __str__(self) -> str:
        mark = "✓" if self else "✗"
        text = (
            f"{mark} max|Δ| {self.max_abs:.2e}  p99 {self.p99_abs:.2e}  mean {self.mean_abs:.2e}  "
            f"cos {self.min_cosine:.7f}"
        )
        if self.top1_agreement is not None and self.top5_agreement is not None:
            text += f"  top-1 {self.top1_agreement:.1%}  top-5 {self.top5_agreement:.1%}"
        return text + ("" if self else "  (" + "; ".join(self.failures) + ")")

    def to_dict(self) -> dict[str, object]:
        """The numbers and the verdict, as a manifest's ``parity`` records them; the tolerance is
        recorded once, in the checked file's own record (``ToleranceRecord``)."""
        data = asdict(self)
        del data["tolerance"]
        data["passed"] = self.passed
        data["failures"] = list(self.failures)
        return data


def _top_k(logits: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-logits, axis=1, kind="stable")[:, :k]


def compare_outputs(
    reference: np.ndarray, candidate: np.ndarray, tol: Tolerance = TOLERANCES["fp32"], classifier: bool = True
) -> Comparison:
    """Compare ``[N, classes]`` logits, or with ``classifier=False`` a feature model's
    ``[N, dims]`` embeddings by cosine and |Δ| only (no top-1/top-5, no top-1 check).
    Relative error is ``|Δ| / (|ref| + atol)``."""
    if reference.shape != candidate.shape:
        raise UsageError(f"output shapes differ: reference {reference.shape}, candidate {candidate.shape}")
    ref = reference.astype(np.float64)
    cand = candidate.astype(np.float64)
    ref_bad, cand_bad = ~np.isfinite(ref).all(axis=1), ~np.isfinite(cand).all(axis=1)
    bad = ref_bad | cand_bad  # a NaN row agrees with nothing: argsort would rank its NaNs like numbers
    diff = np.abs(ref - cand)
    rel = diff / (np.abs(ref) + (tol.atol if tol.atol else 1e-6))
    with np.errstate(invalid="ignore", over="ignore"):
        norms = np.linalg.norm(ref, axis=1) * np.linalg.norm(cand, axis=1)
        cosine = np.where(norms > 0, np.sum(ref * cand, axis=1) / np.maximum(norms, 1e-300), 1.0)
    cosine = np.where(bad, 0.0, cosine)
    finite = not bool(bad.any())
    allclose = finite and (tol.atol is None or bool(np.all(diff <= tol.atol + tol.rtol * np.abs(ref))))
    failures = []
    if tol.p99_of_range is not None:
        spread = float(ref.max() - ref.min())
        p99 = float(np.percentile(diff, 99))
        if p99 > tol.p99_of_range * spread:
            failures.append(f"p99|Δ| {p99:.2e} exceeds {tol.p99_of_range:g} x logit range {spread:.3g}")
    if cand_bad.any():
        failures.append(f"non-finite outputs (NaN or Inf) in {int(cand_bad.sum())} of {len(cand)} samples")
    if ref_bad.any():
        failures.append(
            f"the reference has non-finite outputs (NaN or Inf) in {int(ref_bad.sum())} of {len(ref)} samples"
        )
    if finite and not allclose:
        failures.append(f"max|Δ| {diff.max():.2e} exceeds atol {tol.atol:g} + rtol {tol.rtol:g}·|ref|")
    if float(cosine.min()) < tol.min_cosine or not math.isfinite(float(cosine.min())):
        failures.append(f"cosine {cosine.min():.7f} < {tol.min_cosine}")
    if not classifier:
        return _stats(ref, diff, rel, cosine, allclose, tol, failures)
    k = min(5, ref.shape[1])
    flipped = (_top_k(ref, 1)[:, 0] != _top_k(cand, 1)[:, 0]) | bad
    top1 = float(1.0 - np.mean(flipped))
    top5_ref, top5_cand = _top_k(ref, k), _top_k(cand, k)
    overlap = np.array([len(set(a) & set(b)) / k for a, b in zip(top5_ref, top5_cand)])
    top5 = float(np.mean(np.where(bad, 0.0, overlap)))
    top2 = np.sort(ref, axis=1)[:, -2:] if ref.shape[1] > 1 else np.zeros((len(ref), 2))
    gaps = (top2[:, 1] - top2[:, 0]) / np.maximum(ref.max(axis=1) - ref.min(axis=1), 1e-12)
    top2_gap = float(np.median(gaps))
    flipped_gap = float(np.median(gaps[flipped])) if flipped.any() else None
    if top1 < tol.min_top1:
        failures.append(
            f"top-1 agreement {top1:.1%} < {tol.min_top1:.1%}"
            + (
                f" (flipped samples' top-2 gap: median {flipped_gap:.1%} of the logit range, all samples "
                f"{top2_gap:.1%})"
                if flipped_gap is not None
                else ""
            )
        )
    return replace(
        _stats(ref, diff, rel, cosine, allclose, tol, failures),
        top1_agreement=top1,
        top5_agreement=top5,
        top2_gap=top2_gap,
        flipped_top2_gap=flipped_gap,
    )


def _stats(
    ref: np.ndarray,
    diff: np.ndarray,
    rel: np.ndarray,
    cosine: np.ndarray,
    allclose: bool,
    tol: Tolerance,
    failures: list[str],
) -> Comparison:
    """The numbers every comparison has (a classifier's top-k agreements are added by the caller)."""
    return Comparison(
        samples=int(ref.shape[0]),
        max_abs=float(diff.max()),
        mean_abs=float(diff.mean()),
        p99_abs=float(np.percentile(diff, 99)),
        max_rel=float(rel.max()),
        mean_rel=float(rel.mean()),
        p99_rel=float(np.percentile(rel, 99)),
        min_cosine=float(cosine.min()),
        top1_agreement=None,
        top5_agreement=None,
        allclose=allclose,
        tolerance=tol,
        failures=tuple(failures),
    )


@dataclass(frozen=True)
class Recheck:
    """``validate``'s verdict on one variant: file integrity and fresh parity."""

    label: str
    sha256_ok: bool
    comparison: Comparison | None
    problem: str = ""
    reduced: Comparison | None = None  # the fp16/int8 ONNX, when the bundle has one

    def __bool__(self) -> bool:
        reduced_ok = self.reduced is None or bool(self.reduced)
        return self.sha256_ok and bool(self.comparison) and reduced_ok and not self.problem


def run_batched(
    runner: Callable[[np.ndarray], np.ndarray], inputs: np.ndarray, batch: int, pad: bool = True
) -> np.ndarray:
    """The one batching loop: ``runner`` (a ``Runner``, or any function of a batch) over
    ``inputs`` in chunks of ``batch``. A short last chunk is padded with copies of its last row
    and the padding dropped (a static-batch model takes exact batches only); ``pad=False`` runs it
    as it is (a dynamic-batch model)."""
    outputs = []
    for start in range(0, len(inputs), batch):
        chunk = inputs[start : start + batch]
        if pad and len(chunk) < batch:
            padded = np.concatenate([chunk, np.repeat(chunk[-1:], batch - len(chunk), axis=0)])
            outputs.append(runner(padded)[: len(chunk)])
        else:
            outputs.append(runner(chunk))
    return np.concatenate(outputs)


def check_parity(
    reference: Runner | np.ndarray,
    candidate: Runner,
    inputs: np.ndarray,
    batch: int,
    tol: Tolerance,
    classifier: bool = True,
) -> Comparison:
    """The one parity check (build, ``validate``, ``validate --rebuild``, ``engine``): ``candidate``
    on ``inputs`` against the reference's outputs, a runner run on the same inputs or the outputs
    stored with them, judged by ``tol`` (``compare_outputs``)."""
    expected = reference if isinstance(reference, np.ndarray) else run_batched(reference, inputs, batch)
    return compare_outputs(expected, run_batched(candidate, inputs, batch), tol, classifier)
