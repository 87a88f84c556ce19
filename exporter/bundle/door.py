"""The one door to a bundle on disk: open it, read and check its files, write and replace it.

A bundle is a trust boundary. Everything read from ``manifest.json`` is data:

- the manifest is parsed into typed records (pydantic v2, strict JSON mode): a wrong type or an
  out-of-range number is one ``BundleError`` naming the field (``variants[0].tokens``);
- every path in it must be a plain relative path (no absolute path, no ``..``) and must resolve,
  after symlinks, inside the bundle's own folder;
- a file's sha256 is checked against the manifest before any command uses it.

Writing: a new bundle (or model repository) is built in a staging folder beside its destination
and renamed into place. ``--force``/``--resume`` replace only a folder that is one of ours and
holds nothing we did not write, never one that holds or lies above a command's own inputs or the
current directory, never a mount point (nor a folder holding one). One writer per destination
(``exporter.core.locks``, held by the caller from its check to the end of the swap); the swap judges
the destination again and exchanges the folders in one step where the system can, and a reader
whose bundle was swapped out under it raises ``BundleReplaced`` rather than judge a mix. The
rename is shielded from SIGINT/SIGTERM/SIGHUP so an interrupt leaves either the old bundle or
the new one, and the message says which.

Why pydantic rather than msgspec: both validate JSON into typed records with located errors;
pydantic's constrained types (patterns, bounds, our own path validator) say the rules next to the
fields, it is the more widely kept of the two, and it ships wheels for every platform we deploy
to (x86-64, aarch64 for Jetson). Speed does not matter here: a manifest is a few kilobytes.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from exporter.bundle.manifest import ARTEFACTS, MANIFEST, REPORT, walk
from exporter.bundle.records import OnnxEntry, ReducedEntry, VariantRecord, relative_path
from exporter.bundle.schema import Manifest, parse_manifest
from exporter.core.errors import BundleError, BundleReplaced
from exporter.core.files import sha256_file
from exporter.core.locks import holder
from exporter.core.names import printable
from exporter.core.precision import Precision

log = logging.getLogger(__name__)


def _inside(root: Path, rel: str) -> Path:
    """``root/rel`` when its real path lies inside ``root``'s real path; ``BundleError`` otherwise."""
    relative_path(rel)  # the schema checked it already; a second look costs nothing
    real = Path(os.path.realpath(root / rel))
    if not real.is_relative_to(Path(os.path.realpath(root))):
        raise BundleError(f"{printable(rel)!r} in the bundle's manifest leads outside the bundle: refused")
    return root / rel


@dataclass(frozen=True)
class Bundle:
    """An opened bundle: its folder and validated manifest. File access goes through ``file``,
    which resolves the path inside the folder and checks the sha256 before handing it out."""

    root: Path
    manifest: Manifest
    _verified: dict[str, Path] = field(default_factory=dict, repr=False, compare=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)
    identity: tuple[int, int] | None = field(default=None, repr=False, compare=False)  # the folder's (dev, inode)

    @classmethod
    def open(cls, path: Path) -> Bundle:
        """The bundle at ``path``, read from one folder: a build that swaps a new bundle in
        meanwhile makes the read start again (at most twice), then ``BundleReplaced``."""
        for _ in range(3):
            before = _identity(path)
            bundle = cls._open(path)
            if before is not None and _identity(path) == before:
                return replace(bundle, identity=before)
        raise BundleReplaced(replaced_text(path))

    @classmethod
    def _open(cls, path: Path) -> Bundle:
        if not path.is_dir():
            raise BundleError(f"bundle {printable(str(path))!r} does not exist or is not a folder" + _replacing(path))
        manifest_path = path / MANIFEST
        if not manifest_path.is_file():
            raise BundleError(f"{printable(str(path))!r} is not a flexiexport bundle: no {MANIFEST}" + _replacing(path))
        _inside(path, MANIFEST)
        if manifest_path.stat().st_size > 64 << 20:
            raise BundleError(f"{manifest_path} is larger than 64 MB: not a manifest we wrote")
        manifest = parse_manifest(manifest_path.read_bytes(), str(manifest_path))
        bundle = cls(path, manifest)
        for rel, _ in bundle.files():
            _inside(path, rel)  # every path, before any command uses one
        for entry in walk(path):
            if entry.is_link:  # a file the manifest does not name can still be read: an ONNX's external data
                _inside(path, entry.rel)
        return bundle

    def files(self) -> list[tuple[str, str]]:
        """(relative path, sha256) of every file the manifest names."""
        m = self.manifest
        found: list[tuple[str, str]] = []
        for record in m.variants:
            found += record.files()
        if m.shared_weights:
            found.append((m.shared_weights.path, m.shared_weights.sha256))
        for entry in m.engines.values():
            found += [(variant.engine, variant.engine_sha256) for variant in entry.built.values()]
        return list(dict.fromkeys(found))

    def file(self, rel: str, sha256: str) -> Path:
        """The checked path of a file the manifest names: inside the bundle, a regular file, and
        with the recorded sha256 (checked once per opened bundle)."""
        key = f"{rel}\0{sha256}"
        with self._lock:
            if key in self._verified:
                return self._verified[key]
        path = _inside(self.root, rel)
        if not path.is_file():
            self.check_unchanged()  # not missing: a new bundle was swapped in
            raise BundleError(f"{self.root / rel} is missing (named in the bundle's manifest)")
        if sha256_file(path) != sha256:
            self.check_unchanged()  # a new bundle swapped in is not a changed file
            raise BundleError(f"{self.root / rel} has changed since the build (sha256 differs from the manifest)")
        self.check_unchanged()  # the file hashed was this bundle's
        with self._lock:
            self._verified[key] = path
        return path

    def check_unchanged(self) -> None:
        """``BundleReplaced`` when the folder at ``root`` is no longer the one opened (a build
        swapped a new bundle in): what was read so far is not all from one bundle."""
        if self.identity is not None and _identity(self.root) != self.identity:
            raise BundleReplaced(replaced_text(self.root))

    def verify_all(self) -> None:
        """Check every file the manifest names; the first problem raises ``BundleError``."""
        for rel, sha in self.files():
            self.file(rel, sha)

    def problems(self, rel: str, sha256: str) -> str:
        """Why ``file`` would refuse ``rel`` ('' when it would not)."""
        try:
            self.file(rel, sha256)
        except BundleReplaced:
            raise
        except BundleError as exc:
            return str(exc)
        return ""

    def onnx(self, record: VariantRecord, precision: str = Precision.FP32) -> Path:
        """A variant's checked ONNX file (fp32, or its fp16/int8 one), with its shared weights."""
        entry: OnnxEntry | ReducedEntry | None = record.onnx if precision == Precision.FP32 else record.reduced
        if entry is None or (isinstance(entry, ReducedEntry) and entry.precision != precision):
            raise BundleError(f"the bundle has no {precision} ONNX for {record.label}")
        if record.onnx.external_data or entry.external_data:
            sw = self.manifest.shared_weights
            if not sw:
                raise BundleError(f"{record.label}'s ONNX uses external data, but the manifest names no shared file")
            self.file(sw.path, sw.sha256)
        return self.file(entry.path, entry.sha256)

    def variant_problems(self, record: VariantRecord) -> str:
        """Why a variant's files cannot be used, '' when each is inside the bundle, present and as
        built: its fp32 ONNX and fp16/int8 one (with the shared weights they read), its reference."""
        problems = []
        for precision in (Precision.FP32, *([record.reduced.precision] if record.reduced else [])):
            try:
                self.onnx(record, precision)
            except BundleReplaced:
                raise
            except BundleError as exc:
                problems.append(str(exc))
        if record.reference:
            problems.append(self.problems(record.reference.path, record.reference.sha256))
        for check in record.dynamic.checks if record.dynamic else ():
            problems.append(self.problems(check.reference.path, check.reference.sha256))
        return "; ".join(dict.fromkeys(p for p in problems if p))

    def artefact(self, name: str) -> Path:
        """Where a command writes one of ``ARTEFACTS`` into the bundle."""
        if name not in ARTEFACTS:
            raise BundleError(f"{name!r} is not a bundle artefact ({', '.join(ARTEFACTS)})")
        path = self.root / name
        if path.is_symlink() or (path.exists() and not path.is_file()):
            raise BundleError(f"{path} is not a regular file: refusing to write it")
        return path

    def read_artefact(self, name: str) -> Any | None:
        """A JSON artefact (bench.json, eval.json) when present and parseable, else None."""
        path = self.artefact(name)
        if not path.is_file():
            return None
        if path.stat().st_size > 16 << 20:
            log.warning("ignoring %s: larger than 16 MB, not one we wrote", path)
            return None
        try:
            data = json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError, RecursionError):
            log.warning("ignoring %s: not valid JSON", path)
            return None
        return data if isinstance(data, dict) else None

    def accounted(self) -> set[str]:
        """Every relative path we may have written into this bundle."""
        known = {MANIFEST, REPORT, *ARTEFACTS, *(rel for rel, _ in self.files())}
        for name, entry in self.manifest.engines.items():
            known.add(entry.script or f"engines/build_{name}.sh")
            known.add(f"engines/build_{name}.sh")
            for record in self.manifest.variants:
                engine = f"engines/{name}/model_{record.label}.engine"
                known |= {engine, engine + ".json"}
        return known

    def unexpected_files(self) -> list[str]:
        """Files in the folder that the manifest does not account for (our stale temporaries aside)."""
        known = self.accounted()
        engine_dirs = {f"engines/{name}" for name in self.manifest.engines}
        found = []
        for entry in walk(self.root):
            rel = entry.rel
            if entry.is_dir or _our_temporary(rel):
                continue
            in_engines = rel.rsplit("/", 1)[0] in engine_dirs and rel.endswith((".cache", ".timing.cache"))
            if rel not in known and not in_engines:
                found.append(rel)
        return found


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def replaced_text(path: Path) -> str:
    return (
        f"bundle {printable(str(path))!r} is being replaced (a build put a new one in place while this "
        "command read it); nothing was judged: retry"
    )


def _replacing(path: Path) -> str:
    """What to add when a folder is missing because a build is replacing it right now."""

    pid = holder(path)
    return "" if pid is None else f" (flexiexport PID {pid} is writing it: retry when it is done)"


def _our_temporary(rel: str) -> bool:
    """Files and folders our own writers leave while they work (``write_atomic``, engine staging)."""
    name = rel.rsplit("/", 1)[-1]
    return any(part.startswith(".engines-") for part in rel.split("/")) or bool(
        re.fullmatch(r"\..+\.[A-Za-z0-9_]{8}\.tmp", name)
    )


# --- staging, swapping and interrupts -----------------------------------------------------------


def read_manifest(path: Path) -> Manifest:
    """The validated manifest of the bundle at ``path`` (its files are not hashed: use ``Bundle``)."""
    return Bundle.open(path).manifest
