"""The TensorRT engine stage's names in one place, for the modules and tests that import them
from here. The work lives in its own modules, along its jobs:

- ``library``: every difference between TensorRT and TensorRT-RTX (one frozen record each);
- ``versions``: version switches, typing mode, precision checks, shapes, what is missing here;
- ``script``: trtexec commands and ``engines/build_<profile>.sh``;
- ``builder``: our builder, up to the serialized engine;
- ``sidecar``: ``model_pN.engine.json`` and how an engine fits this library and GPU;
- ``runner``: a batch in, logits out, on a GPU.

``import tensorrt`` (or ``tensorrt_rtx_bindings``) happens only inside the functions that need it.
"""

from __future__ import annotations

from exporter.tensorrt.builder import (
    _attach_timing_cache,
    _configure,
    _keep_layernorm_fp32,
    build_engine,
    build_errors,
    network_flags,
    parser_errors,
)
from exporter.tensorrt.library import LIBRARIES, TENSORRT, TENSORRT_RTX, Library, import_library, library_of
from exporter.tensorrt.runner import EngineRunner, engine_runner, profile_batch_range
from exporter.tensorrt.script import build_script, comment, trtexec_command, version_tests
from exporter.tensorrt.sidecar import SIDECAR_KEYS, EngineInfo, engine_fit, read_sidecar
from exporter.tensorrt.versions import (
    HARDWARE_LEVELS,
    MIN_TENSORRT,
    QUANTISED,
    REDUCED,
    SCRIPT_ERAS,
    STRONG_BY_DEFAULT_FROM,
    STRONG_TYPING_FROM,
    EngineShapes,
    check_precision,
    engine_problem,
    engine_shapes,
    hardware_level_name,
    import_tensorrt,
    needs_precision_onnx,
    onnx_kinds,
    precision_ready,
    profile_library,
    profile_mismatch,
    tensorrt_problem,
    timing_cache_name,
    too_old,
    trt_logger,
    typing_mode,
    version_pair,
    weak_precision_flags,
)

__all__ = [
    "HARDWARE_LEVELS",
    "LIBRARIES",
    "MIN_TENSORRT",
    "QUANTISED",
    "REDUCED",
    "SCRIPT_ERAS",
    "SIDECAR_KEYS",
    "STRONG_BY_DEFAULT_FROM",
    "STRONG_TYPING_FROM",
    "TENSORRT",
    "TENSORRT_RTX",
    "EngineInfo",
    "EngineRunner",
    "EngineShapes",
    "Library",
    "_attach_timing_cache",
    "_configure",
    "_keep_layernorm_fp32",
    "build_engine",
    "build_errors",
    "build_script",
    "check_precision",
    "comment",
    "engine_fit",
    "engine_problem",
    "engine_runner",
    "engine_shapes",
    "hardware_level_name",
    "import_library",
    "import_tensorrt",
    "library_of",
    "needs_precision_onnx",
    "network_flags",
    "onnx_kinds",
    "parser_errors",
    "precision_ready",
    "profile_batch_range",
    "profile_library",
    "profile_mismatch",
    "read_sidecar",
    "tensorrt_problem",
    "timing_cache_name",
    "too_old",
    "trt_logger",
    "trtexec_command",
    "typing_mode",
    "version_pair",
    "version_tests",
    "weak_precision_flags",
]
