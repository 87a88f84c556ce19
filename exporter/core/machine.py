"""What this machine offers a run: available memory (cgroup-aware), CPU model, cores, thread caps."""

from __future__ import annotations

import logging
import os
import platform
from pathlib import Path

from exporter.core.errors import UsageError, param

log = logging.getLogger(__name__)


def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_available() -> int | None:
    """A container's own limit (cgroup v2), which /proc/meminfo does not show."""
    root = Path("/sys/fs/cgroup")
    try:
        limit = (root / "memory.max").read_text().strip()
        if limit == "max":
            return None
        return int(limit) - int((root / "memory.current").read_text().strip())
    except (OSError, ValueError):
        return None


def available_memory() -> int | None:
    """Bytes this process could still allocate without swapping, or None when unknown."""
    found = [m for m in (_meminfo_available(), _cgroup_available()) if m is not None]
    if not found:
        try:
            found = [os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")]
        except (ValueError, OSError, AttributeError):
            return None
    return max(0, min(found))


def gigabytes(n: int) -> str:
    """``1.5 GB``, ``240 GB``, ``97,656,250,000 GB``; integer arithmetic, so no size overflows."""
    if n >= 10**21:
        return "more than 1,000,000,000,000 GB"
    return f"{n // 10**9:,} GB" if n >= 10 * 10**9 else f"{n / 1e9:.1f} GB"


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``; the platform's word for it elsewhere): what makes
    latencies from two runs comparable."""
    import platform

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            cpu = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), cpu)
    except OSError:
        pass
    return cpu


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def cap_threads(threads: int | None) -> int | None:
    """``threads`` limited to the available cores (more only oversubscribes, and asking
    onnxruntime or OpenMP for 100000 threads crashes the process); below 1 is a usage error."""
    if threads is None:
        return None
    if threads < 1:
        raise UsageError(f"{param('threads')} must be at least 1, got {threads}")
    cores = available_cores()
    if threads > cores:
        log.warning("--threads %d is more than the %d cores available; using %d", threads, cores, cores)
        return cores
    return threads


def machine_key() -> dict[str, str]:
    """What makes latencies comparable: the CPU model (and the machine type)."""
    from exporter.core.machine import cpu_model

    return {"cpu": cpu_model(), "machine": platform.machine()}
