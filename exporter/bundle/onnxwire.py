"""Read what the device needs from an ONNX file straight from the protobuf wire format.

The device has no ``onnx`` package (the runtime must not import it), and what it needs is small:
node names by op type (the LayerNorms TensorRT pins to FP32) and where each external-data
initializer lives (to load a ``--shared-weights`` file once). Initializers' data are skipped by
length, never parsed. Field numbers are onnx.proto's: ModelProto.graph = 7; GraphProto.node = 1,
.initializer = 5; NodeProto.name = 3, .op_type = 4; TensorProto.dims = 1, .data_type = 2,
.name = 8, .raw_data = 9, .external_data = 13 (key = 1, value = 2), .data_location = 14.
"""

from __future__ import annotations

import mmap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from exporter.core.errors import BundleError

EXTERNAL = 1  # TensorProto.DataLocation.EXTERNAL


def varint(buf: Any, pos: int) -> tuple[int, int]:
    """The varint at ``buf[pos]`` and the position after it."""
    value = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise ValueError("a varint longer than 10 bytes")


def fields(buf: Any, start: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """Protobuf wire format: ``(field number, wire type, start, end)`` of each field in
    ``buf[start:end]``; a varint's value is in ``start`` (``end`` is -1)."""
    pos = start
    while pos < end:
        key, pos = varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = varint(buf, pos)
            yield number, wire, value, -1
            continue
        if wire == 2:
            size, pos = varint(buf, pos)
            yield number, wire, pos, pos + size
            pos += size
        elif wire in (1, 5):
            pos += 8 if wire == 1 else 4
        else:
            raise ValueError(f"wire type {wire} (protobuf groups) does not occur in ONNX")
    if pos != end:
        raise ValueError("a field runs past the end of its message")


def _graphs(buf: Any) -> list[tuple[int, int]]:
    return [(s, e) for n, w, s, e in fields(buf, 0, len(buf)) if n == 7 and w == 2]


def _text(buf: Any, start: int, end: int) -> str:
    return bytes(buf[start:end]).decode()


def _read(onnx_path: Path, parse: Any) -> Any:
    """``parse(buf)`` on the memory-mapped file; a malformed file is ``BundleError``."""
    try:
        with open(onnx_path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            return parse(buf)
    except (OSError, ValueError, IndexError, UnicodeDecodeError) as exc:
        raise BundleError(f"{onnx_path.name} is not an ONNX file we can read ({exc})") from exc


def onnx_node_names(onnx_path: Path, op_type: str) -> tuple[str, ...]:
    """Names of the main graph's ``op_type`` nodes."""

    def parse(buf: Any) -> tuple[str, ...]:
        names = []
        for g_start, g_end in _graphs(buf):
            for n, w, start, end in fields(buf, g_start, g_end):
                if n != 1 or w != 2:
                    continue
                node = {k: _text(buf, a, b) for k, kw, a, b in fields(buf, start, end) if kw == 2 and k in (3, 4)}
                if node.get(4) == op_type:
                    names.append(node.get(3, ""))
        return tuple(names)

    return _read(onnx_path, parse)


@dataclass(frozen=True)
class ExternalTensor:
    """One initializer whose bytes live in an external-data file: ``length`` bytes at
    ``offset`` of ``location`` (relative to the model file), ``data_type`` as in onnx.proto."""

    name: str
    data_type: int
    dims: tuple[int, ...]
    location: str
    offset: int
    length: int


def _dims(buf: Any, wire: int, start: int, end: int) -> list[int]:
    if wire == 0:
        return [start]
    values, pos = [], start  # packed
    while pos < end:
        value, pos = varint(buf, pos)
        values.append(value)
    return values


def _tensor(buf: Any, start: int, end: int) -> ExternalTensor | None:
    name, data_type, location_kind = "", 0, 0
    dims: list[int] = []
    entries: dict[str, str] = {}
    for n, w, a, b in fields(buf, start, end):
        if n == 1:
            dims += _dims(buf, w, a, b)
        elif n == 2 and w == 0:
            data_type = a
        elif n == 8 and w == 2:
            name = _text(buf, a, b)
        elif n == 14 and w == 0:
            location_kind = a
        elif n == 13 and w == 2:
            entry = {k: _text(buf, s, e) for k, kw, s, e in fields(buf, a, b) if kw == 2}
            entries[entry.get(1, "")] = entry.get(2, "")
    if location_kind != EXTERNAL:
        return None
    if "location" not in entries:
        raise ValueError(f"initializer {name!r} is external but names no location")
    offset, length = int(entries.get("offset", "0")), int(entries.get("length", "-1"))
    return ExternalTensor(name, data_type, tuple(dims), entries["location"], offset, length)


def external_tensors(onnx_path: Path) -> tuple[ExternalTensor, ...]:
    """The main graph's initializers stored as external data, in file order."""

    def parse(buf: Any) -> tuple[ExternalTensor, ...]:
        found = []
        for g_start, g_end in _graphs(buf):
            for n, w, start, end in fields(buf, g_start, g_end):
                if n == 5 and w == 2:
                    tensor = _tensor(buf, start, end)
                    if tensor is not None:
                        found.append(tensor)
        return tuple(found)

    return _read(onnx_path, parse)
