"""bench.json and eval.json are written with ``asdict`` of their results, under the TypedDicts of
``runtime/artefacts.py`` that their readers are checked against: each TypedDict names the fields of
its dataclass, in its order (a field added to one and not the other fails here, not in a user's file)."""

from __future__ import annotations

from dataclasses import fields

import pytest

from exporter.measure.bench import BenchReport, Timing
from exporter.measure.ceiling import Ceiling
from exporter.measure.evaluate import EvalRow
from exporter.measure.options import Skipped
from exporter.measure.resample import ResampleCost
from exporter.runtime import artefacts


@pytest.mark.parametrize(
    ("result", "record", "added"),
    [
        (Timing, artefacts.TimingRecord, []),
        (Ceiling, artefacts.CeilingRecord, []),
        (Skipped, artefacts.SkippedRecord, []),
        (ResampleCost, artefacts.ResampleRecord, []),
        (BenchReport, artefacts.BenchFile, ["other_machines"]),  # the merge adds it
        (EvalRow, artefacts.EvalRecord, ["passed"]),  # EvalRow.record() adds it
    ],
)
def test_each_written_record_names_its_results_fields_in_order(result, record, added) -> None:
    assert list(record.__annotations__) == [f.name for f in fields(result)] + added
