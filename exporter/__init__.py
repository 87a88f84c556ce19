"""flexiexport: one FlexiViT (or timm ViT) checkpoint → validated models, one per patch size.

Public names load lazily so that ``flexiexport --help`` (which imports this package first)
pulls in no torch, timm, onnx or tensorrt.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_LAZY = {
    "pi_resize_patch_embed": "exporter.resize",
    "resample_pos_embed": "exporter.resize",
    "interpolate_patch_embed": "exporter.resize",
    "ResizeMethod": "exporter.resize",
    "load_source": "exporter.load",
    "SourceSpec": "exporter.load",
    "build": "exporter.pipeline",
    "BuildOptions": "exporter.pipeline",
    "compare_outputs": "exporter.validate",
}

__all__ = [
    "BuildOptions",
    "ResizeMethod",
    "SourceSpec",
    "__version__",
    "build",
    "compare_outputs",
    "interpolate_patch_embed",
    "load_source",
    "pi_resize_patch_embed",
    "resample_pos_embed",
]

if TYPE_CHECKING:
    from exporter.load import SourceSpec, load_source
    from exporter.pipeline import BuildOptions, build
    from exporter.resize import ResizeMethod, interpolate_patch_embed, pi_resize_patch_embed, resample_pos_embed
    from exporter.validate import compare_outputs


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'exporter' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
