"""The runtime API's numeric arguments, checked in one place (``Bundle.model``, ``Bundle.runner``,
``Model.predict``).

Python's ``bool`` is an ``int``: ``budget_ms=True`` would run as a 1 ms budget and ``batch=True``
as one image. A bool, a string, NaN, an infinity or an integer too large for a float is no
number here: ``UsageError`` naming the argument. numpy's integers and floats are numbers.
"""

from __future__ import annotations

import math
import numbers
import operator
from typing import Any

from exporter.core.errors import UsageError

# whole-number arguments and their smallest value
_COUNTS = {"batch": 1, "threads": 1, "top_k": 1}
_POSITIVE = ("budget_ms",)


def check_arguments(**values: Any) -> None:
    """``UsageError`` for the first of ``values`` (keyword = the API's argument name) that is not
    what the API takes: a whole number >= 1 (batch, threads, top_k), a finite number > 0
    (budget_ms). ``None`` is 'not given' and passes."""
    for name, value in values.items():
        if value is None:
            continue
        if name in _POSITIVE and not _positive(value):
            raise UsageError(f"{name} must be a positive number, got {_shown(value)}")
        if name in _COUNTS and not _whole(value, _COUNTS[name]):
            raise UsageError(f"{name} must be a whole number >= {_COUNTS[name]}, got {_shown(value)}")


def _positive(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return False
    try:
        number = float(value)
    except OverflowError:
        return False
    return math.isfinite(number) and number > 0


def _whole(value: Any, low: int) -> bool:
    if isinstance(value, bool):
        return False
    try:
        return operator.index(value) >= low
    except TypeError:
        return False


def _shown(value: Any) -> str:
    text = repr(value)
    return (text[:40] + "...") if len(text) > 40 else text + (" (a bool)" if isinstance(value, bool) else "")
