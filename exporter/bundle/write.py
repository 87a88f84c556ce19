"""Writing bundles and repositories: what may be replaced (checked first, and again at the swap),
the staging folder beside ``--out``, and the locked swap that never leaves ``--out`` missing."""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from exporter.bundle.door import Bundle
from exporter.bundle.manifest import ARTEFACTS, walk
from exporter.bundle.records import relative_path
from exporter.core.errors import BundleError, Interrupted, param
from exporter.core.files import current_umask, write_atomic
from exporter.core.locks import exchange, process_alive
from exporter.core.mounts import is_mount_point, mounts_inside
from exporter.core.names import printable

log = logging.getLogger(__name__)

REPOSITORY_MARKER = "flexiexport-repository.json"


def _real(path: Path) -> Path:
    return Path(os.path.realpath(path))


def _contains(folder: Path, path: Path) -> bool:
    return _real(path).is_relative_to(_real(folder))


def check_destination(out: Path, what: str, protect: Iterable[Path] = (), enclosing: Iterable[Path] = ()) -> None:
    """Refuse a destination that is a file, a mount point, or holds (or lies above) a protected
    path: a command's own input, the source checkpoint, the current directory; or that lies
    inside one of the ``enclosing`` folders (an input bundle, whose files it would change)."""
    shown = printable(str(out))
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise BundleError(f"{what} {shown!r} is a file or a link; give a folder path")
    if out.is_dir() and is_mount_point(out):
        raise BundleError(
            f"{what} {shown!r} is a mount point, which cannot be replaced by a rename; "
            f"give a folder inside it, e.g. {printable(str(out / 'bundle'))!r}"
        )
    inner = mounts_inside(out) if out.is_dir() else []
    if inner:
        raise BundleError(
            f"{what} {shown!r} holds a mount point ({printable(inner[0])}): replacing it would remove "
            "what that file system holds; choose another folder"
        )
    for path in [Path.cwd(), *protect]:
        if _contains(out, path):
            kind = "the current directory" if path == Path.cwd() else printable(str(path))
            raise BundleError(f"{what} {shown!r} holds {kind}: refusing to write there; choose another folder")
    for path in enclosing:
        if path.is_dir() and _contains(path, out):
            raise BundleError(
                f"{what} {shown!r} lies inside {printable(str(path))!r}, an input of this command; "
                "choose a folder outside it"
            )
    parent = out.absolute().parent
    made = absent_folders(parent)
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        remove_empty(made)
        raise BundleError(f"cannot create the folder {printable(str(parent))!r} for {what}: {exc.strerror}") from exc
    writable = os.access(parent, os.W_OK | os.X_OK)
    remove_empty(made)  # made again when the output is written: a refused or failed command leaves none behind
    if not writable:
        raise BundleError(f"cannot write to {printable(str(parent))!r}: permission denied (choose another folder)")


def absent_folders(folder: Path) -> list[Path]:
    """``folder`` and those above it that do not exist, deepest first."""
    return [p for p in (folder, *folder.parents) if not p.exists()]


def remove_empty(folders: list[Path]) -> None:
    """Remove the ``folders`` (deepest first) that are still empty."""
    for folder in folders:
        with suppress(OSError):
            folder.rmdir()


def check_replaceable_bundle(out: Path, force: bool, resume: bool, protect: Iterable[Path] = ()) -> None:
    """``build --out``: an empty or absent folder, or (with --force/--resume) one of our bundles
    that holds nothing the manifest does not account for."""
    check_destination(out, param("out"), protect)
    if not (out.is_dir() and any(out.iterdir())):
        return
    shown = printable(str(out))
    try:
        existing = Bundle.open(out)
    except BundleError as exc:
        raise BundleError(
            f"{param('out')} {shown!r} is a non-empty folder that is not a flexiexport bundle ({exc}); "
            f"refusing to replace it, choose another {param('out')}"
        ) from exc
    if not (force or resume):
        raise BundleError(
            f"a bundle already exists at {shown!r}; pass {param('force')} to replace it "
            f"or {param('resume')} to reuse its unchanged variants"
        )
    extra = existing.unexpected_files()
    if extra:
        listed = ", ".join(printable(e) for e in extra[:5]) + (f" and {len(extra) - 5} more" if len(extra) > 5 else "")
        raise BundleError(
            f"{param('out')} {shown!r} holds files the bundle's manifest does not account for ({listed}); "
            f"refusing to replace it: move them away or choose another {param('out')}"
        )


def check_replaceable_repository(repo: Path, force: bool, protect: Iterable[Path] = ()) -> None:
    """``triton --out``: an empty or absent folder, or (with --force) a repository we wrote whose
    files are exactly those its marker lists."""
    protect = list(protect)
    check_destination(repo, param("repo"), protect, enclosing=protect)
    if not (repo.is_dir() and any(repo.iterdir())):
        return
    shown = printable(str(repo))
    if not force:
        raise BundleError(
            f"{param('repo')} {shown!r} is not empty; pass {param('force')} to replace a repository flexiexport wrote"
        )
    listed = repository_files(repo)
    if listed is None:
        raise BundleError(
            f"{param('repo')} {shown!r} is not a model repository flexiexport wrote (no valid {REPOSITORY_MARKER}); "
            f"refusing to replace it, choose another {param('repo')}"
        )
    present = {e.rel for e in walk(repo) if not e.is_dir}
    extra = sorted(rel for rel in present - listed - {REPOSITORY_MARKER} if not _written_while_serving(rel))
    if extra:
        raise BundleError(
            f"{param('repo')} {shown!r} holds files flexiexport did not write "
            f"({', '.join(printable(e) for e in extra[:5])}); "
            "refusing to replace it"
        )


def _written_while_serving(rel: str) -> bool:
    """Files Triton's Python backend leaves in a repository we wrote: the bytecode of ``model.py``
    and a bundle copy's latency probe (``<model>/<version>/bundle/latency.json``)."""
    parts = rel.split("/")
    bytecode = len(parts) == 4 and parts[2] == "__pycache__" and parts[3].endswith(".pyc")
    probe = len(parts) == 4 and parts[1].isdigit() and parts[2] == "bundle" and parts[3] in ARTEFACTS
    return bytecode or probe


def repository_files(repo: Path) -> set[str] | None:
    """The files a repository's marker lists, or None when there is no readable marker."""
    marker = repo / REPOSITORY_MARKER
    if marker.is_symlink() or not marker.is_file():
        return None
    try:
        data = json.loads(marker.read_text())
        files = data["files"]
        if data.get("tool") != "flexiexport" or not isinstance(files, list):
            return None
        return {relative_path(str(f)) for f in files}
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        return None


def write_repository_marker(repo: Path, bundle: Path) -> None:

    files = sorted(e.rel for e in walk(repo) if e.is_file)
    text = json.dumps({"tool": "flexiexport", "bundle": str(bundle.absolute()), "files": files}, indent=2)
    write_atomic(repo / REPOSITORY_MARKER, text + "\n")


# What our staging (mkdtemp's 8-character suffix) and moved-aside folders are called; each also
# holds TEMP_MARKER naming the folder itself, so a user's folder of a similar name is never ours.
_TEMP = re.compile(r"\.(?P<name>.+)\.(?:tmp-(?P<pid>\d{1,7})-[A-Za-z0-9_]{8}|old-(?P<old_pid>\d{1,7})-\d{13})")


TEMP_MARKER = ".flexiexport-temporary"


_HANDLED = tuple(s for s in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)) if s is not None)


def remove_stale_temporaries(out: Path) -> list[Path]:
    """Remove ``.NAME.tmp-PID-*`` / ``.NAME.old-PID-*`` folders beside ``out`` left by a process
    that no longer runs (killed with SIGKILL, a power cut)."""
    parent = out.absolute().parent
    removed: list[Path] = []
    if not parent.is_dir():
        return removed
    for path in parent.glob(f".{out.name}.*-*"):
        match = _TEMP.fullmatch(path.name)
        if not match or match["name"] != out.name or not is_marked_temporary(path):
            continue
        if not process_alive(int(match["pid"] or match["old_pid"])):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
            log.info("removed %s, left by an interrupted run", path)
    return removed


def mark_temporary(folder: Path) -> None:
    (folder / TEMP_MARKER).write_text(folder.name)


def is_marked_temporary(folder: Path) -> bool:
    """A real folder (no link) holding our marker with its own name: one of our temporaries."""
    marker = folder / TEMP_MARKER
    try:
        return (
            folder.is_dir()
            and not folder.is_symlink()
            and not marker.is_symlink()
            and marker.read_text() == folder.name
        )
    except (OSError, UnicodeDecodeError):
        return False


@contextmanager
def staging_folder(out: Path) -> Iterator[Path]:
    """A temporary folder beside ``out``, named after this process; removed on any failure,
    interrupt or termination signal."""
    remove_stale_temporaries(out)
    parent = out.absolute().parent
    made = absent_folders(parent)  # removed again on failure, when still empty
    with signals_deferred() as received:  # an interrupt here must not leave an unmarked folder behind
        try:
            parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-{os.getpid()}-", dir=parent))
            tmp.chmod(0o777 & ~current_umask())  # mkdtemp makes it private; a bundle is an ordinary folder
            mark_temporary(tmp)
        except OSError as exc:
            raise BundleError(f"cannot write to {printable(str(out.absolute().parent))!r}: {exc.strerror}") from exc
    try:
        if received:
            raise KeyboardInterrupt(signal.Signals(received[0]).name)
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        remove_empty(made)  # one that now holds the output is not empty


@contextmanager
def signals_deferred() -> Iterator[list[int]]:
    """Hold SIGINT/SIGTERM/SIGHUP until the block ends; yields the list of signals that came."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return
    previous = {s: signal.getsignal(s) for s in _HANDLED}
    for s in _HANDLED:
        signal.signal(s, lambda signum, frame: received.append(signum))
    try:
        yield received
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def swap_into_place(
    tmp: Path, out: Path, what: str = "bundle", replaceable: Callable[[Path], object] | None = None
) -> None:
    """Put ``tmp`` in place at ``out``; an existing ``out`` is swapped out and removed after.
    ``replaceable`` (a check that raises ``BundleError``) judges again, at the swap, whatever is at
    ``out`` now, and what was swapped out before it is removed: a folder that appeared or changed
    during the build is never replaced unless the same judgement allows it. Where the system
    has ``renameat2``, the swap is one exchange (readers find the old folder or the new one,
    never none). Signals are held meanwhile: once the swap starts it finishes, and an interrupt
    that came during it is reported afterwards as what it is (the new folder is complete)."""
    with signals_deferred() as received:
        _swap(tmp, out, what, replaceable)
    if received:
        raise Interrupted(
            f"interrupted ({signal.Signals(received[0]).name}) after the new {what} was complete; "
            f"it is in place at {printable(str(out))}"
        )


def _judge_at_swap(out: Path, what: str, replaceable: Callable[[Path], object] | None) -> None:
    if replaceable is None:
        return
    try:
        replaceable(out)
    except BundleError as exc:
        raise BundleError(
            f"{exc} (found when the new {what} was ready: it changed during the run; nothing was replaced)"
        ) from exc


def _swap(tmp: Path, out: Path, what: str, replaceable: Callable[[Path], object] | None) -> None:

    _judge_at_swap(out, what, replaceable)
    (tmp / TEMP_MARKER).unlink(missing_ok=True)
    try:
        if out.exists() and exchange(tmp, out):
            old = tmp  # the exchange left the old folder at the staging path
            try:
                _judge_at_swap(old, what, replaceable)  # nothing arrived between the check and the exchange
            except BundleError:
                exchange(tmp, out)  # put it back as it was, and say so naming --out
                _judge_at_swap(out, what, replaceable)
                raise
            mark_temporary(old)  # killed from here on, the next run knows the folder is ours
            shutil.rmtree(old, ignore_errors=True)
            return
        _replace_by_renames(tmp, out)
    except BaseException:
        if tmp.is_dir():
            mark_temporary(tmp)  # whichever folder is left there is ours to remove
        raise


def _replace_by_renames(tmp: Path, out: Path) -> None:
    """The swap in two renames, where no exchange is possible (or nothing is at ``out``)."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}-{int(time.time() * 1000)}")
        os.replace(out, old)
        mark_temporary(old)
    try:
        os.replace(tmp, out)
    except OSError as exc:
        if old is not None:
            os.replace(old, out)
        if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):  # a folder appeared after the check
            raise BundleError(
                f"{printable(str(out))!r} appeared while this run wrote its output; nothing was replaced"
            ) from exc
        raise
    except BaseException:
        if old is not None:
            os.replace(old, out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
