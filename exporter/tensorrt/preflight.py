"""The TensorRT preflight of every build: each ONNX file of the bundle (fp32, the fp16/int8 file,
shared-weights files with their external data) parsed by TensorRT's own ONNX parser and built
into a serialized engine on the CPU, with TensorRT-RTX (no GPU, no driver), for the shapes its
engines will take: the profile's min/opt/max batch (else ``DEFAULT_BATCH``, or the ONNX's fixed
batch) and, for a dynamic-resolution bundle, its min/opt/max image size.

Recorded on each file's record as ``tensorrt_preflight``: the library and version, ``ok``, the
stage it reached (parse, build, built), layers, seconds, engine bytes and sha256 (engines are
byte-identical across builds), the shapes, the compute capability built for and the parser's own
errors (node, op, code, message; a builder error has only the logger's message). Without
TensorRT-RTX: ``{"skipped": why}``.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from exporter.bundle.manifest import INPUT_NAME, PREFLIGHT
from exporter.bundle.records import OnnxEntry, Preflight, PreflightError, PreflightSkipped, ReducedEntry, VariantRecord
from exporter.core.progress import Reporter, stage
from exporter.tensorrt.library import TENSORRT_RTX, Library, compute_target, import_library, library_problem
from exporter.tensorrt.profile import BatchRange, Profile
from exporter.tensorrt.versions import EngineShapes, profile_library, trt_logger

KEY = PREFLIGHT
DEFAULT_BATCH = BatchRange(1, 1, 8)  # without a --profile: one image up to a small batch
MAX_ERRORS = 20  # a hostile graph could fail on every node: the record stays small
MAX_MESSAGE = 500


def preflight_shapes(record: VariantRecord, batch: BatchRange) -> EngineShapes:
    """The shapes the variant's engines take: ``batch`` (the ONNX's fixed batch, if it has one)
    at the variant's image size, or its smallest, own and largest size when it is dynamic."""
    fixed = record.static_batch
    n = (fixed,) * 3 if fixed else (batch.min, batch.opt, batch.max)
    low, high = record.img_range or (record.img_size, record.img_size)
    sizes = (low, record.img_size, high)
    lo, mid, hi = ((b, 3, *hw) for b, hw in zip(n, sizes))
    return EngineShapes(lo, mid, hi, static=bool(fixed) and record.img_range is None)


def _text(value: object) -> str:
    return str(value)[:MAX_MESSAGE]


def preflight_file(
    path: Path, shapes: EngineShapes, compute_capability: str | None = None, library: Library = TENSORRT_RTX
) -> Preflight:
    """Parse ``path`` and build its engine on the CPU for ``shapes`` (targeting
    ``compute_capability``; None: the library's portable default). Never raises for what the
    library refuses: that is the record's ``ok`` False and its ``errors``."""
    trt = import_library(library)
    logger = trt_logger(library)
    logger.messages.clear()  # type: ignore[attr-defined]
    record = Preflight(
        library=library.name,
        version=str(trt.__version__),
        ok=False,
        stage="parse",
        layers=0,
        parse_seconds=0.0,
        build_seconds=0.0,
        engine_bytes=0,
        engine_sha256=None,
        shapes={"min": list(shapes.min), "opt": list(shapes.opt), "max": list(shapes.max)},
        compute_capability=compute_capability or "portable",
        errors=[],
    )
    start = time.perf_counter()
    try:
        builder = trt.Builder(logger)
        network = builder.create_network(0)  # strongly typed whatever the flags
        parser = trt.OnnxParser(network, logger)
        parsed = parser.parse_from_file(str(path))  # external data: found beside the file
        record = record.but(parse_seconds=round(time.perf_counter() - start, 3), layers=int(network.num_layers))
        if not parsed:
            return record.but(errors=_parser_errors(parser) or _logged(logger) or [_error("unknown parser error")])
        record = record.but(stage="build")
        config = builder.create_builder_config()
        if compute_capability:
            config.num_compute_capabilities = 1
            member = getattr(trt.ComputeCapability, compute_target(library, compute_capability))
            if not config.set_compute_capability(member, 0):
                return record.but(errors=[_error(f"{library.name} refused compute capability {compute_capability}")])
        if not shapes.static:
            profile = builder.create_optimization_profile()
            dims = (trt.Dims(list(s)) for s in (shapes.min, shapes.opt, shapes.max))
            profile.set_shape(INPUT_NAME, *dims)
            config.add_optimization_profile(profile)
        built = time.perf_counter()
        serialized = builder.build_serialized_network(network, config)
        record = record.but(build_seconds=round(time.perf_counter() - built, 3))
        if serialized is None:
            return record.but(errors=_logged(logger) or [_error("the builder returned no engine")])
        engine = bytes(serialized)
    except ValidationError:  # a record we built wrong: our bug (exit 1), not the library's refusal
        raise
    except (RuntimeError, TypeError, ValueError) as exc:  # the bindings' own exceptions
        return record.but(errors=[_error(f"{type(exc).__name__}: {exc}")])
    return record.but(
        ok=True, stage="built", engine_bytes=len(engine), engine_sha256=hashlib.sha256(engine).hexdigest()
    )


def _error(message: str, node: str = "", op: str = "", code: str = "") -> PreflightError:
    return PreflightError(node=_text(node), op=_text(op), code=_text(code), message=_text(message))


def _parser_errors(parser: Any) -> list[PreflightError]:
    errors = []
    for i in range(min(int(parser.num_errors), MAX_ERRORS)):
        e = parser.get_error(i)
        code = getattr(e.code(), "name", str(e.code()))
        errors.append(_error(e.desc(), e.node_name(), e.node_operator(), code))
    return errors


def _logged(logger: Any) -> list[PreflightError]:
    """The logger's ERROR lines of this file (builder errors reach only the logger)."""
    found = [m for severity, m in logger.messages if severity in ("ERROR", "INTERNAL_ERROR")]
    return [_error(m) for m in found[:MAX_ERRORS]]


def _target(profile: Profile | None) -> str | None:
    """The compute capability a TensorRT-RTX profile builds for; None (portable) for the rest."""
    if profile is not None and profile_library(profile) is TENSORRT_RTX:
        return profile.compute_capability
    return None


def _same(old: object, shapes: EngineShapes, cc: str | None, version: str) -> bool:
    """Whether a resumed record's preflight was made for these shapes, target and version."""
    if not isinstance(old, Preflight) or not old.ok:
        return False
    want = {"min": list(shapes.min), "opt": list(shapes.opt), "max": list(shapes.max)}
    return old.shapes == want and old.compute_capability == (cc or "portable") and old.version == version


def preflight_records(
    folder: Path,
    records: list[VariantRecord],
    profile: Profile | None,
    reporter: Reporter,
    times: dict[str, float],
) -> list[VariantRecord]:
    """Every record with ``tensorrt_preflight`` on its ONNX file and its fp16/int8 file (files
    read from ``folder``); ``{"skipped": why}`` on each where TensorRT-RTX is not importable. A
    resumed record keeps a passed preflight made for the same shapes, target and version."""
    why = library_problem(TENSORRT_RTX)
    batch = profile.batch if profile is not None else DEFAULT_BATCH
    cc = _target(profile)
    version = "" if why else str(import_library(TENSORRT_RTX).__version__)
    done = []
    for record in records:
        shapes = preflight_shapes(record, batch)
        entries: dict[str, OnnxEntry | ReducedEntry | None] = {"onnx": record.onnx, "reduced": record.reduced}
        for field, entry in list(entries.items()):
            if not entry:
                continue
            result: Preflight | PreflightSkipped
            if why:
                result = PreflightSkipped(skipped=why)
            elif record.resumed and entry.tensorrt_preflight and _same(entry.tensorrt_preflight, shapes, cc, version):
                result = entry.tensorrt_preflight
            else:
                with stage(reporter, f"{record.label} {Path(entry.path).name}", "tensorrt preflight", times):
                    result = preflight_file(folder / entry.path, shapes, cc)
            entries[field] = entry.but(**{KEY: result})
        done.append(record.but(onnx=entries["onnx"], reduced=entries["reduced"]))
    return done
