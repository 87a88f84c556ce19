"""One exception hierarchy for the whole package.

Only the CLI (``exporter.cli.group``) maps these to exit codes and user-facing text; library code
raises them with a message that names the offending value and what would have been valid.

A message that names one of the library's parameters (a field of ``BuildOptions``, an argument
of a function) writes the name with ``param``, never as a command-line flag::

    raise UsageError(f"{param('num_heads')} must be a positive integer, got {num_heads}")

The error carries the names as values (``exc.params == ("num_heads",)``). ``str(exc)`` words each
as the parameter a Python caller passes: ``num_heads must be a positive integer, got 0``. The CLI
words each as the flag that sets it, ``--num-heads must be ...``, through ``exc.worded(flag)``
(``exporter.cli.group.flag_wording``). It learns the flag from the Click commands themselves: the
option whose Click name is the parameter's gives its first flag, the running command's option
first, another command's where the running one has none (``engine`` advising "build it with
--calib-dir"). Two tables there hold the rest: ``FLAGS``, for a library name no option has
(``labels``, whose option is Click's ``labels_file``), and ``COMMAND_FLAGS``, for a command that
words an option by another of its flags (``resize`` says ``-ps``). ``tests/core/test_errors.py``
checks that every name given to ``param`` in the library is worded as one flag.

``param`` wraps the name in ``PARAM_MARK``, a control character that only ``str`` and ``worded``
read, so a message is written as one f-string with its values in place (a value holding the mark
around a lower-case word would read as a parameter; the CLI escapes control characters anyway).
Text that is not an error's message (a manifest's field, a log line) names no ``param``: it
would carry the mark. A command line quoted whole ('flexiexport engine BUNDLE --profile P') or
another program's flag (trtexec's) is not a parameter of ours, and stays as written.
"""

from __future__ import annotations

import errno
import re
from collections.abc import Callable

DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)

PARAM_MARK = "\x1f"
_PARAM = re.compile(f"{PARAM_MARK}([a-z][a-z0-9_]*){PARAM_MARK}")


def param(name: str) -> str:
    """The library parameter ``name``, marked for an error message (see the module docstring)."""
    if not re.fullmatch("[a-z][a-z0-9_]*", name):
        raise ValueError(f"a parameter name is a Python identifier in lower case, got {name!r}")
    return f"{PARAM_MARK}{name}{PARAM_MARK}"


def word_params(text: str, word: Callable[[str], str]) -> str:
    """``text`` with each ``param`` in it replaced by ``word(name)``."""
    return _PARAM.sub(lambda found: word(found[1]), text)


def params_in(text: str) -> tuple[str, ...]:
    """The names marked by ``param`` in ``text``, in order."""
    return tuple(_PARAM.findall(text))


class FlexiExportError(Exception):
    """Base class. ``exit_code`` is what the CLI returns for this kind of failure."""

    exit_code = 1

    def __str__(self) -> str:
        return self.worded(str)

    def worded(self, word: Callable[[str], str]) -> str:
        """The message with each parameter it names worded by ``word`` (the CLI: as its flag)."""
        return word_params(Exception.__str__(self), word)

    def worded_lines(self, word: Callable[[str], str]) -> list[str]:
        """The message as the lines the CLI prints, one ``error:`` line each."""
        return [self.worded(word)]

    @property
    def params(self) -> tuple[str, ...]:
        """The library parameters the message names, in order."""
        return params_in(Exception.__str__(self))


class UsageError(FlexiExportError, ValueError):
    """Bad usage or input: a value out of range, a missing file, an unwritable output."""

    exit_code = 2


class ImageErrors(UsageError):
    """Several files that cannot be used, each one ``error:`` line of its own naming its file
    (the CLI prints ``worded_lines``); ``str()`` is all of them on one line, for library callers."""

    def __init__(self, lines: list[str]) -> None:
        self._lines = list(lines)
        super().__init__("; ".join(self._lines))

    @property
    def lines(self) -> list[str]:
        """One line per file, worded for library callers."""
        return self.worded_lines(str)

    def worded_lines(self, word: Callable[[str], str]) -> list[str]:
        return [word_params(line, word) for line in self._lines]


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
