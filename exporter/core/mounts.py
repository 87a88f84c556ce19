"""Mount points as the kernel lists them, not as ``os.path.ismount`` guesses them.

``os.path.ismount`` compares a folder's device with its parent's, so a bind mount of a folder
on the same file system (how docker mounts a volume) looks like an ordinary folder: a rename
onto it fails at the very end with EBUSY, and ``shutil.rmtree`` would empty it. Linux lists
every mount point in ``/proc/self/mountinfo``; elsewhere ``ismount`` is all there is.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

MOUNTINFO = Path("/proc/self/mountinfo")
_OCTAL = re.compile(r"\\([0-7]{3})")


def unescape(field: str) -> str:
    """A mountinfo path field as the path it is: the kernel writes space, tab, newline and
    backslash as ``\\040``, ``\\011``, ``\\012`` and ``\\134``."""
    return _OCTAL.sub(lambda m: chr(int(m[1], 8)), field)


def mount_points(mountinfo: Path = MOUNTINFO) -> frozenset[str]:
    """Every mount point of this process's mount namespace (empty where there is no mountinfo)."""
    try:
        text = mountinfo.read_text(encoding="utf-8", errors="surrogateescape")
    except OSError:
        return frozenset()
    # fields: mount ID, parent ID, major:minor, root, mount point, options, ...
    return frozenset(unescape(fields[4]) for line in text.splitlines() if len(fields := line.split(" ")) > 4)


def is_mount_point(path: Path) -> bool:
    """Whether ``path`` (after symlinks) is a mount point, bind mounts included."""
    real = os.path.realpath(path)
    return os.path.ismount(path) or real in mount_points()


def mounts_inside(path: Path) -> list[str]:
    """Mount points strictly inside ``path`` (after symlinks): replacing ``path`` would remove
    what another file system holds."""
    real = Path(os.path.realpath(path))
    return sorted(m for m in mount_points() if Path(m) != real and Path(m).is_relative_to(real))
