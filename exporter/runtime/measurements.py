"""The latency store: ``latency.json`` and ``bench.json`` read as data, and written without loss.

Every reader of measured latencies goes through here (the budget choice, the adaptive model,
the Triton entry model, the frontier, the plot, ``bench``'s merge):

- a row is used only when it is a record of the expected types with finite, positive
  latencies, a batch >= 1, and a variant the bundle has; a file that is not as we write it, or
  rows that are not, are ignored with one warning naming the first problem; never an exception;
- ``latency.json`` keeps one section per machine (``machine_key``: CPU model and machine type):
  the machine that wrote last at the top level (what earlier versions read), the others under
  ``other_machines``.
  A write locks the bundle folder (``flock``), reads the file again, replaces only this
  machine's rows of the same (backend, variant, batch), keeps every other machine's section as
  it was, and renames a complete file into place. A file that is not valid JSON is left alone
  (the new rows are not recorded, with a warning) rather than overwritten.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from exporter.core.errors import BundleError, DiskFullError
from exporter.core.files import write_atomic
from exporter.core.names import printable
from exporter.core.numbers import finite_number
from exporter.runtime.artefacts import (
    BenchRow,
    CheckedBench,
    CheckedEval,
    LatencyFile,
    LatencyRow,
    LatencySection,
    ProbeRow,
)

if TYPE_CHECKING:
    from exporter.bundle.door import Bundle

try:
    import fcntl
except ImportError:  # not POSIX: the write is still atomic, just not serialised
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger("exporter.runtime")
LATENCY = "latency.json"
BENCH = "bench.json"
_warned: set[str] = set()


def warn_once(text: str) -> None:
    """One warning per problem per process (a reader called per batch size says it once)."""
    if text not in _warned:
        _warned.add(text)
        log.warning("%s", text)


def _positive(value: Any, strict: bool = True) -> bool:
    number = finite_number(value)  # a 400-digit integer is no latency (and no OverflowError)
    return number is not None and (number > 0 if strict else number >= 0)


def _pair(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and all(isinstance(v, int) and v >= 0 for v in value)


def row_problem(row: Any, variants: Collection[str], bench: bool = False) -> str:
    """Why a measurement row cannot be used ('' when it can)."""
    if not isinstance(row, dict):
        return f"is a {type(row).__name__}, not a record"
    for key in ("backend", "variant"):
        if not isinstance(row.get(key), str):
            return f"{key} is {printable(repr(row.get(key)))[:40]}, not a string"
    if row["variant"] not in variants:
        return f"variant {printable(row['variant'])[:40]!r} is not in the bundle"
    batch = row.get("batch")
    if not (isinstance(batch, int) and not isinstance(batch, bool) and 1 <= batch <= 1 << 20):
        return f"batch is {printable(repr(batch))[:40]}, not a whole number >= 1"
    for key in ("p50_ms", "p99_ms"):
        if not _positive(row.get(key)):
            return f"{key} is {printable(repr(row.get(key)))[:40]}, not a finite number > 0"
    if bench and not (_pair(row.get("patch_size")) and ("img_size" not in row or _pair(row["img_size"]))):
        return "patch_size or img_size is not a pair of whole numbers"
    return ""


def valid_rows(rows: Any, where: str, variants: Collection[str], bench: bool = False) -> list[LatencyRow]:
    """The usable rows of ``rows`` (``row_problem`` checked each key a ``LatencyRow`` declares, and
    with ``bench`` a ``BenchRow``'s pairs); the others ignored with one warning naming the first problem."""
    if rows is None:
        return []
    if not isinstance(rows, list):
        warn_once(f"ignoring {where}: a {type(rows).__name__}, not a list of rows")
        return []
    kept: list[LatencyRow] = []
    bad: list[str] = []
    for i, row in enumerate(rows):
        problem = row_problem(row, variants, bench)
        if problem:
            bad.append(f"[{i}] {problem}")
        else:
            kept.append(row)
    if bad:
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        warn_once(f"ignoring {len(bad)} of {len(rows)} rows in {where}: {bad[0]}{more}")
    return kept


def row_key(row: Mapping[str, object], *more: str) -> tuple[object, ...]:
    """A row's (backend, variant, batch, *more) as read from a file, compared as ever (1 == 1.0, a
    list as a tuple) and never unhashable: a part that is an object or nests a list matches no row."""
    parts: list[object] = []
    for name in ("backend", "variant", "batch", *more):
        value = row.get(name)
        value = tuple(value) if isinstance(value, list) else value
        if not all(isinstance(v, str | int | float | None) for v in (value if isinstance(value, tuple) else (value,))):
            return (object(),)  # equal to nothing
        parts.append(value)
    return tuple(parts)


def str_in(value: object, names: Collection[str]) -> bool:
    """``value in names`` for a value read from a file (a list there is in no set of names)."""
    return isinstance(value, str) and value in names


def same_machine(machine: Any, here: dict[str, str]) -> bool:
    """A section's ``machine`` is this one: same CPU model, and same machine type where recorded."""
    if not isinstance(machine, dict) or machine.get("cpu") != here["cpu"]:
        return False
    return machine.get("machine") in (None, here["machine"])


def latency_sections(data: Any, where: str) -> list[LatencySection]:
    """``latency.json``'s sections, one per machine (``{"machine": {...}, "rows": [...]}``): the
    top level is the machine that wrote last, ``other_machines`` the others (as in bench.json)."""
    if data is None:
        return []
    if not (isinstance(data, dict) and "rows" in data):
        warn_once(f"ignoring {where}: not a latency file flexiexport wrote")
        return []
    others = data.get("other_machines")
    if others is not None and not isinstance(others, list):
        warn_once(f"ignoring {where} other_machines: a {type(others).__name__}, not a list")
    extra = [s for s in others if isinstance(s, dict)] if isinstance(others, list) else []
    top = {k: v for k, v in data.items() if k != "other_machines"}  # with whatever else it records
    sections = [{"machine": data.get("machine"), "rows": data.get("rows"), **top}, *extra]
    return cast("list[LatencySection]", sections)  # any object is one: nothing in it is vouched for yet


def latency_rows_here(data: Any, where: str, variants: Collection[str], here: dict[str, str]) -> list[LatencyRow]:
    """The usable rows ``latency.json`` holds for this machine."""
    rows: list[LatencyRow] = []
    for i, section in enumerate(latency_sections(data, where)):
        if same_machine(section.get("machine"), here):
            rows += valid_rows(
                section.get("rows"), f"{where} " + (f"other_machines[{i - 1}].rows" if i else "rows"), variants
            )
    return rows


def bench_rows_here(data: Any, where: str, variants: Collection[str], here: dict[str, str]) -> list[LatencyRow]:
    """The usable ``timings`` rows of ``bench.json`` when it was measured on this machine."""
    if not isinstance(data, dict) or not same_machine(data.get("machine"), here):
        return []
    return valid_rows(data.get("timings"), f"{where} timings", variants)  # the budget needs no patch sizes


def checked_bench(data: Any, where: str, variants: Collection[str]) -> CheckedBench | None:
    """``bench.json`` with only its usable timings, for the plot and the frontier; None when it
    has none or its header (machine, threads) is not as we write it."""
    if data is None:
        return None
    machine = data.get("machine") if isinstance(data, dict) else None
    threads = data.get("threads") if isinstance(data, dict) else None
    counted = isinstance(threads, int) and not isinstance(threads, bool)
    if not (isinstance(machine, dict) and isinstance(machine.get("cpu"), str) and counted):
        warn_once(f"ignoring {where}: its machine or threads is not as flexiexport writes them")
        return None
    rows = valid_rows(data.get("timings"), f"{where} timings", variants, bench=True)
    timings = cast("list[BenchRow]", rows)  # their patch_size and img_size checked too
    return cast(CheckedBench, {**data, "timings": timings}) if timings else None


def checked_eval(data: Any, where: str, variants: Collection[str]) -> CheckedEval | None:
    """``eval.json`` with only its usable results, for the plot: a record with a backend, a
    variant the bundle has, a patch size, and a top-1 in [0, 1] (the others ignored with one
    warning); None when it has none."""
    if data is None:
        return None
    rows = data.get("results") if isinstance(data, dict) else None
    if not isinstance(rows, list):
        warn_once(f"ignoring {where}: its results are not a list")
        return None
    kept = [r for r in rows if not _eval_problem(r, variants)]
    if len(kept) < len(rows):
        first = next(_eval_problem(r, variants) for r in rows if _eval_problem(r, variants))
        warn_once(f"ignoring {len(rows) - len(kept)} of {len(rows)} results in {where}: {first}")
    return cast(CheckedEval, {**data, "results": kept}) if kept else None


def _eval_problem(row: Any, variants: Collection[str]) -> str:
    if not isinstance(row, dict):
        return f"a {type(row).__name__}, not a record"
    if not isinstance(row.get("backend"), str) or not str_in(row.get("variant"), variants):
        return "its backend or variant is not one of this bundle"
    top1 = finite_number(row.get("top1"))
    if top1 is None or not 0 <= top1 <= 1:
        return f"top1 is {printable(repr(row.get('top1')))[:40]}, not an accuracy in [0, 1]"
    if not (_pair(row.get("patch_size")) and (row.get("img_size") is None or _pair(row["img_size"]))):
        return "patch_size or img_size is not a pair of whole numbers"
    return ""


@contextmanager
def folder_locked(folder: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``folder`` itself while the block runs: one writer at a time of
    the files in it (a read-only folder can still be locked; the write then fails as it would)."""
    if fcntl is None:
        yield
        return
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def merge_latency(
    previous: Any, here: dict[str, str], rows: Sequence[LatencyRow], variants: Collection[str]
) -> LatencyFile:
    """``latency.json`` after recording ``rows`` measured on this machine: this machine's rows of
    the same (backend, variant, batch) replaced, and those it cannot use dropped (a variant this
    bundle lacks, a latency that is not one); every other machine's section kept as it was."""

    fresh = {row_key(r) for r in rows}
    sections = latency_sections(previous, LATENCY)
    mine = next((s for s in sections if same_machine(s.get("machine"), here)), None)
    found = mine.get("rows") if mine is not None else None
    earlier: list[Any] = found if isinstance(found, list) else []
    kept: list[LatencyRow] = [r for r in earlier if not row_problem(r, variants) and row_key(r) not in fresh]
    section: LatencyFile = {**(mine or {}), "machine": here, "rows": [*kept, *rows]}
    others = [s for s in sections if s is not mine and s.get("rows") != []]  # an empty section holds nothing
    return {**section, "other_machines": others} if others else section


def record_latencies(door: Bundle, rows: Sequence[ProbeRow], here: dict[str, str]) -> None:
    """Merge ``rows`` (this machine's) into the bundle's ``latency.json``: locked, re-read,
    merged, renamed into place. Nothing is recorded (one warning) where the folder cannot be
    written (a read-only model repository) or the present file is not one we can merge into."""

    try:
        path = door.artefact(LATENCY)
        with folder_locked(door.root):
            door.check_unchanged()  # a build swapped a new bundle in: these rows are not of its files
            previous = _read_for_merge(path)
            variants = {v.label for v in door.manifest.variants}
            text = json.dumps(merge_latency(previous, here, rows, variants), indent=2) + "\n"
            write_atomic(path, text)
    except _Unmergeable as exc:
        log.warning("latencies measured but not recorded: %s", exc)
    except (OSError, BundleError, DiskFullError) as exc:  # read-only (a mounted model repository): still used
        log.warning("latencies measured but not recorded: %s", exc)


class _Unmergeable(Exception):
    pass


def _read_for_merge(path: Path) -> Any:
    """The present ``latency.json`` (None when absent); a file we cannot read as JSON is not
    overwritten: it may hold what someone else measured."""
    if not path.is_file():
        return None
    try:
        if path.stat().st_size > 16 << 20:
            raise _Unmergeable(f"{path} is larger than 16 MB (left as it is)")
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise _Unmergeable(f"{path} is not valid JSON (left as it is: move it away to record here)") from exc
    if latency_sections(data, str(path)) == [] and data not in ({}, []):
        raise _Unmergeable(f"{path} is not a latency file flexiexport wrote (left as it is)")
    others = data.get("other_machines") if isinstance(data, dict) else None
    if others is not None and not (isinstance(others, list) and all(isinstance(s, dict) for s in others)):
        raise _Unmergeable(f"{path}: other_machines is not a list of machine sections (left as it is)")
    return data


def read_bench_for_merge(path: Path) -> Any:
    """The present ``bench.json`` (None when absent) for ``bench`` to merge into; ``BundleError``
    (exit 2, nothing overwritten) for one it cannot merge into without losing what it holds: not
    valid JSON, larger than 16 MB, not an object, or an ``other_machines`` that is not a list of
    machine sections. ``bench`` asks before it measures, and again under the lock."""
    if not path.is_file():
        return None
    try:
        if path.stat().st_size > 16 << 20:
            raise _Unmergeable("is larger than 16 MB")
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise BundleError(f"{path} is not valid JSON; left as it is: move it away to bench here") from exc
    except _Unmergeable as exc:
        raise BundleError(f"{path} {exc}; left as it is: move it away to bench here") from None
    others = data.get("other_machines") if isinstance(data, dict) else None
    if not isinstance(data, dict) or not (
        others is None or (isinstance(others, list) and all(isinstance(s, dict) for s in others))
    ):
        raise BundleError(
            f"{path} is not a bench.json flexiexport can merge into; left as it is: move it away to bench here"
        )
    return data


# bench.json's backend names → eval.json's, where they differ (the same fp32 ONNX file)
EVAL_NAMES = {name: "onnxruntime" for name in ("ort-cpu", "ort-cuda", "ort-tensorrt", "tensorrt")}


def accuracies(evaluation: Any, backend: str) -> dict[str, float]:
    """Top-1 by variant from ``eval.json`` for ``backend`` (a bench or runtime name): its own
    rows when evaluated on it, else onnxruntime's of the same precision (the file whose parity
    the build proved), else PyTorch's. Empty when there is no usable eval.json."""
    rows = evaluation.get("results") if isinstance(evaluation, dict) else None
    if not isinstance(rows, list):
        return {}
    name, _, precision = backend.partition(" ")
    wanted = [backend, " ".join(filter(None, (EVAL_NAMES.get(name, name), precision))), "pytorch"]
    found: dict[str, float] = {}
    for choice in reversed(wanted):  # the better source overwrites
        for row in rows:
            top1 = finite_number(row.get("top1")) if isinstance(row, dict) else None
            # a 400-digit integer, NaN or 7.0 is no accuracy (eval.json is data)
            if top1 is not None and 0 <= top1 <= 1 and row.get("backend") == choice and "variant" in row:
                found[str(row["variant"])] = top1
    return found
