"""Which of a bundle's engines runs here: a variant's engines ranked by their sidecar against this
GPU and TensorRT, tried in that order."""

from __future__ import annotations

from collections.abc import Mapping

from exporter.bundle.door import Bundle
from exporter.bundle.engines import BuiltEngines
from exporter.bundle.records import VariantRecord
from exporter.core.errors import BundleError, EnvironmentMissing, Unavailable
from exporter.parity.runner import Runner
from exporter.tensorrt.gpu import gpu_identity
from exporter.tensorrt.library import LIBRARIES, TENSORRT_RTX, library_of
from exporter.tensorrt.runner import engine_runner
from exporter.tensorrt.sidecar import engine_fit, read_sidecar
from exporter.tensorrt.versions import import_tensorrt, tensorrt_problem


def bundle_engines(opened: Bundle, record: VariantRecord) -> list[tuple[str, str, Mapping[str, object]]]:
    """The variant's engines the bundle holds, as ``(path, sha256, info)``: every engine set the
    manifest records as built, and the engines ``build_<profile>.sh`` wrote for a profile the
    manifest names (read through their sidecar ``model_pN.engine.json``; the manifest has no
    record of those). Nothing is trusted yet: ``tensorrt_runner`` checks each file through
    ``Bundle.file`` before TensorRT reads it."""

    found: list[tuple[str, str, Mapping[str, object]]] = []
    for name, entry in opened.manifest.engines.items():
        rel = f"engines/{name}/model_{record.label}.engine"
        variant = entry.variants.get(record.label) if isinstance(entry, BuiltEngines) else None
        if entry.status == "built" and variant:
            info = variant.model_dump(mode="json", by_alias=True, exclude_unset=True)
            found.append((variant.engine, variant.engine_sha256, info))
        sidecar = read_sidecar(opened.root / (rel + ".json"))
        if isinstance(sidecar, dict) and sidecar["engine_sha256"] not in {sha for _, sha, _ in found}:
            found.append((rel, str(sidecar["engine_sha256"]), sidecar))
    return found


def tensorrt_here() -> None:
    """``Unavailable`` when engines cannot run here (no TensorRT >= 10 nor TensorRT-RTX, no usable GPU)."""

    problem = tensorrt_problem()
    if problem and tensorrt_problem(TENSORRT_RTX) is not None:
        raise Unavailable(problem)


def tensorrt_runner(opened: Bundle, record: VariantRecord) -> Runner:
    """A runner over the bundle's engine for this GPU and TensorRT: engines are ranked by their
    sidecar (same GPU model, then same compute capability, then hardware-compatible) and tried in
    that order, so one that TensorRT cannot load is passed over, not fatal. ``Unavailable`` says
    why each one was passed over."""

    tensorrt_here()
    gpu = gpu_identity()
    versions = {}  # library name -> its version here (TensorRT-RTX engines run only with TensorRT-RTX)
    for library in LIBRARIES.values():
        try:
            versions[library.name] = import_tensorrt(library).__version__
        except EnvironmentMissing:
            continue
    ranked, passed_over = [], []
    for rel, sha, info in bundle_engines(opened, record):
        library = library_of(info)
        if library.name not in versions:
            passed_over.append(f"{rel}: built with {library.name}, which is not installed here")
            continue
        rank, why = engine_fit(info, versions[library.name], gpu.compute_capability, gpu.name, library.name)
        if rank < 0:
            passed_over.append(f"{rel}: {why}")
        else:
            ranked.append((rank, rel, sha, library.key))
    for _, rel, sha, key in sorted(ranked):
        try:
            return engine_runner(opened.file(rel, sha), LIBRARIES[key])
        except (BundleError, EnvironmentMissing) as exc:
            passed_over.append(f"{rel}: {exc}")
    if not passed_over:
        raise Unavailable(f"{record.label}: the bundle has no TensorRT engines (build them with a GPU and TensorRT)")
    raise Unavailable(f"{record.label}: no engine in the bundle runs here ({'; '.join(passed_over)})")
