"""``flexiexport triton``: a Triton Inference Server model repository, one model per variant.

Layout per variant: ``<repo>/<name>_pN/config.pbtxt`` and ``1/model.onnx`` (plus the shared
external-data file when the bundle has one) or ``1/model.plan`` (TensorRT; one plan per compute
capability with ``cc_model_filenames`` when engines for several GPUs exist). Each config is parsed
with Triton's own protobuf schema (``model_config_pb2`` from the ``tritonclient`` package) when
that package is installed.

``--backend python``: every variant is a Python-backend model that runs the bundle through
``exporter.runtime`` (``exporter/deploy/triton_models.py``), and an entry model, ``flexivit``,
picks the variant per request by latency budget. Each model's version folder holds
``model.py`` and ``bundle/``, a copy of the files serving needs (manifest, the served ONNX or
engines, bench.json/eval.json/latency.json), hard-linked between models where the file system allows.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
from pathlib import Path
from types import ModuleType
from typing import Any

from exporter import __version__
from exporter.bundle.door import Bundle
from exporter.bundle.engines import BuiltEngines
from exporter.bundle.manifest import MANIFEST
from exporter.bundle.records import OnnxEntry, ReducedEntry, VariantRecord
from exporter.bundle.write import write_repository_marker
from exporter.core.errors import BundleError, UsageError, param
from exporter.core.files import write_atomic
from exporter.core.names import check_name
from exporter.core.precision import Precision

BACKENDS = ("onnx", "tensorrt", "python")
ENTRY_MODEL = "flexivit"
MODEL_PY = '''"""Triton Python-backend model written by flexiexport {version}: {what}.

Runs ./bundle (a copy of the bundle's serving files, each sha256 checked when opened) through
exporter.runtime; the code is exporter.deploy.triton_models.{cls}.
"""

import os
import sys

# The Python backend's stub embeds an isolated interpreter, which ignores PYTHONPATH: honour it,
# so that the server's environment decides which flexiexport is imported, as python itself would.
sys.path[:0] = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]

from exporter.deploy.triton_models import {cls} as TritonPythonModel  # noqa: E402
'''
# The measurements a serving copy reads: latencies (bench.json, latency.json) and accuracy
# (eval.json), so that the entry model ranks variants as ``predict`` does on the bundle. Never
# needed: the build's report and PyTorch reference outputs.
SERVING_ARTEFACTS = ("bench.json", "eval.json", "latency.json")
# Refused inside a config's quoted strings: a line break or control character is never a real tensor name.
PBTXT_REFUSED = re.compile(r"[\x00-\x1f\x7f-\x9f]")
COMPUTE_CAPABILITY = re.compile(r"\d{1,2}\.\d{1,2}")


def model_name(bundle_name: str, label: str) -> str:
    """The Triton model name (and its folder): ``<bundle>_<label>`` in letters, digits and '_',
    always a safe name; a long bundle name is cut so that the label stays."""
    bundle, variant = (re.sub(r"[^A-Za-z0-9_]", "_", part).strip("_") for part in (bundle_name, label))
    text = f"{bundle[: max(0, 127 - len(variant))]}_{variant or 'variant'}".strip("_")
    return check_name(text[:128], "Triton model name")


def pbtxt_string(text: Any, what: str) -> str:
    """``text`` as a quoted protobuf text-format string; a non-string or control characters are refused."""
    if not isinstance(text, str):
        raise BundleError(f"{what} {text!r} is not a string: not written into a Triton config")
    if PBTXT_REFUSED.search(text):
        raise BundleError(f"{what} {text!r} has a control character: not written into a Triton config")
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def config_text(
    name: str, record: VariantRecord, platform: str, max_batch: int, cc_files: dict[str, str] | None = None
) -> str:
    """``config.pbtxt`` for one variant: names, dims and types from the manifest."""
    (inp,), (out,) = record.onnx.inputs, record.onnx.outputs
    static = record.static_batch
    # a named height/width (--img-size dynamic) is a variable dim, -1 in Triton's config
    in_dims = [d if isinstance(d, int) else -1 for d in inp.shape[1:]]
    out_dims = [int(d) for d in out.shape[1:]]
    if static is not None:  # a static-batch model: Triton sees the batch as part of the dims
        max_batch, in_dims, out_dims = 0, [static, *in_dims], [static, *out_dims]
    lines = [
        f"name: {pbtxt_string(name, 'Triton model name')}",
        f"platform: {pbtxt_string(platform, 'Triton platform')}",
        f"max_batch_size: {max_batch}",
        f"input [{{ name: {pbtxt_string(inp.name, f'{record.label} input name')} data_type: TYPE_FP32 "
        f"dims: {in_dims} }}]",
        f"output [{{ name: {pbtxt_string(out.name, f'{record.label} output name')} data_type: TYPE_FP32 "
        f"dims: {out_dims} }}]",
    ]
    if max_batch > 0:
        lines.append("dynamic_batching { max_queue_delay_microseconds: 100 }")
    lines.append(
        "instance_group [{ kind: KIND_GPU count: 1 }]"
        if platform == "tensorrt_plan"
        else "instance_group [{ kind: KIND_AUTO count: 1 }]"
    )
    for cc, filename in sorted((cc_files or {}).items()):
        key, value = pbtxt_string(cc, "compute capability"), pbtxt_string(filename, "plan file")
        lines.append(f"cc_model_filenames {{ key: {key} value: {value} }}")
    return "\n".join(lines) + "\n"


def triton_schema() -> ModuleType | None:
    """Triton's ``model_config_pb2``, loaded without the gRPC client it sits beside; None if absent."""
    spec = importlib.util.find_spec("tritonclient")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "grpc" / "model_config_pb2.py"
    module_spec = importlib.util.spec_from_file_location("flexiexport_triton_model_config_pb2", path)
    if module_spec is None or module_spec.loader is None or not path.is_file():
        return None
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def check_config(text: str, schema: ModuleType) -> Any:
    """Parse ``text`` as a Triton ModelConfig; unknown fields or wrong types raise ``UsageError``."""
    from google.protobuf import text_format

    try:
        return text_format.Parse(text, schema.ModelConfig())
    except text_format.ParseError as exc:
        raise UsageError(f"generated Triton config does not parse with Triton's schema: {exc}") from exc


def _engines_by_cc(opened: Bundle, label: str) -> dict[str, Path]:
    """The variant's built engines by compute capability, each checked (inside, sha256)."""
    found = {}
    for entry in opened.manifest.engines.values():
        variant = entry.variants.get(label) if isinstance(entry, BuiltEngines) else None
        if entry.status == "built" and variant and entry.compute_capability:
            found[entry.compute_capability] = opened.file(variant.engine, variant.engine_sha256)
    return found


def onnx_for(record: VariantRecord, precision: Precision) -> OnnxEntry | ReducedEntry:
    """The variant's ONNX entry of ``precision`` (fp32, or the bundle's fp16/int8 file), refusing
    one that is missing or failed its parity check: a repository serves only checked models."""
    entry: OnnxEntry | ReducedEntry
    if precision == Precision.FP32:
        entry, failures, passed = record.onnx, record.parity.failures, record.parity.passed
    elif record.reduced and record.reduced.precision == precision:
        entry, failures = record.reduced, record.reduced.parity.failures
        passed = record.reduced.status == "passed"
    else:
        raise BundleError(
            f"the bundle has no {precision} ONNX for {record.label}: build it with {param('precision')} {precision}, "
            f"or pick {param('precision')} fp32"
        )
    if failures or record.parity.error or not passed:
        why = "; ".join(failures) or record.parity.error or "not recorded as passed"
        raise BundleError(f"{record.label}'s {precision} ONNX failed its parity check ({why}): not served")
    return entry


def write_repository(
    opened: Bundle,
    repo: Path,
    backend: str,
    max_batch: int,
    precision: Precision = Precision.FP32,
    runtime_backend: str = "auto",
    dynamic_batching: bool = True,
) -> list[str]:
    """Fill ``repo`` (an empty folder) with checked copies of the bundle's files; returns the
    model names written. A marker file lists every file, so ``--force`` can tell our
    repository from a folder that is not. ``runtime_backend`` and ``dynamic_batching`` are for
    ``backend="python"``."""
    if backend not in BACKENDS:
        raise UsageError(f"{param('backend')} must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "python":
        names = write_python_models(opened, repo, max_batch, precision, runtime_backend, dynamic_batching)
    else:
        names = write_native_models(opened, repo, backend, max_batch, precision)
    write_repository_marker(repo, opened.root)
    return names


def write_native_models(opened: Bundle, repo: Path, backend: str, max_batch: int, precision: Precision) -> list[str]:
    """One ONNX Runtime or TensorRT model per variant."""
    manifest = opened.manifest
    schema = triton_schema()
    names = []
    for record in manifest.variants:
        name = model_name(manifest.name, record.label)
        if name in names:
            raise BundleError(f"two variants would both be Triton model {name!r}: variant labels must differ")
        version = repo / name / "1"
        version.mkdir(parents=True)
        if backend == "onnx":
            onnx_for(record, precision)  # refuses a file that failed its parity check
            shutil.copyfile(opened.onnx(record, precision), version / "model.onnx")
            if record.onnx.external_data and manifest.shared_weights:
                shared = manifest.shared_weights
                shutil.copyfile(opened.file(shared.path, shared.sha256), version / Path(shared.path).name)
            text = config_text(name, record, "onnxruntime_onnx", max_batch)
        else:
            engines = _engines_by_cc(opened, record.label)
            if not engines:
                raise BundleError(
                    f"the bundle has no built TensorRT engine for {record.label}; build them on the "
                    f"target with 'flexiexport engine BUNDLE --profile P', or use {param('backend')} onnx"
                )
            cc_files = {cc: f"model_sm{cc.replace('.', '')}.plan" for cc in engines}
            for cc, path in engines.items():
                shutil.copyfile(path, version / cc_files[cc])
            if len(engines) == 1:
                (version / next(iter(cc_files.values()))).rename(version / "model.plan")
                cc_files = {}
            text = config_text(name, record, "tensorrt_plan", max_batch, cc_files)
        if schema is not None:
            check_config(text, schema)
        write_atomic(repo / name / "config.pbtxt", text)
        names.append(name)
    return names


# --- the Python backend: exporter.runtime inside Triton, the variant chosen per request ---------


def check_runtime_backend(runtime_backend: str) -> None:
    from exporter.runtime.backends.base import BACKENDS as RUNTIME_BACKENDS

    if runtime_backend != "auto" and runtime_backend not in RUNTIME_BACKENDS:
        raise UsageError(
            f"the runtime backend must be auto or one of {', '.join(RUNTIME_BACKENDS)}, got {runtime_backend!r}"
        )


def serving_files(opened: Bundle, precision: Precision, runtime_backend: str) -> list[tuple[str, Path]]:
    """(path in the bundle, checked file) of every file a served copy needs: each variant's ONNX of
    ``precision`` (refused when it failed its parity check), shared weights, built engines."""
    manifest = opened.manifest
    files: list[tuple[str, Path]] = []
    for record in manifest.variants:
        if runtime_backend == "tensorrt":
            if not _engines_by_cc(opened, record.label):
                raise BundleError(
                    f"the bundle has no built TensorRT engine for {record.label}; build them on the target "
                    "with 'flexiexport engine BUNDLE --profile P', or pick another runtime backend"
                )
            continue
        entry = onnx_for(record, precision)
        files.append((entry.path, opened.onnx(record, precision)))
    if manifest.shared_weights and runtime_backend != "tensorrt":
        shared = manifest.shared_weights
        files.append((shared.path, opened.file(shared.path, shared.sha256)))
    for engine_set in manifest.engines.values():
        if (
            isinstance(engine_set, BuiltEngines)
            and engine_set.status == "built"
            and runtime_backend in ("auto", "tensorrt")
        ):
            for variant in engine_set.variants.values():
                files.append((variant.engine, opened.file(variant.engine, variant.engine_sha256)))
    return list(dict.fromkeys(files))


def copy_serving_files(opened: Bundle, files: list[tuple[str, Path]], dest: Path, linked: Path | None) -> None:
    """The manifest, ``files`` and ``SERVING_ARTEFACTS`` into ``dest``; hard links to the same
    files under ``linked`` (an earlier copy) where the file system allows, else copies."""
    wanted = [(MANIFEST, opened.root / MANIFEST), *files]
    wanted += [(name, opened.artefact(name)) for name in SERVING_ARTEFACTS if opened.artefact(name).is_file()]
    for rel, source in wanted:
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if linked is not None:
            try:
                os.link(linked / rel, target)
                continue
            except OSError:
                pass
        shutil.copyfile(source, target)


def _tensor(name: str, dtype: str, dims: list[int], what: str, optional: bool = False) -> str:
    flag = " optional: true" if optional else ""
    return f"{{ name: {pbtxt_string(name, what)} data_type: {dtype} dims: {dims}{flag} }}"


def python_config(
    name: str, inputs: list[str], outputs: list[str], max_batch: int, dynamic: bool, parameters: dict[str, str]
) -> str:
    """``config.pbtxt`` of a Python-backend model on CPU instances (the runtime picks its own device)."""
    lines = [
        f"name: {pbtxt_string(name, 'Triton model name')}",
        'backend: "python"',
        f"max_batch_size: {max_batch}",
        f"input [{', '.join(inputs)}]",
        f"output [{', '.join(outputs)}]",
    ]
    if dynamic:
        lines.append("dynamic_batching { max_queue_delay_microseconds: 100 }")
    lines.append("instance_group [{ kind: KIND_CPU count: 1 }]")
    for key, value in parameters.items():
        lines.append(
            f"parameters {{ key: {pbtxt_string(key, 'parameter')} value: {{ string_value: "
            f"{pbtxt_string(value, f'parameter {key}')} }} }}"
        )
    return "\n".join(lines) + "\n"


def write_python_models(
    opened: Bundle, repo: Path, max_batch: int, precision: Precision, runtime_backend: str, dynamic_batching: bool
) -> list[str]:
    """A Python-backend model per variant and the ``flexivit`` entry model."""
    check_runtime_backend(runtime_backend)
    manifest = opened.manifest
    names = {record.label: model_name(manifest.name, record.label) for record in manifest.variants}
    if len(set(names.values()) | {ENTRY_MODEL}) != len(names) + 1:
        raise BundleError(f"variant labels must give distinct Triton model names other than {ENTRY_MODEL!r}")
    files = serving_files(opened, precision, runtime_backend)
    common = {"runtime_backend": runtime_backend, "precision": precision, "flexiexport_version": __version__}
    texts, first = {}, None
    for record in manifest.variants:
        name = names[record.label]
        (inp,), (out,) = record.onnx.inputs, record.onnx.outputs
        inputs = [_tensor(inp.name, "TYPE_FP32", [3, *record.img_size], f"{record.label} input name")]
        outputs = [_tensor(out.name, "TYPE_FP32", [int(d) for d in out.shape[1:]], f"{record.label} output name")]
        params = {**common, "variant": record.label}
        texts[name] = (
            python_config(name, inputs, outputs, max_batch, dynamic_batching, params),
            "VariantModel",
            f"variant {record.label} of {manifest.name}",
        )
    texts[ENTRY_MODEL] = (
        entry_config(opened, names, max_batch, dynamic_batching, common),
        "EntryModel",
        f"the entry to {manifest.name}, the variant chosen per request",
    )
    schema = triton_schema()
    for name, (text, cls, what) in texts.items():
        version = repo / name / "1"
        copy_serving_files(opened, files, version / "bundle", first)
        first = first or version / "bundle"
        write_atomic(version / "model.py", MODEL_PY.format(version=__version__, what=what, cls=cls))
        if schema is not None:
            check_config(text, schema)
        write_atomic(repo / name / "config.pbtxt", text)
    return list(texts)


def entry_config(
    opened: Bundle, names: dict[str, str], max_batch: int, dynamic_batching: bool, common: dict[str, str]
) -> str:
    """The entry: uint8 ``images`` or float32 pixel values, ``logits`` and the ``variant`` that answered."""
    from exporter.deploy.triton_models import IMAGES, VARIANT

    record = opened.manifest.variants[0]
    (inp,), (out,) = record.onnx.inputs, record.onnx.outputs
    if inp.name == IMAGES or out.name == VARIANT:
        raise BundleError(f"the model's tensors may not be named {IMAGES!r} or {VARIANT!r}: the entry model uses them")
    sizes = {tuple(v.img_size) for v in opened.manifest.variants}
    pixel_dims = [3, *next(iter(sizes))] if len(sizes) == 1 else [3, -1, -1]
    inputs = [
        _tensor(IMAGES, "TYPE_UINT8", [-1, -1, 3], "input name", optional=True),
        _tensor(inp.name, "TYPE_FP32", pixel_dims, "input name", optional=True),
    ]
    outputs = [
        _tensor(out.name, "TYPE_FP32", [int(d) for d in out.shape[1:]], "output name"),
        _tensor(VARIANT, "TYPE_STRING", [1], "output name"),
    ]
    params = {**common, "variants": json.dumps(names)}
    return python_config(ENTRY_MODEL, inputs, outputs, max_batch, dynamic_batching, params)
