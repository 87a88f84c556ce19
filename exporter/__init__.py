"""flexiexport: one FlexiViT (or timm ViT) checkpoint → validated models, one per patch size.

Public names load lazily so that ``flexiexport --help`` (which imports this package first)
pulls in no torch, timm, onnx or tensorrt.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_LAZY = {
    "pi_resize_patch_embed": "exporter.build.resize",
    "resample_pos_embed": "exporter.build.resize",
    "interpolate_patch_embed": "exporter.build.resize",
    "ResizeMethod": "exporter.source.resampling",
    "load_source": "exporter.source.load",
    "SourceSpec": "exporter.source.load",
    "build": "exporter.build.pipeline",
    "BuildOptions": "exporter.build.options",
    "compare_outputs": "exporter.parity.compare",
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
    from exporter.build.options import BuildOptions
    from exporter.build.pipeline import build
    from exporter.build.resize import interpolate_patch_embed, pi_resize_patch_embed, resample_pos_embed
    from exporter.parity.compare import compare_outputs
    from exporter.source.load import load_source
    from exporter.source.model import SourceSpec
    from exporter.source.resampling import ResizeMethod


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'exporter' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
