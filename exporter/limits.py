"""What a run may ask of this machine: threads, at most the cores it may run on."""

from __future__ import annotations

import logging
import os

from exporter.errors import UsageError

log = logging.getLogger(__name__)


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def cap_threads(threads: int | None, option: str = "--threads") -> int | None:
    """``threads`` limited to the available cores (more only oversubscribes, and asking
    onnxruntime or OpenMP for 100000 threads crashes the process); below 1 is a usage error."""
    if threads is None:
        return None
    if threads < 1:
        raise UsageError(f"{option} must be at least 1, got {threads}")
    cores = available_cores()
    if threads > cores:
        log.warning("%s %d is more than the %d cores available; using %d", option, threads, cores, cores)
        return cores
    return threads
