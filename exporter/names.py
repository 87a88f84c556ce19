"""Names are data: what may name a folder, a Triton model or a script word, and how text from a
bundle or a checkpoint is made safe to print.

A bundle, model or profile name ends up as a path component, a Triton model name and a word in a
generated shell script. ``SAFE_NAME`` admits only what is harmless in all three; ``slug`` turns
anything else into such a name; ``check_name`` refuses instead (for names a user typed).
"""

from __future__ import annotations

import re

from exporter.errors import UsageError

SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
SAFE_NAME_TEXT = "letters, digits, '.', '_' and '-', starting with a letter or digit, at most 128 characters"
_UNSAFE_RUN = re.compile(r"[^A-Za-z0-9._-]+")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def is_safe_name(name: object) -> bool:
    return isinstance(name, str) and SAFE_NAME.fullmatch(name) is not None


def check_name(name: str, what: str) -> str:
    """``name`` itself when safe; ``UsageError`` naming it and the rule otherwise."""
    if not is_safe_name(name):
        raise UsageError(f"{what} {printable(str(name))!r} is not a safe name: use {SAFE_NAME_TEXT}")
    return name


def slug(name: str, fallback: str = "model") -> str:
    """A safe name made from ``name``: unsafe runs become '-', leading dots and dashes go."""
    text = _UNSAFE_RUN.sub("-", name).strip(".-")[:128].rstrip(".-")
    return text if is_safe_name(text) else fallback


def printable(text: str) -> str:
    """``text`` without control characters (ANSI escapes, NUL, carriage returns): safe for a terminal."""
    return _CONTROL.sub("", text)
