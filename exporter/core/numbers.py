"""Numbers read from files (JSON: bench.json, latency.json, eval.json, config.json) as data.

JSON has integers of any length: ``math.isfinite(10**400)`` and ``float(10**400)`` raise
``OverflowError``, which no reader expects. Every numeric check of a file's value goes through
``finite_number`` first. Pure Python.
"""

from __future__ import annotations

import math
from typing import Any


def finite_number(value: Any) -> float | None:
    """``value`` as a float when it is a number (not a bool) that a float holds finitely; None
    for anything else: a string, NaN, an infinity, an integer too large for a float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def is_finite_number(value: Any) -> bool:
    return finite_number(value) is not None
