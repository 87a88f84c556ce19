"""The architecture of a ViT from its weights and config: width, depth, heads (said when assumed),
prefix tokens; timm's model created from it and checked against the state dict."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import torch
from typing_extensions import NotRequired, TypedDict

from exporter.bundle.limits import prefix_tokens
from exporter.core.assumptions import Assumption
from exporter.core.errors import CheckpointError, UsageError, param
from exporter.source.config import first_line as _first_line
from exporter.source.config import (
    timm_model_args,
)
from exporter.source.config import where as config_where
from exporter.source.model import KERNEL_KEY, POS_KEY, check_float
from exporter.source.resampling import num_pos_prefix_tokens


class InferredArgs(TypedDict):
    """timm ``VisionTransformer`` keyword arguments read off a state dict."""

    embed_dim: int
    depth: int
    num_heads: int
    in_chans: int
    mlp_ratio: float
    qkv_bias: bool
    class_token: bool
    reg_tokens: int
    no_embed_class: bool
    global_pool: str
    fc_norm: bool | None  # None: timm's default for the pooling
    pre_norm: bool
    num_classes: int
    qk_norm: NotRequired[bool]
    init_values: NotRequired[float]
    patch_bias: NotRequired[bool]


def infer_vit_args(
    sd: Mapping[str, torch.Tensor], num_heads: int | None = None
) -> tuple[InferredArgs, list[Assumption]]:
    """timm ``VisionTransformer`` keyword arguments read off a state dict.

    Returns the arguments and what had to be assumed (the head count is not stored in the
    weights: head dim 64, or near it, unless given).
    """
    if KERNEL_KEY not in sd:
        sample = ", ".join(sorted(sd)[:6])
        raise CheckpointError(
            f"checkpoint has no patch embedding: expected key {KERNEL_KEY!r} "
            f"(found {len(sd)} keys such as {sample}); build reads timm ViT state dicts: pass {param('weights')} the "
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
    args = InferredArgs(
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


def _check_model_name(name: str, what: str = "unknown timm model", error: type[UsageError] = UsageError) -> None:
    import timm

    if not timm.is_model(name):
        close = similar_names(name, timm.list_models())
        hint = f"; similar timm models: {', '.join(close)}" if close else ""
        raise error(f"{what} {name!r}{hint}")


def similar_names(name: str, known: list[str], n: int = 8) -> list[str]:
    """Up to ``n`` of ``known`` nearest ``name``, those of its family first (the text before its
    first '_': ``vit_nosuch`` is answered with ``vit_*`` names, not ``convit_*``)."""
    import difflib

    stem = name.split("_")[0].lower()
    family = [k for k in known if k.lower() == stem or k.lower().startswith(stem + "_")] if stem else []
    close = difflib.get_close_matches(name, family, n=n, cutoff=0.0)
    close += [k for k in difflib.get_close_matches(name, known, n=n, cutoff=0.6) if k not in close]
    return close[:n]


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
            f"set model_args.num_heads or pass {param('num_heads')} "
            f"(valid head counts: {', '.join(map(str, divisors(width)))})"
        )
    return f"{where}model_args do not build a timm {arch}: {_first_line(exc)}"


def check_config_fits(sd: Mapping[str, torch.Tensor], config: Mapping[str, Any], num_heads: int | None) -> None:
    """The head count (``--num-heads``, else the config's) and the config's widths against the
    weights, before any model is built from them (a config's depth of 10**7 would build for hours)."""
    kernel = sd[KERNEL_KEY]
    width, in_chans = int(kernel.shape[0]), int(kernel.shape[1])
    if num_heads is not None:
        check_heads(num_heads, width, param("num_heads"))
    args = timm_model_args(config)
    where = config_where(config)
    stated = args.get("num_heads")
    if num_heads is not None and stated is not None and stated != num_heads:
        raise UsageError(
            f"{param('num_heads')} {num_heads} disagrees with {where}, which states {stated} heads "
            f"({'num_attention_heads' if 'transformers' in config else 'model_args.num_heads'}): "
            f"drop {param('num_heads')}, or correct the config"
        )
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


def _named_pos_prefix(model_name: str, args: Mapping[str, Any], config: Mapping[str, Any]) -> int:

    return num_pos_prefix_tokens(_meta_model(model_name, args, config))
