"""Names are data: what may name a folder, a Triton model or a script word, and how text from a
bundle or a checkpoint is made safe to print.

A bundle, model or profile name ends up as a path component, a Triton model name and a word in a
generated shell script. ``SAFE_NAME`` admits only what is harmless in all three; ``slug`` turns
anything else into such a name; ``check_name`` refuses instead (for names a user typed).
"""

from __future__ import annotations

import re

from exporter.core.errors import UsageError

SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
SAFE_NAME_TEXT = "letters, digits, '.', '_' and '-', starting with a letter or digit, at most 128 characters"
_UNSAFE_RUN = re.compile(r"[^A-Za-z0-9._-]+")
# Everything ``str.splitlines`` ends a line at (\n \r \v \f \x1c-\x1e \x85 \u2028 \u2029): shown as
# an escape, so that one record stays one printed line (a name holding "\noverall: passed" cannot
# forge a verdict line). Other control characters (ANSI escapes, NUL) and the bidirectional
# overrides that reorder what a terminal shows are removed.
_LINE_BREAKS = {c: repr(c)[1:-1] for c in "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"}
_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1b\x1f\x7f-\x84\x86-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_BREAK = re.compile("[" + "".join(_LINE_BREAKS) + "]")


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
    """``text`` as one line, safe for a terminal: line breaks shown as escapes (``\\n``,
    ``\\u2028``), other control characters (ANSI escapes, NUL) removed. Every line the CLI prints
    from data (file names, labels, manifest strings, log records) goes through here."""
    return _CONTROL.sub("", _BREAK.sub(lambda m: _LINE_BREAKS[m.group()], text))
