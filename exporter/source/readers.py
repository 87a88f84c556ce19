"""Reading weights as data: torch files (weights only unless trusted), safetensors, big_vision
.npz, the hub; containers unwrapped, prefixes stripped, storage and size checked before loading."""

from __future__ import annotations

import contextlib
import logging
import math
import pickle
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from exporter.core.errors import CheckpointError, EnvironmentMissing, UsageError, param
from exporter.core.machine import available_memory, gigabytes
from exporter.core.sizes import Size2
from exporter.source.config import first_line as _first_line
from exporter.source.infer import _check_model_name, create_vit
from exporter.source.model import KERNEL_KEY

log = logging.getLogger(__name__)


TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")


# Containers in the order they are tried; EMA weights only when asked for.
CONTAINERS = ("state_dict", "model", "module", "net", "params")


EMA_CONTAINERS = ("state_dict_ema", "model_ema", "ema", "ema_state_dict")


PREFIXES = ("module.", "model.", "_orig_mod.", "backbone.", "encoder.")


def read_torch_file(path: Path, trust: bool = False) -> Any:
    """``torch.load`` on the CPU; pickled code is refused unless ``trust``."""
    with open(path, "rb") as handle:
        magic = handle.read(4)
    if not (magic.startswith(b"PK\x03\x04") or magic[:1] == b"\x80"):  # torch zip format or a raw pickle
        raise CheckpointError(
            f"cannot read {path}: not a PyTorch checkpoint (neither a torch zip archive nor a pickle)"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=not trust)
    except pickle.UnpicklingError as exc:
        if not trust and "GLOBAL" in str(exc):
            raise CheckpointError(
                f"{path} needs pickled Python code to load (not plain weights); "
                f"if you trust its source, pass {param('trust_checkpoint')}"
            ) from exc
        raise CheckpointError(f"cannot read {path}: not a valid checkpoint ({_first_line(exc)})") from exc
    except Exception as exc:
        raise CheckpointError(
            f"cannot read {path}: truncated, corrupt or not a PyTorch checkpoint ({_first_line(exc)})"
        ) from exc


def read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a ``.safetensors`` file."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 - safe_open is not a dict
            return tensors, dict(handle.metadata() or {})
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(
            f"cannot read {path}: truncated, corrupt or not a safetensors file ({_first_line(exc)})"
        ) from exc


def check_tensor_storage(tensors: Mapping[str, Any]) -> None:
    """Refuse tensors that claim more bytes than their storage holds (``expand``-ed, stride-0 or
    overlapping views): copying one would allocate what the file never contained, so this runs
    before anything clones, casts or hashes them."""

    for key, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            continue
        if t.layout != torch.strided:
            raise CheckpointError(f"checkpoint tensor {key!r} is {t.layout} (not a plain dense tensor)")
        claimed, stored = t.numel() * t.element_size(), t.untyped_storage().nbytes()
        if stored < claimed:
            raise CheckpointError(
                f"checkpoint tensor {key!r} claims shape {tuple(t.shape)} ({gigabytes(claimed)}) but is stored "
                f"in {stored:,} bytes (an expanded or overlapping view, not plain weights); "
                "re-save the checkpoint with .contiguous() tensors"
            )


def unwrap_state_dict(obj: Any, use_ema: bool = False) -> tuple[dict[str, torch.Tensor], str]:
    """Find the state dict inside the usual containers and strip DDP/compile prefixes.

    Returns the tensors and a description of where they were found.
    """
    where = []
    for _ in range(3):
        if not isinstance(obj, Mapping):
            break
        keys = EMA_CONTAINERS + CONTAINERS if use_ema else CONTAINERS
        inner = next((k for k in keys if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        where.append(f"[{inner!r}]")
        obj = obj[inner]
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"checkpoint holds a {type(obj).__name__}, not a state dict of tensors")
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError("checkpoint holds no tensors (is it a state dict?)")
    check_tensor_storage(tensors)
    tensors, stripped = _strip_prefixes(tensors)
    where.extend(f"prefix {p!r} removed" for p in stripped)
    return tensors, " ".join(where) or "(top level)"


def _strip_prefixes(tensors: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    stripped = []
    changed = True
    while changed:
        changed = False
        for prefix in PREFIXES:
            if all(k.startswith(prefix) for k in tensors) and not any(k == KERNEL_KEY for k in tensors):
                tensors = {k[len(prefix) :]: v for k, v in tensors.items()}
                stripped.append(prefix)
                changed = True
    return tensors, stripped


def _read_weights(
    path: Path, model_name: str | None, model_args: Mapping[str, Any], trust: bool, use_ema: bool
) -> tuple[dict[str, torch.Tensor], str, str]:
    """Tensors, container description and file format of a weights file."""
    if not path.exists():
        raise CheckpointError(f"weights file {str(path)!r} does not exist")
    if not path.is_file():
        raise CheckpointError(f"weights path {str(path)!r} is not a file")
    check_fits_in_memory(path)
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        tensors, _ = read_safetensors(path)
        sd, where = unwrap_state_dict(tensors, use_ema)
        return sd, where, "safetensors"
    if suffix == ".npz":
        return _read_npz(path, model_name, model_args), "(big_vision npz, read by timm)", "npz"
    if suffix not in TORCH_SUFFIXES:
        raise CheckpointError(
            f"unsupported weights file {path.name!r}: use .pt, .pth, .bin, .ckpt, .safetensors or .npz"
        )
    sd, where = unwrap_state_dict(read_torch_file(path, trust), use_ema)
    return sd, where, "torch"


def check_fits_in_memory(path: Path) -> None:
    """Every reader holds the whole file in memory: refuse one larger than what is available."""

    size, free = path.stat().st_size, available_memory()
    if free is not None and size > free:
        raise CheckpointError(
            f"weights file {str(path)!r} is {gigabytes(size)}, more than the {gigabytes(free)} of memory "
            "available to read it"
        )


NPZ_PREFIXES = ("", "params/", "opt/target/", "params/img/")


def _npz_layout(path: Path) -> tuple[Size2, Size2, bool]:
    """Kernel size, position grid and whether the grid has a class slot, read off the arrays."""
    import numpy as np

    try:
        with np.load(path) as data:
            prefix = next((p for p in NPZ_PREFIXES if f"{p}embedding/kernel" in data.files), None)
            if prefix is None:
                raise CheckpointError(f"{path} is not a big_vision ViT checkpoint: no 'embedding/kernel' array")
            kernel = data[f"{prefix}embedding/kernel"].shape
            pos_key = next(
                k
                for k in (f"{prefix}pos_embedding", f"{prefix}Transformer/posembed_input/pos_embedding")
                if k in data.files
            )
            tokens = int(data[pos_key].shape[1])
    except CheckpointError:
        raise
    except Exception as exc:
        raise CheckpointError(
            f"cannot read {path}: truncated, corrupt or not a big_vision .npz ({_first_line(exc)})"
        ) from exc
    side = math.isqrt(tokens)
    has_slot = side * side != tokens
    if has_slot:
        side = math.isqrt(tokens - 1)
    return (int(kernel[0]), int(kernel[1])), (side, side), has_slot


def _read_npz(path: Path, model_name: str | None, model_args: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """A big_vision checkpoint through timm's reader, keeping its own kernel and grid.

    The timm model is built at the checkpoint's kernel size and grid, so timm's loader
    resamples nothing: FlexiViT's 32x32 kernel and 7x7 grid reach our PI-resize untouched.
    """
    if not model_name:
        raise UsageError(
            f"{path.name} is a big_vision .npz checkpoint: pass {param('model_name')} NAME (e.g. flexivit_base)"
        )
    _check_model_name(model_name)
    kernel, grid, _ = _npz_layout(path)
    args = {**model_args, "patch_size": kernel, "img_size": (grid[0] * kernel[0], grid[1] * kernel[1])}
    model = create_vit(model_name, args)
    try:
        model.load_pretrained(str(path))  # type: ignore[operator]
    except Exception as exc:
        raise CheckpointError(f"cannot read {path} as a {model_name} .npz checkpoint ({_first_line(exc)})") from exc
    return {k: v.detach() for k, v in model.state_dict().items()}


def _hub_resolves() -> bool:
    """Whether the model hub's host name resolves (fast); the hub client retries for ~45 s otherwise."""
    import socket
    from urllib.parse import urlparse

    import huggingface_hub.constants as hub

    host = urlparse(hub.ENDPOINT).hostname or ""
    try:
        socket.getaddrinfo(host, 443)
    except OSError:
        return False
    return True


@contextlib.contextmanager
def _hub_offline(offline: bool) -> Iterator[None]:
    """Make the hub client use its local cache only (what HF_HUB_OFFLINE=1 does at import)."""
    import huggingface_hub.constants as hub

    before = hub.HF_HUB_OFFLINE
    hub.HF_HUB_OFFLINE = before or offline
    try:
        yield
    finally:
        hub.HF_HUB_OFFLINE = before


def _download_pretrained(model_name: str) -> dict[str, torch.Tensor]:
    import timm

    log.info("fetching pretrained weights for %s from the hub (or its local cache)", model_name)
    try:
        with _hub_offline(not _hub_resolves()):
            model = timm.create_model(model_name, pretrained=True)
    except Exception as exc:
        raise EnvironmentMissing(
            f"cannot get pretrained weights for {model_name!r}: no network access to the model hub "
            f"and no local cache ({_first_line(exc)}); pass {param('weights')} FILE instead"
        ) from exc
    return {k: v.detach() for k, v in model.state_dict().items()}
