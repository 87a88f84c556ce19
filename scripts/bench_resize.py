"""Time our PI-resize against timm's ``resample_patch_embed`` in one run, and compare exactness.

    python scripts/bench_resize.py [--repeat 15] [--threads 2]

Kernel: flexivit_base-sized, 768x3x16x16 float32. Resizes 16→8, 16→32, 16→48 (and 16→20 for
the identity check). Reports median milliseconds (the pseudo-inverse is cached after the first
call in both libraries' steady state; the first call is reported separately) and the identity
error ``max|<x,w> - <Bx,w_new>| / max|<x,w>|`` (float64, random normal x) for upsampling.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from timm.layers import resample_patch_embed

from exporter.build.resize import _pinv_1d, pi_resize_patch_embed, resize_matrix, resize_matrix_1d
from exporter.source.resampling import ResizeMethod


def timed(fn, repeat: int) -> tuple[float, float]:
    start = time.perf_counter()
    fn()
    first = time.perf_counter() - start
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return first * 1e3, statistics.median(times) * 1e3


def identity_error(w: torch.Tensor, w_new: torch.Tensor) -> float:
    b = resize_matrix(tuple(w.shape[2:]), tuple(w_new.shape[2:]), ResizeMethod())
    x = torch.randn(64, b.shape[1], dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    lhs = x @ w.reshape(-1, b.shape[1]).double().T
    rhs = (x @ b.T) @ w_new.reshape(-1, b.shape[0]).double().T
    return float((lhs - rhs).abs().max() / lhs.abs().max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    w = torch.randn(768, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    print(f"torch {torch.__version__}, {args.threads} threads, kernel {tuple(w.shape)}, median of {args.repeat}")
    print(
        f"{'resize':>8} {'ours first':>11} {'ours ms':>8} {'timm first':>11} {'timm ms':>8} {'speed-up':>8}"
        f" {'ident ours':>11} {'ident timm':>11}"
    )
    for new in (8, 20, 32, 48):
        resize_matrix_1d.cache_clear()
        _pinv_1d.cache_clear()
        ours_first, ours = timed(lambda n=new: pi_resize_patch_embed(w, (n, n)), args.repeat)
        timm_first, theirs = timed(lambda n=new: resample_patch_embed(w, [n, n]), args.repeat)
        ident = ""
        if new > 16:
            ident = (
                f" {identity_error(w, pi_resize_patch_embed(w, (new, new))):11.2e}"
                f" {identity_error(w, resample_patch_embed(w, [new, new])):11.2e}"
            )
        print(
            f"{'16->' + str(new):>8} {ours_first:11.1f} {ours:8.1f} {timm_first:11.1f} {theirs:8.1f}"
            f" {theirs / ours:7.2f}x{ident}"
        )


if __name__ == "__main__":
    main()
