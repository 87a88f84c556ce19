"""The seed project's converter: PI-resize one kernel inside a checkpoint file, keep the rest.

``convert_patch_embed.py -i vit-16.pt -o vit-20.pt -n patch_embed.proj.weight -ps 20`` keeps
every other key and the container shape (top-level state dict, ``{"state_dict": ...}``,
``{"model": ...}``...). Unlike the seed, it can also resample the position embedding for an
image size, works on fp16/bf16 weights and on ``.safetensors``, and writes atomically.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from exporter.build.resize import pi_resize_patch_embed, resample_pos_embed
from exporter.bundle.limits import Workload, check_memory
from exporter.core.errors import CheckpointError, UsageError, param
from exporter.core.files import current_umask, full_disk_as_usage_error
from exporter.core.sizes import Size2, format_size, grid_for
from exporter.source.model import check_float
from exporter.source.readers import CONTAINERS, check_tensor_storage, read_safetensors, read_torch_file
from exporter.source.resampling import TIMM_PATCH_RESIZE, TIMM_POS_RESIZE, ResizeMethod

RESIZE_ADVICE = f"pass one of them as {param('img_size')}"


@dataclass(frozen=True)
class ConvertResult:
    output: Path
    key: str
    old_shape: tuple[int, ...]
    new_shape: tuple[int, ...]
    pos_key: str | None = None
    old_pos_shape: tuple[int, ...] | None = None
    new_pos_shape: tuple[int, ...] | None = None


def _find_holder(obj: Any, key: str) -> MutableMapping[str, Any]:
    """The (possibly nested) mapping that holds ``key``."""
    if isinstance(obj, MutableMapping) and key in obj:
        return obj
    if isinstance(obj, MutableMapping):
        for name in CONTAINERS:
            inner = obj.get(name)
            if isinstance(inner, MutableMapping) and key in inner:
                return inner
    candidates = []
    holder = obj.get("state_dict", obj) if isinstance(obj, MutableMapping) else {}
    if isinstance(holder, MutableMapping):
        candidates = [k for k, v in holder.items() if isinstance(v, torch.Tensor) and v.dim() == 4]
    hint = f"; 4-D tensors in it: {', '.join(candidates[:5])}" if candidates else ""
    raise CheckpointError(f"key {key!r} not found in the checkpoint{hint}")


def pos_prefix_tokens(holder: MutableMapping[str, Any], pos_key: str) -> int:
    """Leading non-grid slots of ``pos_key``, from the keys beside it (class/register tokens)."""
    stem = pos_key[: -len("pos_embed")] if pos_key.endswith("pos_embed") else ""
    prefix = int(f"{stem}cls_token" in holder)
    reg = holder.get(f"{stem}reg_token")
    prefix += int(reg.shape[1]) if isinstance(reg, torch.Tensor) else 0
    n = int(holder[pos_key].shape[1])
    if prefix and math.isqrt(n) ** 2 == n and math.isqrt(n - prefix) ** 2 != n - prefix:
        return 0  # no_embed_class (FlexiViT): the prefix tokens have no position slot
    return prefix


def check_paths(src: Path, dst: Path, force: bool) -> None:
    """Refuse a missing input, an output that is a folder or the input itself (under any
    spelling: ``..``, a symlink, a hard link), and an existing output without ``force``."""
    if not src.exists():
        raise CheckpointError(f"input checkpoint {str(src)!r} does not exist")
    if not src.is_file():
        raise CheckpointError(f"input checkpoint {str(src)!r} is not a file")
    if dst.is_dir():
        raise UsageError(f"{param('dst')} {str(dst)!r} is a folder; give a file path")
    same = os.path.samefile(src, dst) if dst.exists() else src.resolve() == dst.resolve()
    if same:
        raise UsageError(f"{param('dst')} {str(dst)!r} is the input checkpoint itself; write to another file")
    if dst.exists() and not force:
        raise UsageError(f"output {str(dst)!r} already exists; pass {param('force')} to overwrite it")


def check_resize_memory(kernel: torch.Tensor, patch: Size2, img_size: Size2 | None) -> None:
    """The new kernel (and position grid) must fit in memory: ``-ps 100000`` asks for terabytes."""

    dim, chans = int(kernel.shape[0]), int(kernel.shape[1])
    img = img_size or patch
    w = Workload(
        params=kernel.numel(),
        weight_bytes=kernel.numel() * kernel.element_size(),
        embed_dim=dim,
        depth=0,
        num_heads=1,
        num_classes=0,
        img_size=img,
        patch_size=patch,
        batch=0,
        images=0,
        in_chans=chans,
    )
    what = f"{param('patch')} {format_size(patch)}"
    if img_size:
        what += f" with {param('img_size')} {format_size(img_size)}"
    advice = {
        "weights": f"use a smaller {param('patch')}",
        "position embedding": f"use a smaller {param('img_size')} or a larger {param('patch')}",
    }
    check_memory(w, what, advice)


def convert_checkpoint(
    src: Path,
    dst: Path,
    key: str,
    patch: Size2,
    img_size: Size2 | None = None,
    pos_key: str | None = None,
    method: ResizeMethod = TIMM_PATCH_RESIZE,
    pos_method: ResizeMethod = TIMM_POS_RESIZE,
    trust: bool = False,
    force: bool = False,
) -> ConvertResult:
    """Resize ``key`` in ``src`` to ``patch`` (and ``pos_key`` for ``img_size``) and write ``dst``."""
    check_paths(src, dst, force)
    safetensors = src.suffix.lower() == ".safetensors"
    obj: Any = read_safetensors(src)[0] if safetensors else read_torch_file(src, trust)
    holder = _find_holder(obj, key)
    check_tensor_storage(holder)
    kernel = holder[key]
    if not isinstance(kernel, torch.Tensor) or kernel.dim() != 4:
        shape = tuple(kernel.shape) if isinstance(kernel, torch.Tensor) else type(kernel).__name__
        raise CheckpointError(f"{key!r} must be a 4-D conv weight [out, in, h, w], got {shape}")
    check_float(key, kernel)
    check_resize_memory(kernel, patch, img_size)
    holder[key] = pi_resize_patch_embed(kernel, patch, method.interpolation, method.antialias)
    result = ConvertResult(dst, key, tuple(kernel.shape), tuple(holder[key].shape))
    if img_size is not None:
        result = _resize_pos(holder, key, pos_key, patch, img_size, pos_method, result)
    _save(obj, dst, safetensors)
    return result


def _resize_pos(
    holder: MutableMapping[str, Any],
    key: str,
    pos_key: str | None,
    patch: Size2,
    img: Size2,
    method: ResizeMethod,
    result: ConvertResult,
) -> ConvertResult:
    if pos_key is None:
        stem = key.split("patch_embed.")[0] if "patch_embed." in key else ""
        pos_key = f"{stem}pos_embed"
    if pos_key not in holder:
        raise CheckpointError(f"position embedding {pos_key!r} not found beside {key!r}; pass {param('pos_key')}")
    grid = grid_for(img, patch, RESIZE_ADVICE)
    old = holder[pos_key]
    if not isinstance(old, torch.Tensor) or old.dim() != 3:
        shape = tuple(old.shape) if isinstance(old, torch.Tensor) else type(old).__name__
        raise CheckpointError(f"{pos_key!r} must be a 3-D position embedding [1, tokens, dim], got {shape}")
    check_float(pos_key, old)
    holder[pos_key] = resample_pos_embed(old, grid, num_prefix_tokens=pos_prefix_tokens(holder, pos_key), method=method)
    return ConvertResult(
        result.output, key, result.old_shape, result.new_shape, pos_key, tuple(old.shape), tuple(holder[pos_key].shape)
    )


def _save(obj: Any, dst: Path, safetensors: bool) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent)
    os.close(fd)
    try:
        with full_disk_as_usage_error(dst):
            if safetensors:
                from safetensors.torch import save_file

                save_file({k: v.contiguous() for k, v in obj.items()}, tmp)
            else:
                torch.save(obj, tmp)
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp files are private; a checkpoint is an ordinary file
        os.replace(tmp, dst)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def describe(result: ConvertResult) -> str:
    text = f"{result.key}: {result.old_shape} → {result.new_shape}"
    if result.pos_key:
        text += f"; {result.pos_key}: {result.old_pos_shape} → {result.new_pos_shape}"
    return text


__all__ = ["ConvertResult", "convert_checkpoint", "describe", "format_size"]
