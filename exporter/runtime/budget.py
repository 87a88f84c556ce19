"""Which variant fits a latency budget: measured p99 per variant on this device and backend.

Latencies come from the bundle's ``bench.json`` (``flexiexport bench``) or ``latency.json`` (the
runtime's own short probe), and only from rows measured on this machine (same CPU model) with the
same backend, precision and batch. The choice: the most accurate variant whose p99 fits the
budget, accuracy measured (``eval.json``, ``flexiexport evaluate``) where the bundle has it, else
most tokens; the first that fits is on the accuracy/latency frontier (``exporter.measure.frontier``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING

import numpy as np

from exporter.core.errors import UsageError
from exporter.core.machine import machine_key
from exporter.runtime.measurements import BENCH, LATENCY, bench_rows_here, latency_rows_here, record_latencies

if TYPE_CHECKING:
    from exporter.bundle.door import Bundle
    from exporter.parity.runner import Runner
    from exporter.runtime.artefacts import ProbeRow
    from exporter.runtime.preprocess import Preprocess

log = logging.getLogger("exporter.runtime")
progress = logging.getLogger("exporter.runtime.budget")  # the probe's lines: INFO, shown as progress by the CLI
PROBE_SECONDS = 0.5  # per variant, after warm-up: a few seconds for a whole bundle
PROBE_RUNS = (50, 2000)  # at least, at most


@dataclass(frozen=True)
class Latency:
    p50_ms: float
    p99_ms: float


def choose_variant(ordered: list[str], latencies: dict[str, Latency], budget_ms: float) -> str:
    """The first of ``ordered`` (most accurate first) whose p99 fits ``budget_ms``."""
    for label in ordered:
        if label in latencies and latencies[label].p99_ms <= budget_ms:
            return label
    fastest = min(latencies, key=lambda k: latencies[k].p99_ms)
    raise UsageError(
        f"no variant fits a budget of {budget_ms:g} ms: the fastest, {fastest}, has p99 "
        f"{latencies[fastest].p99_ms:.3g} ms here; raise the budget or pick a variant"
    )


def load_latencies(door: Bundle, backend: str, precision: str, batch: int) -> dict[str, Latency]:
    """Rows of bench.json, then latency.json, measured here for this backend, precision, batch:
    only rows that are data we can use, of variants the bundle has (``measurements``)."""

    wanted = backend if precision == "fp32" else f"{backend} {precision}"
    variants = {v.label for v in door.manifest.variants}
    here = machine_key()
    rows = bench_rows_here(door.read_artefact(BENCH), str(door.root / BENCH), variants, here)
    rows += latency_rows_here(door.read_artefact(LATENCY), str(door.root / LATENCY), variants, here)
    return {
        r["variant"]: Latency(float(r["p50_ms"]), float(r["p99_ms"]))
        for r in rows
        if r["backend"] == wanted and r["batch"] == batch
    }


def time_runner(runner: Runner, batch: np.ndarray) -> Latency:
    """p50/p99 of ``runner`` on ``batch``: two warm-up runs, then at least ``PROBE_RUNS[0]`` runs
    and ``PROBE_SECONDS``."""
    for _ in range(2):
        runner(batch)
    times: list[float] = []
    deadline = time.perf_counter() + PROBE_SECONDS
    while len(times) < PROBE_RUNS[1] and (len(times) < PROBE_RUNS[0] or time.perf_counter() < deadline):
        start = time.perf_counter()
        runner(batch)
        times.append((time.perf_counter() - start) * 1e3)
    return Latency(float(np.percentile(times, 50)), float(np.percentile(times, 99)))


def probe_latencies(
    door: Bundle, runners: dict[str, Runner], backend: str, precision: str, batch: int, preprocess: Preprocess
) -> dict[str, Latency]:
    """Time every variant here (a few seconds, logged per variant) and record it in latency.json."""

    found = {}
    for label, runner in runners.items():
        record = next(v for v in door.manifest.variants if v.label == label)
        n = runner.static_batch or batch
        x = np.random.default_rng(0).standard_normal((n, 3, *record.img_size), dtype=np.float32)
        progress.info("probing %s on %s at batch %d (no latency measured here yet) ...", label, backend, n)
        found[label] = time_runner(runner, x)
        progress.info("  %s: p50 %.3f ms, p99 %.3f ms", label, found[label].p50_ms, found[label].p99_ms)
    wanted = backend if precision == "fp32" else f"{backend} {precision}"
    measured = datetime.now(timezone.utc).replace(microsecond=0).isoformat()
    rows: list[ProbeRow] = [
        {"backend": wanted, "variant": k, "batch": batch, "p50_ms": v.p50_ms, "p99_ms": v.p99_ms, "measured": measured}
        for k, v in found.items()
    ]
    record_latencies(door, rows, machine_key())
    return found
