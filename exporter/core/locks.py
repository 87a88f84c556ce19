"""One writer per destination, and a swap that never leaves the destination missing.

``destination_lock(out)`` holds an exclusive ``flock`` on ``.NAME.lock`` beside ``out`` from the
check of the destination to the end of the swap: a second ``build``/``triton``/``engine`` aimed at
the same folder is refused at once, naming the process that holds it. The kernel drops a
``flock`` when its holder dies (even by SIGKILL), so a lock is never stale; the file itself is
removed by its holder on the way out.

``exchange(a, b)`` swaps two folders in one step (Linux ``renameat2(RENAME_EXCHANGE)``): a
reader that opens ``out`` by name meanwhile finds the old bundle or the new one, never nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from exporter.core.errors import BundleError, param
from exporter.core.names import printable

try:
    import fcntl
except ImportError:  # not POSIX: no lock, the swap's re-check still guards the destination
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def lock_path(out: Path) -> Path:
    return out.absolute().parent / f".{out.name}.lock"


def holder(out: Path) -> int | None:
    """The PID named in ``out``'s lock file when that process is alive (a hint for messages:
    asking ``flock`` itself would take the lock for a moment, and could refuse a build)."""

    path = lock_path(out)
    try:
        text = path.read_text(encoding="ascii").strip() if path.is_file() and not path.is_symlink() else ""
    except (OSError, UnicodeDecodeError):
        return None
    pid = int(text) if text.isdigit() and len(text) < 8 else None
    return pid if pid is not None and pid != os.getpid() and process_alive(pid) else None


def _pid_in(fd: int) -> int | None:
    text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    return int(text) if text.isdigit() else None


@contextmanager
def destination_lock(out: Path, what: str = param("out"), required: bool = True) -> Iterator[None]:
    """Hold ``out``'s lock while the block runs; ``BundleError`` naming the holder's PID when
    another process holds it (``what``: how its messages name ``out``). The parent folder is
    created if needed (the lock lives there). ``required=False``: where the parent cannot be
    written (a bundle mounted on its own into a container), run unlocked rather than refuse."""
    if fcntl is None:
        yield
        return
    path = lock_path(out)
    if not required and not os.access(path.parent, os.W_OK | os.X_OK):
        log.info("not locking %s: its folder %s is not writable", out, path.parent)
        yield
        return
    shown = printable(str(out))
    made = [p for p in (path.parent, *path.parent.parents) if not p.exists()]  # removed again when still empty
    try:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            where = printable(str(path.parent))
            raise BundleError(f"cannot create the folder {where!r} for {what}: {exc.strerror}") from exc
        fd = _acquire(path, shown, what)
        try:
            with suppress(OSError):  # naming the holder is a courtesy: a full disk must not stop the lock
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            yield
        finally:
            with suppress(OSError):
                os.unlink(path)  # still ours: whoever opens it next re-checks that it is the file on disk
            os.close(fd)
    finally:
        for folder in made:  # deepest first; a refused or failed command leaves no empty folder behind
            with suppress(OSError):
                folder.rmdir()


def _acquire(path: Path, shown: str, what: str) -> int:
    """An fd of the lock file with the lock held. A file its holder removed while we opened it is
    not the lock any more: open again."""
    assert fcntl is not None
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, 0o644)
        except OSError as exc:
            raise BundleError(
                f"cannot open {printable(str(path))!r}, the lock for {what} {shown!r}: {exc.strerror} "
                "(remove it if it is not ours, or choose another folder)"
            ) from exc
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # a FIFO or device someone put there
            os.close(fd)
            raise BundleError(f"{printable(str(path))!r} is not a regular file: remove it (it is {what}'s lock)")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _pid_in(fd)
            os.close(fd)
            who = f"PID {pid}" if pid else "another process"
            raise BundleError(
                f"{what} {shown!r} is being written by another flexiexport ({who}); "
                f"wait for it to finish, or choose another {what}"
            ) from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path, follow_symlinks=False).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)


def _renameat2() -> object | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name, use_errno=True)
        return libc.renameat2
    except (OSError, AttributeError, TypeError):
        return None


def exchange(a: Path, b: Path) -> bool:
    """Swap folders ``a`` and ``b`` atomically; False where the system cannot (no
    ``renameat2``, a file system without RENAME_EXCHANGE), and nothing was changed."""
    call = _renameat2()
    if call is None:
        return False
    result = call(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)  # type: ignore[operator]
    if result == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(b))


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
