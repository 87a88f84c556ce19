"""Source parity: our model at the checkpoint's own patch and image size against the source model
as its own framework builds it, not as we read it.

Every other check compares the ONNX with *our* PyTorch rebuild; if the rebuild misreads the
checkpoint (image size, heads, eps, activation, token layout), they all pass. Here the reference
is built without our reading:

- a transformers folder: transformers' own class (``config.json``'s ``architectures``) with
  ``from_pretrained(folder)``, offline; logits for classifiers, for feature models the CLS token
  of ``last_hidden_state`` (after the final layernorm);
- a timm checkpoint with a config (or a ``--model`` name, or hub weights): timm's
  ``create_model(architecture, **model_args)`` and a strict ``load_state_dict``;
- weights alone (architecture inferred from tensor shapes): no independent source exists; the
  verdict says "inferred, not independently checked" and is not a failure.

The geometry is the checkpoint's own: its kernel size, and the image size the config states (or,
for timm without one, the one its stored position grid covers), where the weights load with no
resampling. The candidate is that variant's ONNX when the bundle has it, else our PyTorch rebuild
at that size (said so). Judged on the build's parity inputs with the fp32 tolerance.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from typing_extensions import NotRequired, TypedDict

from exporter.build.runners import TorchRunner, ort_runner, torch_runner
from exporter.build.variant import VariantSpec, make_variant
from exporter.bundle.records import SourceParity, ToleranceRecord, VariantParity, VariantRecord
from exporter.bundle.report import INFERRED
from exporter.core.errors import FlexiExportError
from exporter.parity.compare import check_parity
from exporter.parity.runner import Runner
from exporter.parity.tolerance import Tolerance
from exporter.source import hf, hf_layout


@dataclass(frozen=True)
class Reference:
    """The source framework's own model, ready to run, and what it is."""

    what: str
    patch_size: tuple[int, int]
    img_size: tuple[int, int]
    runner: Runner | None  # None: nothing independent to run (``reason`` says why)
    features: bool = False
    reason: str = ""
    status: str = ""  # for a reference that cannot run: "inferred", "failed" or "skipped"


class _Verdict(TypedDict):
    """What every ``source_parity`` record of one check says: the reference, its geometry, the
    tolerance and, once chosen, the candidate it was compared with."""

    reference: str
    patch_size: tuple[int, ...]
    img_size: tuple[int, ...]
    tolerance: ToleranceRecord
    variant: NotRequired[str | None]  # None: no such variant in the bundle (our rebuild ran)
    candidate: NotRequired[str]


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def source_config(weights: Path | None) -> dict[str, Any]:
    """The config beside the weights, read again as the source framework would (not our reading)."""
    if weights is None:
        return {}
    for candidate in (weights.with_suffix(".json"), weights.parent / "config.json"):
        if candidate.is_file():
            return _read_json(candidate)
    return {}


def transformers_reference(folder: Path, config: Mapping[str, Any]) -> Reference:
    """transformers' own class from the folder (``from_pretrained``, local files only)."""

    lay = hf_layout.layout({**config, "_path": str(folder / "config.json")})
    patch, img = hf._size(config, "patch_size", 16), hf.image_size(config)
    what = f"transformers {lay.architecture}.from_pretrained (offline), {lay.output}"
    try:
        import torch  # noqa: F401 - the reference runs in it (TorchRunner)
        import transformers
    except ImportError:
        return Reference(
            what, patch, img, None, reason="transformers is not installed (pip install transformers)", status="skipped"
        )
    from transformers.utils import logging as hf_logging

    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # "Loading weights" bars on stderr would break --quiet's one line
    try:
        model = getattr(transformers, lay.architecture).from_pretrained(str(folder), local_files_only=True)
    except Exception as exc:  # transformers raises many kinds; the reason is recorded, never swallowed
        line = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        return Reference(
            what, patch, img, None, reason=f"transformers could not load the folder: {line}", status="failed"
        )
    finally:
        if bar:
            hf_logging.enable_progress_bar()
    model = model.float().eval()

    def forward(pixel_values: Any) -> Any:
        out = model(pixel_values=pixel_values)
        if lay.model_type == "clip_vision_model":  # its last_hidden_state is before post_layernorm
            return out.pooler_output
        return out.logits if lay.classifier else out.last_hidden_state[:, 0]

    return Reference(what, patch, img, TorchRunner(forward), features=not lay.classifier)


def timm_reference(source: Any, config: Mapping[str, Any]) -> Reference:
    """timm's ``create_model(architecture, **model_args)`` and a strict load of the checkpoint's
    tensors (unwrapped from their container, nothing renamed or resampled)."""
    import timm
    import torch
    from timm.models.vision_transformer import VisionTransformer

    args = dict(config.get("model_args") or {})
    arch = config.get("architecture") or source.model_name
    patch = tuple(source.patch_size)
    stated = args.get("img_size")
    if stated is not None:
        img = (stated, stated) if isinstance(stated, int) else tuple(stated)
    else:  # the size the stored position grid covers at the stored kernel
        img = (source.pos_grid[0] * patch[0], source.pos_grid[1] * patch[1])
    args.setdefault("patch_size", patch)
    args["img_size"] = img
    built = f"timm {arch}" if arch else "timm VisionTransformer"
    what = f"{built}(**model_args from {'the config' if config else '--model'}), strict load"
    try:
        with torch.device("cpu"):
            model = timm.create_model(arch, pretrained=False, **args) if arch else VisionTransformer(**args)
        if source.origin.file_format == "npz":
            model.load_pretrained(str(source.origin.path))  # type: ignore[operator]
        else:
            model.load_state_dict(dict(source.state_dict), strict=True)
    except Exception as exc:  # timm's own errors (missing keys, shapes, bad arguments) are the finding
        line = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        return Reference(what, patch, img, None, reason=f"{built} does not load the weights: {line}", status="failed")  # type: ignore[arg-type]
    model = model.float().eval()
    return Reference(what, patch, img, TorchRunner(model), features=int(getattr(model, "num_classes", 0)) == 0)  # type: ignore[arg-type]


def independent_reference(source: Any) -> Reference:
    """The source framework's model for ``source`` (a ``SourceModel``), or why there is none."""

    origin = source.origin
    config = source_config(origin.path) if origin.kind == "file" else {}
    if hf_layout.is_transformers_config(config):
        return transformers_reference(Path(origin.path).parent, config)
    if config.get("architecture") or config.get("model_args") or source.model_name:
        return timm_reference(source, config)
    patch = tuple(source.patch_size)
    img = (source.pos_grid[0] * patch[0], source.pos_grid[1] * patch[1])
    return Reference(
        "none: weights only, architecture inferred from tensor shapes",
        patch,  # type: ignore[arg-type]
        img,  # type: ignore[arg-type]
        None,
        reason=INFERRED,
        status="inferred",
    )


def check_source(
    source: Any,
    records: Sequence[VariantRecord],
    specs: Sequence[Any],
    plan: Any,
    tmp: Path,
    tolerance: Tolerance,
    batch: int,
    threads: int | None = None,
) -> SourceParity:
    """The manifest's ``source_parity``: the reference against the native variant's ONNX (when
    the bundle has it) or our PyTorch rebuild at that geometry."""

    ref = independent_reference(source)
    entry: _Verdict = {
        "reference": ref.what,
        "patch_size": tuple(ref.patch_size),
        "img_size": tuple(ref.img_size),
        "tolerance": ToleranceRecord.of(tolerance),
    }
    if ref.runner is None:
        return SourceParity.model_validate({"status": ref.status, "reason": ref.reason, **entry})
    native = next(
        (
            (r, s)
            for r, s in zip(records, specs)
            if tuple(r.patch_size) == ref.patch_size and tuple(r.img_size) == ref.img_size and not r.dynamic
        ),
        None,
    )
    if native is not None:
        record, spec = native
        candidate: Runner = ort_runner(tmp / record.onnx.path, threads)
        entry |= {"variant": record.label, "candidate": f"{record.onnx.path} (onnxruntime CPU)"}
    else:
        base = specs[0]
        spec = VariantSpec(ref.patch_size, ref.img_size, base.patch_resize, base.pos_resize)
        try:
            candidate = torch_runner(make_variant(source, spec).model)
        except FlexiExportError as exc:
            reason = f"our rebuild at the source's geometry: {exc}"
            return SourceParity.model_validate({"status": "failed", "reason": reason, **entry})
        entry |= {
            "variant": None,
            "candidate": f"our PyTorch rebuild at patch {spec.label[1:]}, "
            f"{ref.img_size[0]}x{ref.img_size[1]} (no such variant in this bundle)",
        }
    planned = plan.parity(spec)
    inputs = planned.arrays()
    tol = replace(tolerance, min_top1=0.0) if ref.features else tolerance  # an embedding has no top-1
    try:
        cmp = check_parity(ref.runner, candidate, inputs, batch, tol)
    except FlexiExportError as exc:
        return SourceParity.model_validate({"status": "failed", "reason": str(exc), **entry})
    except Exception as exc:  # the reference itself failed to run (a wrong input size, say): a finding
        line = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        reason = f"the reference failed on the parity inputs: {line}"
        return SourceParity.model_validate({"status": "failed", "reason": reason, **entry})
    return SourceParity.model_validate(
        {
            "status": "passed" if cmp else "failed",
            "output": "embeddings (top-1 not judged)" if ref.features else "logits",
            "inputs": planned.what,
            "parity": VariantParity.of(cmp),
            **entry,
        }
    )
