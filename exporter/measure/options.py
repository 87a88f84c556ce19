"""What a bench run was asked for (``BenchOptions``, checked when made), what it skipped, and the
seeded input and percentiles every timing uses."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from exporter.core.backends import BENCH_BACKENDS as BACKENDS
from exporter.core.errors import UsageError, param
from exporter.core.machine import available_cores, cap_threads

MAX_RUNS, MAX_WARMUP, MAX_SECONDS = 100_000, 10_000, 3600.0  # per case: a limit, not a measurement


@dataclass(frozen=True)
class BenchOptions:
    batch_sizes: tuple[int, ...] = (1, 8)
    backends: tuple[str, ...] = BACKENDS
    threads: int | None = None
    warmup: int = 3
    min_runs: int = 10
    min_seconds: float = 1.0
    max_runs: int = 500

    def __post_init__(self) -> None:
        if not self.batch_sizes or any(b < 1 for b in self.batch_sizes):
            raise UsageError(f"{param('batch_sizes')} must be positive integers, got {list(self.batch_sizes)}")
        unknown = [b for b in self.backends if b not in BACKENDS]
        if unknown:
            raise UsageError(f"unknown backend {unknown[0]!r}; choose from {', '.join(BACKENDS)}")
        object.__setattr__(self, "threads", cap_threads(self.threads))
        if not 1 <= self.min_runs <= MAX_RUNS:
            raise UsageError(f"{param('min_runs')} must be 1 to {MAX_RUNS:,}, got {self.min_runs}")
        if not 0 <= self.warmup <= MAX_WARMUP:
            raise UsageError(f"{param('warmup')} must be 0 to {MAX_WARMUP:,}, got {self.warmup}")
        if not 0 <= self.min_seconds <= MAX_SECONDS:  # false for NaN too; inf would time one case forever
            raise UsageError(
                f"{param('min_seconds')} must be a number of seconds from 0 to {MAX_SECONDS:g}, got {self.min_seconds}"
            )

    @property
    def thread_count(self) -> int:
        return self.threads or available_cores()


@dataclass(frozen=True)
class Skipped:
    backend: str
    reason: str


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def bench_input(img: tuple[int, int], batch: int) -> np.ndarray:
    """The seeded random batch every timing runs on."""
    return np.random.default_rng(0).standard_normal((batch, 3, *img), dtype=np.float32)
