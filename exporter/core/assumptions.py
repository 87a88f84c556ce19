"""What a build took without the checkpoint or its config saying so.

Every such value is said out loud: a warning at build time, a line in report.md and ``inspect``,
the final summary line, and an error under ``--strict``. Each names what settles it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Assumption:
    """One assumed value: ``what`` (e.g. ``heads``), its ``value`` and what settles it
    (``settle``: the flag or config key, e.g. ``pass --num-heads or a config.json``)."""

    what: str
    value: str
    settle: str

    def __str__(self) -> str:
        return f"{self.what} {self.value} ({self.settle})"


def summary(assumptions: Sequence[Assumption | str]) -> str:
    """``1 assumption: heads 3 (pass --num-heads or a config.json)``; empty when none (a manifest
    gives them back as text: ``Manifest.assumptions``)."""
    if not assumptions:
        return ""
    noun = "assumption" if len(assumptions) == 1 else "assumptions"
    return f"{len(assumptions)} {noun}: " + "; ".join(map(str, assumptions))
