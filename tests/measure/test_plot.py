"""The speed/accuracy plot read as a figure (issue 25): every legend entry names a line one can
see, one colour per backend across panels, plain-number ticks, a title that promises only
what the panels show."""

from __future__ import annotations

import re

import matplotlib.pyplot as plt
import pytest

from exporter.measure.plot import NativeSeries, colour, draw_tradeoff

SIZES = (48, 64, 96)


def bench() -> dict:
    """A grid's bench.json: ort-cpu around 0.3-0.7 ms, openvino 3-12 ms (a narrow log range each)."""
    timings = [
        {"backend": b, "variant": f"p{p}_{s}", "patch_size": [p, p], "img_size": [s, s], "batch": 1,
         "p50_ms": base * s / 48 * 16 / p, "p99_ms": base * 1.2 * s / 48 * 16 / p}
        for b, base in (("ort-cpu", 0.3), ("openvino", 4.0)) for p in (16, 32) for s in SIZES if s % p == 0
    ]  # fmt: skip
    return {"machine": {"cpu": "Some CPU"}, "threads": 1, "timings": timings}


def evaluation() -> dict:
    """eval.json where onnxruntime's accuracy equals PyTorch's exactly (as it does in fp32)."""
    rows = [
        {"backend": b, "variant": f"p{p}_{s}", "patch_size": [p, p], "img_size": [s, s],
         "top1": 0.5 + p / 100 + s / 1000}
        for b in ("pytorch", "onnxruntime", "openvino") for p in (16, 32) for s in SIZES if s % p == 0
    ]  # fmt: skip
    rows[-1] = {**rows[-1], "top1": 0.1}  # openvino differs at one point: a line of its own
    return {"data": "digits", "samples": 10, "results": rows}


@pytest.fixture
def figure():
    fig = draw_tradeoff(bench(), evaluation(), "demo", NativeSeries("agreement", ((16, 64, 0.9), (32, 64, 1.0))))
    yield fig
    plt.close(fig)


def test_equal_series_are_one_line_named_for_both(figure):
    """onnxruntime's line lay exactly under PyTorch's: the legend named a line nobody could see."""
    accuracy = figure.axes[1]
    labels = [t.get_text() for t in accuracy.get_legend().get_texts()]
    assert "onnxruntime = pytorch @ 96" in labels and "openvino @ 96" in labels, labels
    assert "onnxruntime = openvino = pytorch @ 64" in labels, labels
    assert not any(label.startswith("pytorch") for label in labels), labels
    drawn = [tuple(map(tuple, line.get_xydata())) for line in accuracy.get_lines()]
    assert len(drawn) == len(set(drawn)), "two lines on top of each other"


def test_one_colour_per_backend_in_every_panel(figure):
    """The same colour meant OpenVINO in one panel and onnxruntime in the next."""
    latency, accuracy, frontier = figure.axes
    seen: dict[str, set[str]] = {}
    for ax in (latency, accuracy, frontier):
        for line in ax.get_lines():
            label = line.get_label()
            if label.startswith("_") or "agreement" in label:
                continue
            backend = "ort-cpu" if label.startswith(("ort-cpu", "onnxruntime")) else label.split()[0].strip(",")
            seen.setdefault(backend, set()).add(line.get_color())
    assert seen.keys() >= {"ort-cpu", "openvino"} and all(len(c) == 1 for c in seen.values()), seen
    assert seen["ort-cpu"] != seen["openvino"]
    assert colour("onnxruntime") == colour("ort-cpu") == colour("ort-cpu, batch 1")


def test_log_axes_have_plain_ticks_and_enough_of_them(figure):
    """The latency axis had two ticks, the frontier's read ``4x10^0 5x10^0``."""
    figure.canvas.draw()
    latency, _, frontier = figure.axes
    for axis in (latency.yaxis, frontier.xaxis):
        ticks = [t.get_text() for t in axis.get_ticklabels() if t.get_text()]
        assert len(ticks) >= 3, ticks
        assert all(re.fullmatch(r"[0-9.]+", t) for t in ticks), ticks


def test_frontier_names_each_place_once(figure):
    """Labels overlapped (``p32p32``): two backends' points at one place share one name."""
    texts = [(t.get_text(), t.xy) for t in figure.axes[2].texts]
    assert texts and all(t for t, _ in texts)
    assert len({xy for _, xy in texts}) == len(texts)


def test_the_title_promises_only_what_is_drawn():
    """Before ``evaluate`` the title said "speed / accuracy"."""
    fig = draw_tradeoff(bench(), None, "demo")
    assert fig._suptitle.get_text() == "demo: speed"
    plt.close(fig)
    fig = draw_tradeoff(bench(), None, "demo", NativeSeries("agreement", ((16, 64, 0.9), (32, 64, 1.0))))
    assert "accuracy" not in fig._suptitle.get_text() and "agreement" in fig._suptitle.get_text()
    plt.close(fig)
