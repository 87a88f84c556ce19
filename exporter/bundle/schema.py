"""THE manifest: ``Manifest`` and ``VariantRecord`` (their parts in ``exporter.bundle.records``),
every field typed and bounded, the first error named by its place. ``parse_manifest`` is the one
way a manifest is read; writers build these classes and write ``Manifest.to_json()``."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Annotated, Literal

from pydantic import Field, ValidationError

from exporter.bundle.engines import EngineSet
from exporter.bundle.manifest import EMBEDDINGS_NAME, MANIFEST, SCHEMA_VERSION, upgrade_manifest
from exporter.bundle.records import (
    Entry,
    OptionsRecord,
    PreprocessingRecord,
    SafeName,
    SharedWeights,
    SourceParity,
    SourceRecord,
    VariantRecord,
    _Strict,
)
from exporter.bundle.values import check_values
from exporter.core.errors import BundleError
from exporter.core.names import printable


class Manifest(_Strict):
    """THE manifest: ``Bundle.open`` returns it, the build and the engine stage build it and write
    ``to_json()``. Unknown keys are kept (a newer flexiexport's fields survive a rewrite)."""

    schema_version: Literal[1]
    name: SafeName
    created: str
    versions: dict[str, str]
    source: SourceRecord
    preprocessing: PreprocessingRecord
    options: OptionsRecord
    variants: tuple[VariantRecord, ...] = Field(min_length=1, max_length=256)
    engines: dict[SafeName, EngineSet] = Field(default={})
    shared_weights: Entry[SharedWeights] = None
    labels: tuple[Annotated[str, Field(max_length=512)], ...] = Field(default=(), max_length=1_000_000)
    source_parity: Entry[SourceParity] = None  # absent in bundles built before the check

    @property
    def assumptions(self) -> tuple[str, ...]:
        """What the build assumed, each with what settles it (manifests before the structured
        ``assumptions`` list kept only the ``assumed`` strings)."""
        arch = self.source.architecture
        if arch.assumptions:
            return tuple(f"{r.what} {r.value} ({r.settle})" for r in arch.assumptions)
        return tuple(arch.assumed)

    @property
    def classifier(self) -> bool:
        """Whether the model has a classifier (its outputs are class scores): False for a feature
        model (``num_classes`` 0, or an ``embeddings`` output). Bundles built before feature models
        were named say ``logits`` but still record ``num_classes`` 0."""
        names = {o.name for v in self.variants for o in v.onnx.outputs}
        return self.source.architecture.num_classes != 0 and EMBEDDINGS_NAME not in names

    @property
    def passed(self) -> bool:
        """Every variant passed parity and its TensorRT preflight (skipped is not a failure), no engine
        set failed (pending ones are not failures) and source parity did not fail (inferred or
        skipped is not a failure)."""
        engines_ok = all(e.status != "failed" for e in self.engines.values())
        if any(v.preflight_failed for v in self.variants):  # TensorRT's own parser or builder refused a file
            return False
        source_ok = not self.source_parity or self.source_parity.status != "failed"
        return engines_ok and source_ok and all(v.status == "passed" for v in self.variants)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"


def _where(loc: Sequence[int | str]) -> str:
    """``('variants', 0, 'tokens')`` → ``variants[0].tokens``; a union's branch tags are dropped."""
    text = ""
    for part in loc:
        if isinstance(part, str) and (part in _BRANCHES or "[" in part or part in _record_names()):
            continue
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


_BRANCHES = {"int", "str", "float", "bool", "dict", "list", "tuple", "none", "constrained-int", "constrained-str"}


def _record_names(cls: type[_Strict] = _Strict) -> set[str]:
    """The names of our record classes: pydantic tags a union's branch with its class's name."""
    names: set[str] = set()
    for sub in cls.__subclasses__():
        names |= {sub.__name__, *_record_names(sub)}
    return names


def _first_error(exc: ValidationError) -> str:
    """The first failing field, with what every alternative of a union would have accepted."""
    errors = exc.errors()
    where = _where(errors[0]["loc"])
    same = [e for e in errors if _where(e["loc"]) == where]
    wants = list(dict.fromkeys(e["msg"].removeprefix("Input should be ") for e in same))
    value = same[0].get("input")
    shown = printable(repr(value))[:80] if not isinstance(value, (dict, list)) else type(value).__name__
    others = len({_where(e["loc"]) for e in errors}) - 1
    more = f" (and {others} more)" if others else ""
    text = same[0]["msg"] if len(wants) == 1 else "Input should be " + " or ".join(wants)
    return f"{where}: {text}, got {shown}{more}"


def parse_manifest(text: str | bytes, where: str = MANIFEST) -> Manifest:
    """Manifest JSON validated against the schema, older layouts upgraded, as a ``Manifest``."""
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise BundleError(f"{where} is not valid JSON ({printable(str(exc))[:120]})") from exc
    if isinstance(data, dict) and data.get("schema_version") not in (None, SCHEMA_VERSION):
        raise BundleError(
            f"{where}: schema_version {printable(repr(data.get('schema_version')))[:40]} is not supported "
            f"(this flexiexport reads {SCHEMA_VERSION})"
        )
    data, older = upgrade_manifest(data, where)
    try:
        manifest = Manifest.model_validate_json(json.dumps(data) if older else text)
    except ValidationError as exc:
        raise BundleError(f"{where} is malformed: {_first_error(exc)}") from exc
    labels = [v.label for v in manifest.variants]
    if len(set(labels)) != len(labels):
        raise BundleError(f"{where} is malformed: variant labels repeat ({', '.join(labels)})")
    check_values(manifest.preprocessing, manifest.variants, manifest.engines, where)  # what fields say together
    return manifest
