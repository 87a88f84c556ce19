"""Progress of long steps: the ``Reporter`` the CLI draws, and a timed ``stage`` block.

Kept apart from the pipeline so that torch-free commands (``validate`` against the stored
reference, ``engine``) report progress the same way.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol

log = logging.getLogger("exporter.build.pipeline")
# Signals received and not yet acted on. A KeyboardInterrupt raised inside a __del__ or a weakref
# callback (torch and onnxruntime objects have them) is printed and dropped by Python; the next
# stage boundary raises it again, so an interrupt is never lost.
PENDING: list[str] = []


def interrupt(signum: int, frame: object) -> None:
    """The handler ``flexiexport`` installs for SIGINT, SIGTERM and SIGHUP."""
    import signal

    name = signal.Signals(signum).name
    first = not PENDING
    PENDING.append(name)
    if first:  # a second signal must not break into the clean-up the first one started
        raise KeyboardInterrupt(name)


def check_interrupted() -> None:
    if PENDING:
        raise KeyboardInterrupt(PENDING[0])


class Reporter(Protocol):
    """Receives progress from the pipeline; the CLI draws it, tests may record it."""

    def begin(self, total_steps: int) -> None: ...
    def start(self, label: str, stage: str) -> None: ...
    def done(self, label: str, stage: str, seconds: float) -> None: ...
    def variant(self, record: Any) -> None: ...


class SilentReporter:
    def begin(self, total_steps: int) -> None: ...
    def start(self, label: str, stage: str) -> None: ...
    def done(self, label: str, stage: str, seconds: float) -> None: ...
    def variant(self, record: Any) -> None: ...


@contextmanager
def stage(reporter: Reporter, label: str, name: str, times: dict[str, float]) -> Iterator[None]:
    """Log and report the start and the finish (with its time) of one step; add it to ``times``."""
    check_interrupted()
    reporter.start(label, name)
    log.info("%s: %s ...", label, name)
    start = time.perf_counter()
    yield
    check_interrupted()
    seconds = time.perf_counter() - start
    times[name] = times.get(name, 0.0) + seconds
    log.info("%s: %s done in %.2f s", label, name, seconds)
    reporter.done(label, name, seconds)
