"""Read a checkpoint into a ``SourceModel``: weights, inferred architecture and metadata.

Accepted: ``.pt/.pth/.bin`` (``torch.load(weights_only=True)``), ``.safetensors``, big_vision
``.npz`` (read by timm, needs a model name), a timm model name with ``pretrained=True`` (hub),
or a timm model name plus local weights. A ``<stem>.json`` beside the weights (or
``config.json``, the timm/Hugging Face layout) supplies the architecture name, model arguments
and preprocessing when present.
"""

from __future__ import annotations

import contextlib
import logging
import math
import pickle
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from exporter.bundle.limits import prefix_tokens
from exporter.bundle.manifest import Preprocessing
from exporter.core.assumptions import Assumption
from exporter.core.errors import CheckpointError, EnvironmentMissing, UsageError
from exporter.core.files import sha256_file
from exporter.core.names import printable, slug
from exporter.core.sizes import Size2, format_size, to_size2
from exporter.source.config import first_line as _first_line
from exporter.source.config import (
    is_generic_name,
    label_names,
    read_config,
    resolve_weights,
    timm_model_args,
    transformers_type,
)
from exporter.source.config import stated_img_size as config_img_size
from exporter.source.config import where as config_where
from exporter.source.resampling import DINOV2_POS_RESIZE, ResizeMethod, default_pos_resize, pos_grid_size

log = logging.getLogger(__name__)

KERNEL_KEY = "patch_embed.proj.weight"
POS_KEY = "pos_embed"
TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
# Containers in the order they are tried; EMA weights only when asked for.
CONTAINERS = ("state_dict", "model", "module", "net", "params")
EMA_CONTAINERS = ("state_dict_ema", "model_ema", "ema", "ema_state_dict")
PREFIXES = ("module.", "model.", "_orig_mod.", "backbone.", "encoder.")
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
FLOAT_NAMES = "float16, bfloat16, float32 or float64"


@dataclass(frozen=True)
class Origin:
    """Where the weights came from and how they were unpacked."""

    kind: str  # "file" or "pretrained"
    path: Path | None = None
    sha256: str | None = None
    file_format: str | None = None
    container: str = "(top level)"
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class SourceModel:
    """A checkpoint's weights plus everything needed to rebuild its ViT at any patch size.

    ``patch_size`` is the stored kernel's size and ``pos_grid`` the stored position grid; they
    need not match ``img_size`` (big_vision FlexiViT keeps a 32x32 kernel and a 7x7 grid).
    """

    name: str
    family: str
    model_name: str | None
    model_args: Mapping[str, Any]
    state_dict: Mapping[str, torch.Tensor]
    patch_size: Size2
    img_size: Size2
    pos_grid: Size2
    num_pos_prefix: int
    embed_dim: int
    depth: int
    num_heads: int
    num_classes: int
    in_chans: int
    preprocessing: Preprocessing
    origin: Origin
    # Every value neither the weights nor their config stated (exporter.core.assumptions).
    assumptions: tuple[Assumption, ...] = field(default=())
    # How its own framework resamples the position grid; None: the family's default.
    pos_resize: ResizeMethod | None = None
    class_names: tuple[str, ...] = ()  # from the config (label_names, transformers' id2label), by output index

    @property
    def dtype(self) -> torch.dtype:
        return self.state_dict[KERNEL_KEY].dtype

    @property
    def inferred(self) -> tuple[str, ...]:
        """The assumptions as text (the manifest's ``assumed`` list)."""
        return tuple(map(str, self.assumptions))

    def pos_resize_method(self) -> ResizeMethod:
        """The position-grid resample a build uses unless ``--pos-interpolation/--[no-]pos-antialias`` say otherwise."""
        return self.pos_resize or default_pos_resize(self.family)


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
                "if you trust its source, pass --trust-checkpoint"
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
    from exporter.core.machine import gigabytes

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


def check_float(key: str, tensor: torch.Tensor) -> None:
    """Weights are floating point; an integer or bool tensor is a wrong key or a broken file."""
    if tensor.dtype not in FLOAT_DTYPES:
        name = str(tensor.dtype).replace("torch.", "")
        raise CheckpointError(f"{key!r} has dtype {name}; weights must be {FLOAT_NAMES}")


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


def infer_vit_args(
    sd: Mapping[str, torch.Tensor], num_heads: int | None = None
) -> tuple[dict[str, Any], list[Assumption]]:
    """timm ``VisionTransformer`` keyword arguments read off a state dict.

    Returns the arguments and what had to be assumed (the head count is not stored in the
    weights: head dim 64, or near it, unless given).
    """
    if KERNEL_KEY not in sd:
        sample = ", ".join(sorted(sd)[:6])
        raise CheckpointError(
            f"checkpoint has no patch embedding: expected key {KERNEL_KEY!r} "
            f"(found {len(sd)} keys such as {sample}); build reads timm ViT state dicts: pass --weights the "
            "folder that holds the checkpoint with its config.json, or PI-resize a kernel stored under another "
            "key with 'flexiexport resize -n KEY'"
        )
    kernel = sd[KERNEL_KEY]
    if kernel.dim() != 4:
        raise CheckpointError(f"{KERNEL_KEY} must be 4-D [out, in, h, w], got shape {tuple(kernel.shape)}")
    check_float(KERNEL_KEY, kernel)
    if POS_KEY not in sd:
        raise CheckpointError(
            f"checkpoint has no absolute position embedding {POS_KEY!r}; only ViTs with one are supported"
        )
    dim, in_chans = int(kernel.shape[0]), int(kernel.shape[1])
    depth = weights_depth(sd)
    if depth == 0:
        raise CheckpointError("checkpoint has no transformer blocks ('blocks.N.*'): not a timm ViT")
    assumed = []
    if num_heads is None:
        num_heads = min(divisors(dim), key=lambda h: (abs(h - dim / 64), h))
        assumed.append(Assumption("heads", str(num_heads), "pass --num-heads or a config.json"))
    class_token = "cls_token" in sd
    reg_tokens = int(sd["reg_token"].shape[1]) if "reg_token" in sd else 0
    prefix = int(class_token) + reg_tokens
    n_pos = int(sd[POS_KEY].shape[1])
    no_embed_class = (
        prefix > 0 and math.isqrt(n_pos) ** 2 == n_pos and math.isqrt(n_pos - prefix) ** 2 != n_pos - prefix
    )
    has_fc_norm = "fc_norm.weight" in sd
    args: dict[str, Any] = dict(
        embed_dim=dim,
        depth=depth,
        num_heads=num_heads,
        in_chans=in_chans,
        mlp_ratio=sd["blocks.0.mlp.fc1.weight"].shape[0] / dim if "blocks.0.mlp.fc1.weight" in sd else 4.0,
        qkv_bias="blocks.0.attn.qkv.bias" in sd,
        class_token=class_token,
        reg_tokens=reg_tokens,
        no_embed_class=no_embed_class,
        global_pool="avg" if has_fc_norm or not class_token else "token",
        fc_norm=has_fc_norm if not class_token or has_fc_norm else None,
        pre_norm="norm_pre.weight" in sd,
        num_classes=int(sd["head.weight"].shape[0]) if "head.weight" in sd else 0,
    )
    if "blocks.0.attn.q_norm.weight" in sd:
        args["qk_norm"] = True
    if "blocks.0.ls1.gamma" in sd:
        args["init_values"] = 1e-5
    if "patch_embed.proj.bias" not in sd and "norm_pre.weight" not in sd:  # timm's pre_norm has no patch bias
        args["patch_bias"] = False
    return args, assumed


def weights_depth(sd: Mapping[str, torch.Tensor]) -> int:
    """Transformer blocks in a state dict (``blocks.N.*``)."""
    return len({m.group(1) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k))})


def divisors(n: int) -> list[int]:
    """The positive divisors of ``n``, ascending: the head counts a width allows."""
    small = [d for d in range(1, math.isqrt(n) + 1) if n % d == 0]
    return sorted(set(small + [n // d for d in small]))


def check_heads(heads: int, width: int, what: str) -> None:
    """Attention splits the width evenly over the heads."""
    if width % heads:
        raise UsageError(
            f"{what} {heads} does not divide the width {width} of the weights; "
            f"valid head counts: {', '.join(map(str, divisors(width)))}"
        )


def _num_pos_prefix(args: Mapping[str, Any]) -> int:
    """Position slots before the grid: the prefix tokens, none for ``no_embed_class`` (FlexiViT)."""
    return 0 if args.get("no_embed_class") else prefix_tokens(args)


def preprocessing_from(cfg: Mapping[str, Any] | None, source: str) -> Preprocessing:
    """``Preprocessing`` from a timm pretrained config or a manifest's ``preprocessing`` (unknown keys ignored)."""
    if not cfg:
        return Preprocessing()
    default = Preprocessing()
    return Preprocessing(
        mean=tuple(float(v) for v in cfg.get("mean", default.mean)),  # type: ignore[arg-type]
        std=tuple(float(v) for v in cfg.get("std", default.std)),  # type: ignore[arg-type]
        interpolation=str(cfg.get("interpolation", default.interpolation)),
        crop_pct=float(cfg.get("crop_pct", default.crop_pct)),
        crop_mode=str(cfg.get("crop_mode", default.crop_mode)),
        source=source,
    )


def _check_model_name(name: str, what: str = "unknown timm model", error: type[UsageError] = UsageError) -> None:
    import timm

    if not timm.is_model(name):
        stem = name.split("_")[0] or name
        close = timm.list_models(f"*{stem}*")[:8]
        hint = f"; similar timm models: {', '.join(close)}" if close else ""
        raise error(f"{what} {name!r}{hint}")


def create_vit(model_name: str | None, args: Mapping[str, Any]) -> torch.nn.Module:
    """The one way a model is built from a source: timm's ``model_name`` with ``args`` (no
    pretrained weights), or timm's ``VisionTransformer(**args)`` for an architecture read off the
    weights. Built on the current default device (``torch.device("meta")`` for shapes only)."""
    import timm
    from timm.models.vision_transformer import VisionTransformer

    if "norm_eps" in args:  # a JSON-able stand-in for timm's norm_layer (transformers ViT: eps 1e-12)
        from functools import partial

        eps = float(args["norm_eps"])
        args = {k: v for k, v in args.items() if k != "norm_eps"}
        args["norm_layer"] = partial(torch.nn.LayerNorm, eps=eps)
    if model_name:
        return timm.create_model(model_name, pretrained=False, **args)
    return VisionTransformer(**args)


def _meta_model(model_name: str | None, args: Mapping[str, Any], config: Mapping[str, Any]) -> torch.nn.Module:
    """The architecture on the meta device: shapes only, no memory, no init cost. Arguments timm
    refuses (they come from the config beside the weights) are a ``CheckpointError``."""
    try:
        with torch.device("meta"):
            return create_vit(model_name, args)
    except (TypeError, ValueError, AssertionError) as exc:
        raise CheckpointError(_meta_problem(exc, model_name, args, config)) from exc


def _meta_problem(exc: Exception, model_name: str | None, args: Mapping[str, Any], config: Mapping[str, Any]) -> str:
    where = f"config {config['_path']}: " if config.get("_path") else ""
    arch = model_name or "VisionTransformer"
    unknown = re.search(r"unexpected keyword argument '(\w+)'", str(exc))
    if unknown:
        return f"{where}model_args.{unknown.group(1)} is not an argument of timm's {arch}"
    if "divisible by num_heads" in str(exc) and "embed_dim" in args:
        width = int(args["embed_dim"])
        return (
            f"{where}timm {arch}'s default head count does not divide model_args.embed_dim {width}; "
            f"set model_args.num_heads or pass --num-heads (valid head counts: {', '.join(map(str, divisors(width)))})"
        )
    return f"{where}model_args do not build a timm {arch}: {_first_line(exc)}"


def check_config_fits(sd: Mapping[str, torch.Tensor], config: Mapping[str, Any], num_heads: int | None) -> None:
    """The head count (``--num-heads``, else the config's) and the config's widths against the
    weights, before any model is built from them (a config's depth of 10**7 would build for hours)."""
    kernel = sd[KERNEL_KEY]
    width, in_chans = int(kernel.shape[0]), int(kernel.shape[1])
    if num_heads is not None:
        check_heads(num_heads, width, "--num-heads")
    args = timm_model_args(config)
    where = config_where(config)
    try:
        if num_heads is None and "num_heads" in args:
            check_heads(args["num_heads"], width, "model_args.num_heads")
    except UsageError as exc:
        raise CheckpointError(f"{where}: {exc}") from None
    read, _ = infer_vit_args(sd, 1)
    found = {"embed_dim": (width, "the width"), "in_chans": (in_chans, "the input channels")}
    found["depth"] = (weights_depth(sd), "the blocks")
    found["num_classes"] = (read["num_classes"], "the classifier (head.weight rows)")
    found["class_token"] = (read["class_token"], "the class token (cls_token)")
    found["reg_tokens"] = (read["reg_tokens"], "the register tokens (reg_token)")
    for key, (value, what) in found.items():
        if key in args and args[key] != value:
            raise CheckpointError(
                f"{where}: model_args.{key} {args[key]} does not match {what} of the weights ({value})"
            )


def check_state_dict(sd: Mapping[str, torch.Tensor], model: torch.nn.Module, what: str) -> None:
    """Raise ``CheckpointError`` naming a non-float weight, or missing, unexpected and mis-shaped keys."""
    for key, value in model.state_dict().items():
        if key in sd and value.is_floating_point():
            check_float(key, sd[key])
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    shapes = sorted(k for k in set(expected) & set(sd) if tuple(sd[k].shape) != expected[k])
    problems = []
    if missing:
        problems.append(f"missing keys: {', '.join(missing[:5])}" + (" ..." if len(missing) > 5 else ""))
    if unexpected:
        problems.append(f"unexpected keys: {', '.join(unexpected[:5])}" + (" ..." if len(unexpected) > 5 else ""))
    for key in shapes[:5]:
        problems.append(f"{key} is {tuple(sd[key].shape)} but {what} expects {expected[key]}")
    if problems:
        raise CheckpointError(f"weights do not match {what}: " + "; ".join(problems))


def _named_defaults(model_name: str, args: Mapping[str, Any], config: Mapping[str, Any]) -> tuple[dict[str, Any], int]:
    """A named model's default pretrained config and head count (no weights touched)."""
    model = _meta_model(model_name, args, config)
    cfg = dict(getattr(model, "pretrained_cfg", {}) or {})
    return cfg, int(model.blocks[0].attn.num_heads)  # type: ignore[index,union-attr]


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
    from exporter.core.machine import available_memory, gigabytes

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
        raise UsageError(f"{path.name} is a big_vision .npz checkpoint: pass --model NAME (e.g. flexivit_base)")
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
            f"and no local cache ({_first_line(exc)}); pass --weights FILE instead"
        ) from exc
    return {k: v.detach() for k, v in model.state_dict().items()}


@dataclass(frozen=True)
class SourceSpec:
    """What the user asked to load. No weights and no model: the shipped demo."""

    weights: Path | None = None
    model_name: str | None = None
    pretrained: bool = False
    trust_checkpoint: bool = False
    use_ema: bool = False
    num_heads: int | None = None

    def __post_init__(self) -> None:
        if self.pretrained and not self.model_name:
            raise UsageError("--pretrained needs --model NAME (a timm model name)")
        if self.pretrained and self.weights:
            raise UsageError("use either --pretrained or --weights, not both")
        if self.num_heads is not None and self.num_heads <= 0:
            raise UsageError(f"--num-heads must be a positive integer, got {self.num_heads}")


def weights_path(spec: SourceSpec) -> Path | None:
    """The file to read: ``--weights`` (a folder's ``model.safetensors`` or ``pytorch_model.bin``),
    the shipped demo, or none (a hub download)."""
    from exporter.source.demo import DEMO_WEIGHTS

    if spec.weights is not None:
        return resolve_weights(spec.weights)
    return None if spec.model_name else DEMO_WEIGHTS


def source_name(spec: SourceSpec, announce: bool = True) -> str:
    """The bundle's name, known before any weights are read: always a safe name (it becomes the
    folder ``bundles/<name>`` and a word in scripts). An unsafe name from the config beside the
    weights, ``--model`` or the weights' stem is slugged, with a warning when ``announce``."""
    from exporter.source.demo import DEMO_NAME, DEMO_WEIGHTS

    weights = weights_path(spec)
    if weights == DEMO_WEIGHTS:
        return DEMO_NAME
    config = read_config(weights) if weights is not None and weights.is_file() else {}
    if config.get("name"):
        name, origin = str(config["name"]), f"the config {config.get('_path')}"
    elif spec.model_name:
        name, origin = spec.model_name, "--model"
    elif weights is not None and is_generic_name(weights) and config.get("architecture"):
        name, origin = str(config["architecture"]), f"the config {config.get('_path')}"
    elif weights is not None and is_generic_name(weights):
        name, origin = weights.absolute().parent.name, f"the folder of {weights.name}"
    elif weights is not None:
        name, origin = weights.stem, f"the weights file {weights.name}"
    else:
        name, origin = "model", "the default"
    safe = slug(name)
    if safe != name and announce:
        log.warning("bundle name %r from %s is not a safe name; using %r", printable(name), printable(origin), safe)
    return safe


def stated_img_size(spec: SourceSpec) -> Size2 | None:
    """The native image size when the config beside the weights states it (``img_size`` as the
    demo's does, timm's ``model_args.img_size`` / ``pretrained_cfg.input_size``), read without
    touching the weights; None when only the weights can tell."""
    weights = weights_path(spec)
    config = read_config(weights) if weights is not None and weights.is_file() else {}
    from exporter.source import hf

    if hf.is_transformers_config(config):
        hf.layout(config)  # an unsupported transformers model is named before anything is read
        return hf.image_size(config)
    stated = config_img_size(config)
    return stated[0] if stated else None


def load_source(spec: SourceSpec) -> SourceModel:
    """Load weights and work out (or check) the architecture they belong to."""
    weights = weights_path(spec)
    if spec.model_name:
        _check_model_name(spec.model_name)
    config = read_config(weights) if weights is not None else {}
    if transformers_type(config):
        from exporter.source import hf

        hf.layout(config)  # an unsupported transformers model is named before any weights are read
    model_name = spec.model_name or config.get("architecture") or None
    if not spec.model_name and model_name:
        _check_model_name(model_name, f"config {config['_path']}: unknown timm architecture", CheckpointError)
    if weights is not None:
        sd, container, file_format = _read_weights(
            weights, model_name, config.get("model_args") or {}, spec.trust_checkpoint, spec.use_ema
        )
        origin = Origin("file", weights.resolve(), sha256_file(weights), file_format, container)
        sd, config, model_name, origin = _from_transformers(sd, config, model_name, spec, origin)
    elif spec.pretrained:
        sd = _download_pretrained(str(model_name))
        origin = Origin("pretrained", file_format="timm hub", container=f"timm {model_name} pretrained=True")
    else:
        raise UsageError(f"--model {model_name} needs --weights FILE or --pretrained")
    return _describe(sd, source_name(spec, announce=False), model_name, config, origin, spec.num_heads)


def _from_transformers(
    sd: dict[str, torch.Tensor], config: dict[str, Any], model_name: str | None, spec: SourceSpec, origin: Origin
) -> tuple[dict[str, torch.Tensor], dict[str, Any], str | None, Origin]:
    """A transformers checkpoint mapped into timm's layout (``exporter.source.hf``); anything else as is."""
    from dataclasses import replace

    from exporter.source import hf

    if not hf.is_transformers_config(config):
        return sd, config, model_name, origin
    lay = hf.layout(config)
    sd, config, notes = hf.to_timm(sd, config)
    if spec.model_name and spec.model_name != config["architecture"]:
        raise UsageError(
            f"--model {spec.model_name}: {lay.path} is a transformers {lay.architecture}, whose config "
            "decides the architecture; drop --model"
        )
    container = f"{origin.container}, transformers {lay.architecture} mapped to timm"
    return sd, config, config["architecture"], replace(origin, container=container, notes=notes)


def _describe(
    sd: dict[str, torch.Tensor],
    name: str,
    model_name: str | None,
    config: Mapping[str, Any],
    origin: Origin,
    num_heads: int | None,
) -> SourceModel:
    config_args = timm_model_args(config)
    args, assumed = infer_vit_args(sd, num_heads or config_args.get("num_heads"))  # assumed only when nothing says
    check_config_fits(sd, config, num_heads)
    named_cfg: dict[str, Any] = {}
    if model_name:
        args, assumed = {"num_classes": args["num_classes"], **config_args}, []
        if num_heads is not None:
            args["num_heads"] = num_heads
        named_cfg, heads = _named_defaults(model_name, args, config)
        num_heads = num_heads or heads
    else:
        args.update(config_args)
    if num_heads is not None:
        args["num_heads"] = num_heads
    kernel = sd[KERNEL_KEY]
    patch = (int(kernel.shape[2]), int(kernel.shape[3]))
    prefix = _num_pos_prefix(args) if not model_name else _named_pos_prefix(model_name, args, config)
    grid = pos_grid_size(sd[POS_KEY], prefix)
    family = str(config.get("family") or ("flexivit" if (model_name or "").startswith("flexivit") else "vit"))
    img, img_assumed = _native_img_size(config, named_cfg, grid, patch, free_grid=_free_grid(family, origin))
    meta = _meta_model(
        model_name, {**args, "patch_size": patch, "img_size": (grid[0] * patch[0], grid[1] * patch[1])}, config
    )
    check_state_dict(sd, meta, f"timm {model_name}" if model_name else "the inferred ViT")
    named = f"timm {model_name}" if model_name else ""
    preprocessing, pre_assumed = _preprocessing(config, named_cfg, named, origin.kind == "pretrained")
    if img_assumed and origin.kind != "pretrained":
        assumed.append(Assumption("image size", format_size(img), f"{img_assumed}; a config.json img_size settles it"))
    if not model_name and not config.get("model_args"):
        assumed.append(
            Assumption("layers", "LayerNorm eps 1e-6, GELU", "timm ViT's; pass --model NAME or a config.json")
        )
    attn = meta.blocks[0].attn  # type: ignore[index,union-attr]
    return SourceModel(
        name=name,
        family=family,
        model_name=model_name,
        model_args=args,
        state_dict=sd,
        patch_size=patch,
        img_size=img,
        pos_grid=grid,
        num_pos_prefix=prefix,
        embed_dim=int(kernel.shape[0]),
        depth=len(meta.blocks),  # type: ignore[arg-type]
        num_heads=int(attn.num_heads),  # type: ignore[arg-type]
        num_classes=int(getattr(meta, "num_classes", 0)),
        in_chans=int(kernel.shape[1]),
        preprocessing=preprocessing,
        origin=origin,
        assumptions=tuple(assumed + pre_assumed + list(config.get("assumptions") or ())),  # + exporter.source.hf's
        pos_resize=DINOV2_POS_RESIZE if "dinov2" in (model_name or "") or family == "transformers" else None,
        class_names=_class_names(config, int(getattr(meta, "num_classes", 0))),
    )


def _class_names(config: Mapping[str, Any], num_classes: int) -> tuple[str, ...]:
    """The config's class names, one per output."""
    names = label_names(config)
    if names and len(names) != num_classes:
        key = "label_names" if config.get("label_names") else "pretrained_cfg.label_names"
        raise CheckpointError(
            f"{config_where(config)}: {key} has {len(names)} names but the weights have {num_classes} classes; "
            f"give one name per class (or drop {key} and pass --labels FILE)"
        )
    return names


PREPROCESSING_KEYS = ("mean", "std", "interpolation", "crop_pct")


def _preprocessing(
    config: Mapping[str, Any], named_cfg: Mapping[str, Any], named: str, pretrained: bool
) -> tuple[Preprocessing, list[Assumption]]:
    """What the config's ``pretrained_cfg`` says, then the named timm model's defaults, then timm's
    ViT defaults; what the checkpoint's own config (or, for hub weights, timm's) did not say is assumed."""
    own = dict(config.get("pretrained_cfg") or {})
    stated = {**named_cfg, **own} if pretrained else own
    merged = {**named_cfg, **own}
    source = (
        (config.get("preprocessing_source") or "checkpoint config") if own else (named or "assumed (timm ViT default)")
    )
    pre = preprocessing_from(merged, source) if merged else Preprocessing()
    missing = [k for k in PREPROCESSING_KEYS if k not in stated]
    if not missing:
        return pre, []
    values = {"mean": _numbers(pre.mean), "std": _numbers(pre.std), "interpolation": pre.interpolation}
    values["crop_pct"] = f"{pre.crop_pct:g}"
    whose = f"{named}'s default" if named_cfg else "timm ViT default"
    keys = "/".join(missing)
    value = ", ".join(f"{k} {values[k]}" for k in missing)
    return pre, [Assumption("preprocessing", value, f"{whose}; a config.json pretrained_cfg.{keys} settles it")]


def _numbers(values: tuple[float, ...]) -> str:
    return "[" + ", ".join(f"{v:g}" for v in values) + "]"


def _free_grid(family: str, origin: Origin) -> bool:
    """Whether the stored position grid is independent of the kernel, so grid x kernel need not be
    the native size: FlexiViT (its grid is resampled for every patch size) and big_vision .npz."""
    return family == "flexivit" or origin.file_format == "npz"


def _named_pos_prefix(model_name: str, args: Mapping[str, Any], config: Mapping[str, Any]) -> int:
    from exporter.source.resampling import num_pos_prefix_tokens

    return num_pos_prefix_tokens(_meta_model(model_name, args, config))


def _native_img_size(
    config: Mapping[str, Any], named_cfg: Mapping[str, Any], grid: Size2, patch: Size2, free_grid: bool
) -> tuple[Size2, str]:
    """The native image size and, when nothing stated it, what it was taken from (else "").

    The config's stated size is the truth; for a timm ViT it must be the position grid times the
    kernel (the size its grid was trained for), else config and weights disagree."""
    from_weights = (grid[0] * patch[0], grid[1] * patch[1])
    stated = config_img_size(config)
    if stated is not None:
        size, key = stated
        if not free_grid and size != from_weights:
            raise CheckpointError(
                f"{config_where(config)}: {key} {format_size(size)} does not match the weights: position grid "
                f"{grid[0]}x{grid[1]} times kernel {patch[0]}x{patch[1]} is {format_size(from_weights)}; correct {key}"
            )
        return size, ""
    if free_grid and named_cfg.get("input_size"):
        size = to_size2(tuple(named_cfg["input_size"])[1:], "image size")
        return size, "" if size == from_weights else "timm's default for the model"
    if free_grid:
        return from_weights, f"position grid {format_size(grid)} x kernel {format_size(patch)}"
    return from_weights, ""
