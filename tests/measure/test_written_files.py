"""bench.json and eval.json as written: each result's ``record()`` (typed, ``runtime/artefacts.py``)
is what ``asdict`` wrote before it, key for key and in the same order, so the files are unchanged;
a field added to a result and not to its record fails here."""

from __future__ import annotations

import json
from dataclasses import asdict

from exporter.measure.bench import BenchReport, Ceiling, Timing, merge_reports
from exporter.measure.options import Skipped
from exporter.measure.resample import ResampleCost


def written(data: object) -> str:
    return json.dumps(data, indent=2)


def report() -> BenchReport:
    timing = Timing(
        "ort-cpu", "p16", (16, 16), 1, 20, 0.5, 0.6, 0.7, 2000.0, 1.2, 2.4, 0.1, 300.0, 0.2, "2026-01-01", 2, (64, 64)
    )
    cost = ResampleCost("ort-cpu", "p16", (96, 96), 1, 1.1, 1.0, 1.3, 1.2, 0.1, 10.0, "2026-01-01")
    machine = {
        "cpu": "c",
        "cores_available": 2,
        "threads": 2,
        "gpu": None,
        "python": "3.11",
        "torch": "2.5",
        "onnxruntime": "1.20",
        "ort_providers": ["CPUExecutionProvider"],
        "flexiexport": "0.1.0",
    }
    ceiling = Ceiling(2048, 100.0, None, int8_matmul_gops=400.0)
    return BenchReport(machine, 2, ceiling, (timing,), (Skipped("openvino", "not installed"),), (cost,))


def test_bench_records_are_what_asdict_wrote():
    bench = report()
    assert written(bench.record()) == written(asdict(bench))
    assert written(merge_reports(None, bench)[0]) == written(asdict(bench))
    for part in (bench.ceiling, *bench.timings, *bench.skipped, *bench.resample):
        assert written(part.record()) == written(asdict(part)), type(part).__name__


def test_eval_records_are_what_asdict_wrote():
    from exporter.measure.evaluate import EvalRow

    for row in (
        EvalRow("pytorch", "p16", (16, 16), (64, 64), 100, 0.9, 0.99),
        EvalRow("onnxruntime int8", "p16", (16, 16), (64, 64), 100, 0.85, 0.98, -0.05, 0.01),
    ):
        assert written(row.record()) == written(asdict(row) | {"passed": row.passed})
