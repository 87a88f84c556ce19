"""The one registry of backends, and the runtime's door to it.

Every backend registers once, by name, a factory of one signature (``Load`` → ``Runner``) and a
cheap check of whether it can run here. The runtime's backends (onnxruntime, OpenVINO, TensorRT)
register in this package; PyTorch's (``torch``, ``torch-compile``, ``torch-cuda``) from the build
side, ``exporter.build.runners``, which the runtime never imports, so the device side imports no
torch. ``load_runner`` is the runtime's entry: the runtime's backends only, absent ones refused
with the reason.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from exporter.core.backends import RUNTIME_BACKENDS as BACKENDS
from exporter.core.errors import BundleError, EnvironmentMissing, FlexiExportError, UsageError
from exporter.core.machine import available_cores, cap_threads
from exporter.parity.runner import Runner

if TYPE_CHECKING:
    from onnxruntime import OrtValue


@dataclass(frozen=True)
class Load:
    """What a backend's factory is given: the file to run (an ONNX; an engine for ``tensorrt``),
    the threads (capped to the cores), and what only some backends take: ``model`` builds the
    PyTorch model (the PyTorch backends run it, not the file), ``initializers`` are shared
    OrtValues (``ort-cpu``)."""

    backend: str
    path: Path
    threads: int
    model: Callable[[], object] | None = None
    initializers: Mapping[str, OrtValue] = field(default_factory=dict)


Factory = Callable[[Load], Runner]


def nothing_missing() -> str | None:
    return None


@dataclass(frozen=True)
class Backend:
    """A registered backend: how to load it, and why it cannot run here (None: it can)."""

    factory: Factory
    problem: Callable[[], str | None] = nothing_missing


REGISTRY: dict[str, Backend] = {}


def register(name: str, factory: Factory, problem: Callable[[], str | None] = nothing_missing) -> None:
    """``name``'s factory and its check; ``problem`` must be cheap (packages, providers, a GPU)."""
    REGISTRY[name] = Backend(factory, problem)


def registered(name: str) -> Backend:
    if name not in REGISTRY:
        raise UsageError(f"unknown backend {name!r}; choose from {', '.join(REGISTRY)}")
    return REGISTRY[name]


def problem_of(name: str) -> str | None:
    """Why the registered backend ``name`` cannot run here, or None."""
    return registered(name).problem()


def runner_for(
    name: str,
    path: Path,
    threads: int | None = None,
    model: Callable[[], object] | None = None,
    initializers: Mapping[str, OrtValue] | None = None,
) -> Runner:
    """The registered backend ``name``'s runner on ``path``, for a backend ``problem_of`` found
    present (each caller says absence its own way: ``load_runner``, bench's skip lines)."""
    threads = cap_threads(threads)  # more than the cores only oversubscribes (or crashes the runtime)
    load = Load(name, Path(path), threads or default_threads(), model, dict(initializers or {}))
    return registered(name).factory(load)


def backend_problem(backend: str) -> str | None:
    """Why the runtime's ``backend`` cannot run here, or None. Cheap: looks for the packages and providers."""
    if backend not in BACKENDS:
        raise UsageError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)} or auto")
    return problem_of(backend)


def load_runner(
    path: Path, backend: str, threads: int | None = None, initializers: Mapping[str, OrtValue] | None = None
) -> Runner:
    """The runtime's ``backend``'s runner on ``path`` (an ONNX file, or an engine for ``tensorrt``);
    ``initializers`` (shared OrtValues) only for ``ort-cpu``."""
    problem = backend_problem(backend)
    if problem:
        raise EnvironmentMissing(f"backend {backend}: {problem}")
    if initializers and backend != "ort-cpu":
        raise UsageError(f"shared initializers are for ort-cpu, not {backend}")
    return runner_for(backend, path, threads, initializers=initializers)


def default_threads() -> int:
    return available_cores()


@contextmanager
def refused_file(path: Path, runtime: str) -> Iterator[None]:
    """A file the runtime will not load (external data that points outside the model's folder, a
    graph it cannot parse) is bad input: one ``BundleError`` line naming the file and the
    runtime's first line of why (OpenVINO's own message runs to several lines)."""
    try:
        yield
    except FlexiExportError:
        raise
    except Exception as exc:  # each runtime has its own exception types (pybind11's, RuntimeError)
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        said = [line for line in lines if not _WHERE_IN_SOURCE.match(line)] or lines  # OpenVINO's source lines
        why = "; ".join(said)[:400]
        raise BundleError(f"{runtime} refuses {str(path)!r}: {type(exc).__name__}: {why}") from exc


_WHERE_IN_SOURCE = re.compile(r"(Exception from \S+:\d+:|Check '.*' failed at \S+:\d+:)$")


def file_dims(shape: list[Any]) -> list[int | None]:
    """A runtime's shape: its fixed sizes, None for each named or unknown one."""
    return [d if isinstance(d, int) and d >= 0 else None for d in shape]
