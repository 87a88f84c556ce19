"""Issue 22, classes 2 and 5: the latency store keeps every machine's rows and reads its files as data.

Real bundles, real onnxruntime probes, real concurrent writers (threads taking the real lock).
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from exporter.core.machine import machine_key
from exporter.runtime import Bundle

from conftest import TWO_VARIANTS, built, run_cli

# These tests are about the files the latency probe reads and writes, not its numbers: at its floor.
pytestmark = pytest.mark.usefixtures("quick_probe")

JETSON = {"cpu": "ARMv8 Processor rev 1 (v8l)", "machine": "aarch64"}


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return built(tmp_path_factory, *TWO_VARIANTS).path


@pytest.fixture
def bundle(demo: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "b"
    shutil.copytree(demo, copy)
    return copy


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("img") / "digit.png"
    Image.fromarray(np.full((64, 64, 3), 200, dtype=np.uint8)).save(path)
    return path


def row(variant: str, p99: object, **extra: object) -> dict[str, object]:
    return {"backend": "ort-cpu", "variant": variant, "batch": 1, "p50_ms": 0.5, "p99_ms": p99, **extra}


def jetson_rows() -> list[dict[str, object]]:
    return [row("p16", 4.0, measured="2026-01-01T00:00:00+00:00"), row("p32", 2.0)]


@pytest.mark.parametrize(
    "layout",
    [
        pytest.param(lambda rows: {"machine": JETSON, "rows": rows}, id="written-by-the-jetson"),
        pytest.param(
            lambda rows: {
                "machine": {"cpu": "x", "machine": "x86_64"},
                "rows": [],
                "other_machines": [{"machine": JETSON, "rows": rows}],
            },
            id="kept-under-other_machines",
        ),
    ],
)
def test_predict_budget_keeps_another_machines_rows(bundle: Path, image: Path, layout) -> None:
    """A Jetson's rows in the bundle survive this CPU's probe, byte for byte."""
    (bundle / "latency.json").write_text(json.dumps(layout(jetson_rows())))
    result = run_cli("predict", str(bundle), str(image), "--budget-ms", "10000", "--backend", "ort-cpu")
    assert result.exit_code == 0, result.output + result.stderr
    data = json.loads((bundle / "latency.json").read_text())
    sections = [{"machine": data["machine"], "rows": data["rows"]}, *data.get("other_machines", [])]
    jetson = [s for s in sections if s["machine"] == JETSON]
    assert len(jetson) == 1 and jetson[0]["rows"] == jetson_rows()
    here = [s for s in sections if s["machine"] == machine_key()]
    assert len(here) == 1 and {r["variant"] for r in here[0]["rows"]} == {"p16", "p32"}
    assert data["machine"] == machine_key()  # this machine at the top: what earlier versions read


def test_concurrent_writers_lose_no_rows(bundle: Path) -> None:
    """Eight writers at once (each its own rows, two machines): every row is in the file after."""
    from exporter.bundle.door import Bundle as Door
    from exporter.runtime.measurements import record_latencies

    door = Door.open(bundle)
    machines = [machine_key(), JETSON]

    def write(i: int) -> None:
        for n in range(5):
            record_latencies(door, [row("p16", 1.0 + i, batch=1 + 10 * i + n)], machines[i % 2])

    threads = [threading.Thread(target=write, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    data = json.loads((bundle / "latency.json").read_text())
    sections = [{"machine": data["machine"], "rows": data["rows"]}, *data.get("other_machines", [])]
    assert len(sections) == 2
    batches = sorted(r["batch"] for s in sections for r in s["rows"])
    assert batches == sorted(1 + 10 * i + n for i in range(8) for n in range(5))


def test_a_file_that_is_not_json_is_left_alone(bundle: Path, caplog) -> None:
    """Someone's latency.json we cannot read is not overwritten by a probe (it is still used: no)."""
    (bundle / "latency.json").write_text("{ not json")
    with caplog.at_level(logging.WARNING, logger="exporter.runtime"):
        Bundle.open(bundle).model(budget_ms=10_000, backend="ort-cpu")
    assert (bundle / "latency.json").read_text() == "{ not json"
    assert "not recorded" in caplog.text and "not valid JSON" in caplog.text


GOOD = [row("p16", 3.0), row("p32", 1.0)]


@pytest.mark.parametrize(
    "hostile",
    [
        pytest.param({"rows": 5}, id="rows-a-number"),
        pytest.param({"rows": "p16"}, id="rows-a-string"),
        pytest.param({"rows": {"p16": 1}}, id="rows-a-dict"),
        pytest.param({"rows": [*GOOD, row("p16", -1.0)]}, id="negative-p99"),
        pytest.param({"rows": [*GOOD, row("p16", math.nan)]}, id="nan-p99"),
        pytest.param({"rows": [*GOOD, row("p16", math.inf)]}, id="inf-p99"),
        pytest.param({"rows": [*GOOD, row("p16", "0.1")]}, id="p99-a-string"),
        pytest.param({"rows": [*GOOD, row("p16", True)]}, id="p99-a-bool"),
        pytest.param({"rows": [*GOOD, {**row("p16", 0.1), "batch": "1"}]}, id="batch-a-string"),
        pytest.param({"rows": [*GOOD, row("p4", 0.0001)]}, id="ghost-variant"),
        pytest.param({"rows": [*GOOD, None, 7, [1]]}, id="rows-not-records"),
    ],
)
@pytest.mark.parametrize("name", ["latency.json", "bench.json"])
def test_hostile_rows_are_ignored_with_one_warning(bundle: Path, hostile: dict, name: str, caplog) -> None:
    """Never a TypeError, never a variant the bundle lacks, never a latency that is not one."""
    rows = hostile["rows"]
    if name == "bench.json":  # the same rows as bench writes them
        rows = (
            [{**r, "patch_size": [int(r["variant"][1:])] * 2} if isinstance(r, dict) else r for r in rows]
            if isinstance(rows, list)
            else rows
        )
        data = {"machine": {"cpu": machine_key()["cpu"]}, "threads": 1, "timings": rows}
    else:
        data = {"machine": machine_key(), "rows": rows}
    (bundle / name).write_text(json.dumps(data))
    good = isinstance(hostile["rows"], list) and hostile["rows"][:2] == GOOD
    with caplog.at_level(logging.WARNING, logger="exporter.runtime"):
        opened = Bundle.open(bundle)
        latencies = opened.latencies("ort-cpu", "fp32", 1)
        model = opened.model(budget_ms=2.0 if good else 10_000, backend="ort-cpu")
    assert set(latencies) == {"p16", "p32"}
    assert all(math.isfinite(v.p99_ms) and v.p99_ms > 0 for v in latencies.values())
    assert model.variant in ("p16", "p32")
    warnings = [r for r in caplog.records if name in r.getMessage() and "ignoring" in r.getMessage()]
    assert len(warnings) == 1, caplog.text
    if good:
        assert latencies["p16"].p99_ms == 3.0 and model.variant == "p32"  # the good rows still count


def test_the_adaptive_model_never_switches_to_a_variant_the_bundle_lacks(bundle: Path, image: Path) -> None:
    """A ghost row faster than anything: under load the model steps to a real variant, and
    every call is answered."""
    rows = [row("p16", 1e-6), row("p32", 5e-7), row("p4", 1e-12)]
    (bundle / "latency.json").write_text(json.dumps({"machine": machine_key(), "rows": rows}))
    model = Bundle.open(bundle).model(budget_ms=2e-6, backend="ort-cpu", adaptive=True)
    pixels = np.asarray(Image.open(image).convert("RGB"))[None]
    for _ in range(12):  # each real call is far slower than the recorded 1e-6 ms: the load is huge
        assert model(pixels).shape == (1, 10)
    assert model.variant in ("p16", "p32") and model.switches
    assert all(to in ("p16", "p32") for _, to, _ in model.switches)


def test_plot_and_frontier_ignore_hostile_bench_rows(bundle: Path) -> None:
    """bench.json rows of a ghost variant or with a NaN latency neither crash nor draw."""
    from exporter.measure.frontier import bundle_frontiers
    from exporter.runtime.measurements import checked_bench

    timings = [
        {**row("p16", 3.0), "patch_size": [16, 16]},
        {**row("p4", 0.1), "patch_size": [4, 4]},
        {**row("p32", math.nan), "patch_size": [32, 32]},
    ]
    data = {"machine": {"cpu": "c"}, "threads": 2, "timings": timings}
    checked = checked_bench(data, "bench.json", {"p16", "p32"})
    assert checked is not None and [t["variant"] for t in checked["timings"]] == ["p16"]
    evaluation = {"results": [{"backend": "onnxruntime", "variant": v, "top1": 0.5} for v in ("p4", "p16", "p32")]}
    (frontier,) = bundle_frontiers(checked, evaluation).values()
    assert [r.point.variant for r in frontier] == ["p16"]
    assert checked_bench({"machine": {"cpu": "c"}, "threads": 2, "timings": {"a": 1}}, "b", {"p16"}) is None
    assert checked_bench({"machine": "c", "threads": 2, "timings": []}, "b2", {"p16"}) is None


def test_bench_keeps_another_machines_bench_json() -> None:
    """``bench`` here, on a bundle benched on a Jetson: the Jetson's rows stay (under
    ``other_machines``), and come back to the top when the Jetson benches again."""
    from exporter.measure.bench import BenchReport, Ceiling, Timing, merge_reports

    def report(cpu: str, p99: float) -> BenchReport:
        timing = Timing("ort-cpu", "p16", (16, 16), 1, 2, p99 / 2, p99, p99, 1.0, 1.0, 1.0, None, 1.0, 0.1)
        return BenchReport({"cpu": cpu, "gpu": None}, 2, Ceiling(64, 1.0, 1.0), (timing,))

    jetson = json.loads(json.dumps(merge_reports(None, report(JETSON["cpu"], 9.0))[0]))  # as read from the file
    here, note = merge_reports(jetson, report("x86 CPU", 1.0))
    assert here["machine"]["cpu"] == "x86 CPU" and here["other_machines"] == [jetson]
    assert "kept the rows of 1 other machine" in note
    back, _ = merge_reports(json.loads(json.dumps(here)), report(JETSON["cpu"], 8.0))
    assert back["machine"]["cpu"] == JETSON["cpu"] and back["timings"][0]["p99_ms"] == 8.0
    assert [s["machine"]["cpu"] for s in back["other_machines"]] == ["x86 CPU"]


@pytest.mark.parametrize(
    "earlier",
    [
        {"timings": [{"backend": "ort-cpu", "variant": "p16", "batch": [1]}]},  # a list where a number goes
        {"timings": [], "resample": [{"backend": "ort-cpu", "img_size": 5}]},
        {"timings": [], "resample": [{"backend": "ort-cpu", "img_size": [[64], {"h": 64}]}]},
        {"timings": [], "skipped": [{"backend": ["ort-cpu"], "reason": "a list"}]},
    ],
)
def test_bench_merges_into_an_earlier_bench_json_whatever_its_rows_hold(earlier: dict) -> None:
    """A hand-edited bench.json of this machine: its odd rows are kept as they were read (they
    are not ours to drop) and never crash the merge; the new rows are added."""
    from exporter.measure.bench import BenchReport, Ceiling, Timing, merge_reports

    timing = Timing("ort-cpu", "p16", (16, 16), 1, 2, 1.0, 2.0, 2.0, 1.0, 1.0, 1.0, None, 1.0, 0.1)
    report = BenchReport({"cpu": "c", "gpu": None}, 2, Ceiling(64, 1.0, 1.0), (timing,))
    merged, _ = merge_reports({"machine": {"cpu": "c", "gpu": None}, **earlier}, report)
    assert merged["timings"][-1]["p99_ms"] == 2.0
    assert [*merged["timings"][:-1], *merged["resample"]] == [*earlier["timings"], *earlier.get("resample", [])]
    assert list(merged["skipped"]) == earlier.get("skipped", [])


def test_bench_replaces_an_earlier_row_whose_batch_reads_as_a_float() -> None:
    from exporter.measure.bench import BenchReport, Ceiling, Timing, merge_reports

    timing = Timing("ort-cpu", "p16", (16, 16), 1, 2, 1.0, 2.0, 2.0, 1.0, 1.0, 1.0, None, 1.0, 0.1)
    report = BenchReport({"cpu": "c", "gpu": None}, 2, Ceiling(64, 1.0, 1.0), (timing,))
    earlier = {
        "machine": {"cpu": "c", "gpu": None},
        "timings": [{"backend": "ort-cpu", "variant": "p16", "batch": 1.0}],
    }
    merged, note = merge_reports(earlier, report)
    assert [t["p99_ms"] for t in merged["timings"]] == [
        2.0
    ] and note == "replaced all 1 rows of the previous bench.json"


def test_rows_that_hold_lists_never_crash_the_latency_merge_or_the_eval_check() -> None:
    from exporter.runtime.measurements import checked_eval, merge_latency

    here = machine_key()
    earlier = {"machine": here, "rows": [{"backend": "ort-cpu", "variant": "p16", "batch": [1], "p50_ms": 1.0}]}
    row = {"backend": "ort-cpu", "variant": "p16", "batch": 1, "p50_ms": 1.0, "p99_ms": 2.0}
    assert merge_latency(earlier, here, [row], {"p16"})["rows"] == [row]  # the unusable row dropped, as ever
    result = {"backend": "ort-cpu", "variant": ["p16"], "top1": 0.5, "patch_size": [16, 16]}
    assert checked_eval({"results": [result]}, "eval.json", {"p16"}) is None


def test_the_merge_note_names_other_machines_on_one_line() -> None:
    from exporter.measure.bench import BenchReport, Ceiling, merge_reports

    other = {"machine": {"cpu": "Jetson\nerror: forged", "gpu": "Orin\r"}, "timings": [{"backend": "trt"}]}
    _, note = merge_reports(other, BenchReport({"cpu": "c", "gpu": None}, 2, Ceiling(64, 1.0, 1.0), ()))
    assert "\n" not in note and "\r" not in note and "Jetson\\nerror: forged" in note
