"""One exception hierarchy for the whole package.

Only ``exporter.cli.app`` maps these to exit codes and user-facing text; library code raises them
with a message that names the offending value and what would have been valid.
"""

from __future__ import annotations

import errno

DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


class FlexiExportError(Exception):
    """Base class. ``exit_code`` is what the CLI returns for this kind of failure."""

    exit_code = 1


class UsageError(FlexiExportError, ValueError):
    """Bad usage or input: a value out of range, a missing file, an unwritable output."""

    exit_code = 2


class ImageErrors(UsageError):
    """Several files that cannot be used, each one ``error:`` line of its own naming its file
    (the CLI prints ``lines``); ``str()`` is all of them on one line, for library callers."""

    def __init__(self, lines: list[str]) -> None:
        self.lines = list(lines)
        super().__init__("; ".join(self.lines))


class PatchSizeError(UsageError):
    """A patch size that is not a positive integer, or that does not fit the image."""


class ImageSizeError(UsageError):
    """An image size that the requested patch size does not divide."""


class CheckpointError(UsageError):
    """A checkpoint that cannot be read, or that holds no usable ViT."""


class BundleError(UsageError):
    """A bundle folder that is missing, malformed, or would be clobbered."""


class BundleReplaced(BundleError):
    """The bundle's folder was swapped for a new one (a build finished) while a command read it:
    what was read is not one bundle, so nothing is judged; the command may simply be run again."""


class DiskFullError(UsageError):
    """The disk (or the user's quota) filled up while writing ``path``; the CLI adds what to do."""

    def __init__(self, path: object) -> None:
        super().__init__(f"no space left on device while writing {path}")
        self.path = path


def full_disk_cause(exc: BaseException | None) -> OSError | None:
    """The ENOSPC/EDQUOT ``OSError`` that ``exc`` is or was raised from (libraries often wrap it)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


class ValidationFailed(FlexiExportError):
    """At least one variant failed its numerical parity check."""

    exit_code = 3


class EnvironmentMissing(FlexiExportError):
    """The environment lacks what a stage needs (no TensorRT, no GPU, no network)."""

    exit_code = 4


class EngineLoadError(EnvironmentMissing):
    """A TensorRT engine this TensorRT or GPU cannot load (built for another GPU or version)."""


class Interrupted(FlexiExportError):
    """SIGINT/SIGTERM/SIGHUP arrived while a bundle was being swapped into place: the swap was
    finished first, so the new bundle is complete; the message says where."""

    exit_code = 130


class Unavailable(Exception):
    """A backend that cannot run in this environment; the message says why."""
