"""Comparison statistics and verdicts, on hand-made logits with known differences."""

from __future__ import annotations

import numpy as np
import pytest

from exporter.bundle.reference import random_inputs
from exporter.core.errors import UsageError
from exporter.parity.compare import compare_outputs, run_batched
from exporter.parity.tolerance import Tolerance


def logits(n: int = 8, classes: int = 10, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, classes)).astype(np.float32)


def test_identical_outputs_pass_with_zero_error():
    ref = logits()
    cmp = compare_outputs(ref, ref.copy())
    assert cmp and cmp.max_abs == 0 and cmp.min_cosine == pytest.approx(1.0)
    assert cmp.top1_agreement == 1.0 and cmp.top5_agreement == 1.0 and "✓" in str(cmp)


def test_small_noise_passes_and_stats_are_right():
    ref = logits()
    cand = ref + np.float32(5e-5)
    cmp = compare_outputs(ref, cand)
    assert cmp.passed
    assert cmp.max_abs == pytest.approx(5e-5, rel=1e-2) and cmp.mean_abs == pytest.approx(5e-5, rel=1e-2)
    assert cmp.p99_abs == pytest.approx(5e-5, rel=1e-2) and cmp.samples == 8


def test_large_error_fails_with_a_reason():
    ref = logits()
    cand = ref.copy()
    cand[3, 2] += 0.5
    cmp = compare_outputs(ref, cand)
    assert not cmp and "max|Δ| 5.00e-01 exceeds atol" in cmp.failures[0]
    assert "✗" in str(cmp) and cmp.to_dict()["passed"] is False


def test_top1_flip_fails_even_within_loose_tolerances():
    ref = np.array([[1.0, 0.99, 0.0], [0.0, 1.0, 0.0]], dtype=np.float32)
    cand = np.array([[0.99, 1.0, 0.0], [0.0, 1.0, 0.0]], dtype=np.float32)
    cmp = compare_outputs(ref, cand, Tolerance(atol=0.1, rtol=0.1, min_cosine=0.9, min_top1=1.0))
    assert cmp.top1_agreement == 0.5 and not cmp
    assert any("top-1 agreement 50.0%" in f for f in cmp.failures)
    # The flipped sample's top two logits were 1 % of its range apart: nearly tied, said so.
    assert cmp.flipped_top2_gap == pytest.approx(0.01) and cmp.top2_gap == pytest.approx(0.505)
    assert any(
        "flipped samples' top-2 gap: median 1.0% of the logit range, all samples 50.5%" in f for f in cmp.failures
    )


def test_nan_never_passes():
    ref = logits()
    cand = ref.copy()
    cand[0, 0] = np.nan
    assert not compare_outputs(ref, cand)


def test_shape_mismatch_and_bad_tolerances_are_errors():
    with pytest.raises(UsageError, match="shapes differ"):
        compare_outputs(logits(4), logits(5))
    with pytest.raises(UsageError, match="atol=-1"):
        Tolerance(atol=-1)


def test_run_batched_pads_the_tail_for_static_batches():
    seen = []

    def runner(batch: np.ndarray) -> np.ndarray:
        seen.append(len(batch))
        return batch.reshape(len(batch), -1)[:, :2] * 2

    x = np.arange(10 * 3 * 2 * 2, dtype=np.float32).reshape(10, 3, 2, 2)
    out = run_batched(runner, x, 4)
    assert seen == [4, 4, 4] and out.shape == (10, 2)
    assert np.array_equal(out, x.reshape(10, -1)[:, :2] * 2)


def test_random_inputs_are_seeded_and_normalised():
    a = random_inputs((8, 8), 4, 0, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    assert np.array_equal(a, random_inputs((8, 8), 4, 0, (0.5,) * 3, (0.5,) * 3))
    assert a.dtype == np.float32 and a.shape == (4, 3, 8, 8) and a.min() >= -1 and a.max() <= 1


def test_fp16_tolerance_uses_p99_of_the_logit_range():
    from exporter.parity.tolerance import tolerance_for

    tol = tolerance_for("fp16", "tensorrt")
    ref = logits(64, 10)
    spread = float(ref.max() - ref.min())
    noisy = ref + np.float32(0.002 * spread)  # p99 0.2 % of the range: within 0.5 %
    assert compare_outputs(ref, noisy, tol)
    worse = ref + np.float32(0.01 * spread)
    cmp = compare_outputs(ref, worse, tol)
    assert not cmp and "x logit range" in cmp.failures[0]
    assert tolerance_for("fp32", "tensorrt").atol == 1e-3 and tolerance_for("fp32", "onnxruntime").atol == 1e-4
    assert tolerance_for("int8", "onnxruntime").min_cosine == 0.99
    with pytest.raises(UsageError, match="fp8"):
        tolerance_for("fp8", "tensorrt")
