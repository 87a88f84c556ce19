"""``flexiexport triton``: a Triton Inference Server model repository, one model per variant.

Layout per variant: ``<repo>/<name>_pN/config.pbtxt`` and ``1/model.onnx`` (plus the shared
external-data file when the bundle has one) or ``1/model.plan`` (TensorRT; one plan per compute
capability with ``cc_model_filenames`` when engines for several GPUs exist). Each config is parsed
with Triton's own protobuf schema (``model_config_pb2`` from the ``tritonclient`` package) when
that package is installed.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
from pathlib import Path
from types import ModuleType
from typing import Any

from exporter.bundle import Bundle, write_repository_marker
from exporter.errors import BundleError, UsageError
from exporter.manifest import VariantRecord, write_atomic
from exporter.names import check_name
from exporter.precision import Precision

BACKENDS = ("onnx", "tensorrt")
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
    (inp,), (out,) = record.onnx["inputs"], record.onnx["outputs"]
    static = record.static_batch
    in_dims, out_dims = [int(d) for d in inp["shape"][1:]], [int(d) for d in out["shape"][1:]]
    if static is not None:  # a static-batch model: Triton sees the batch as part of the dims
        max_batch, in_dims, out_dims = 0, [static, *in_dims], [static, *out_dims]
    lines = [
        f"name: {pbtxt_string(name, 'Triton model name')}",
        f"platform: {pbtxt_string(platform, 'Triton platform')}",
        f"max_batch_size: {max_batch}",
        f"input [{{ name: {pbtxt_string(inp['name'], f'{record.label} input name')} data_type: TYPE_FP32 "
        f"dims: {in_dims} }}]",
        f"output [{{ name: {pbtxt_string(out['name'], f'{record.label} output name')} data_type: TYPE_FP32 "
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
        variant = entry.get("variants", {}).get(label)
        if entry.get("status") == "built" and variant and entry.get("compute_capability"):
            found[entry["compute_capability"]] = opened.file(variant["engine"], variant["engine_sha256"])
    return found


def onnx_for(record: VariantRecord, precision: Precision) -> dict[str, Any]:
    """The variant's ONNX entry of ``precision`` (fp32, or the bundle's fp16/int8 file), refusing
    one that is missing or failed its parity check: a repository serves only checked models."""
    if precision is Precision.FP32:
        entry, failures = record.onnx, record.parity.get("failures", [])
    elif record.reduced.get("precision") == precision:
        entry, failures = record.reduced, record.reduced["parity"].get("failures", [])
    else:
        raise BundleError(
            f"the bundle has no {precision} ONNX for {record.label}: build it with --precision {precision}, "
            "or pick --precision fp32"
        )
    passed = record.parity.get("passed") if precision == "fp32" else record.reduced.get("status") == "passed"
    if failures or record.parity.get("error") or not passed:
        why = "; ".join(failures) or record.parity.get("error") or "not recorded as passed"
        raise BundleError(f"{record.label}'s {precision} ONNX failed its parity check ({why}): not served")
    return entry


def write_repository(
    opened: Bundle, repo: Path, backend: str, max_batch: int, precision: Precision = Precision.FP32
) -> list[str]:
    """Fill ``repo`` (an empty folder) with checked copies of the bundle's files; returns the
    model names written. A marker file lists every file, so ``--force`` can tell our
    repository from a folder that is not."""
    if backend not in BACKENDS:
        raise UsageError(f"--backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
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
            if record.onnx.get("external_data"):
                shared = manifest.shared_weights
                shutil.copyfile(opened.file(shared["path"], shared["sha256"]), version / Path(shared["path"]).name)
            text = config_text(name, record, "onnxruntime_onnx", max_batch)
        else:
            engines = _engines_by_cc(opened, record.label)
            if not engines:
                raise BundleError(
                    f"the bundle has no built TensorRT engine for {record.label}; build them on the "
                    "target with 'flexiexport engine BUNDLE --profile P', or use --backend onnx"
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
    write_repository_marker(repo, opened.root)
    return names
